"""Learning to Prompt (L2P, Wang et al. 2022) on the Decision Transformer: a pool of prompts (100 of 5
tokens in the paper) with learned keys (``pool.KeyPool``); each input's top-k prompts (5) are put in front
of its window. The query is the same as L2M's (the masked mean of the state embeddings)."""

from __future__ import annotations

import torch
from torch import nn

from finetune.adapters.base import Adaptation, AdapterConfig, query
from finetune.adapters.pool import KeyPool


class PromptPool(Adaptation):
    def __init__(self, model, cfg: AdapterConfig):
        super().__init__()
        d = model.cfg.n_embd
        self.pool = KeyPool(cfg.pool_size, d, cfg.top_k, cfg.count_penalty, cfg.key_loss, cfg.oracle)
        self.prompts = nn.Parameter(torch.empty(cfg.pool_size, cfg.prompt_length, d).uniform_(-1.0, 1.0))

    def begin(self, states, mask, task):
        index = self.pool.select(query(states, mask), task)  # B, k
        prompts = self.prompts[index.clamp_min(0)] * (index >= 0).view(*index.shape, 1, 1)
        return prompts.flatten(1, 2)  # B, k * length, d

    def aux_loss(self):
        return self.pool.key_loss()

    def start_task(self, task: int) -> None:
        self.pool.start_task(task)


def apply(model, cfg: AdapterConfig) -> None:
    model.adaptation = PromptPool(model, cfg)
