"""Prompt tuning (Lester et al. 2021): ``prompt_length`` learned tokens in front of every window, the model
frozen. peft's ``PromptTuningConfig`` wraps a model's word embeddings, which the Decision Transformer does not
use (its tokens come in as ``inputs_embeds``), so the prompt is a parameter of its own here."""

from __future__ import annotations

import torch
from torch import nn

from finetune.adapters.base import Adaptation, AdapterConfig


class Prompt(Adaptation):
    def __init__(self, model, cfg: AdapterConfig):
        super().__init__()
        # initialised like the model's token embeddings (GPT-2: N(0, 0.02))
        self.prompt = nn.Parameter(torch.randn(cfg.prompt_length, model.cfg.n_embd) * 0.02)

    def begin(self, states, mask, task):
        return self.prompt.unsqueeze(0).expand(states.shape[0], -1, -1)


def apply(model, cfg: AdapterConfig) -> None:
    model.adaptation = Prompt(model, cfg)
