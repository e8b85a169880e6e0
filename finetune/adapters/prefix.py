"""Prefix tuning (Li & Liang 2021): ``prompt_length`` learned key and value vectors in front of every
layer's attention, the model frozen. peft's ``PrefixTuningConfig`` needs a ``PeftModel`` of a task type fed
``input_ids``; the Decision Transformer is fed ``inputs_embeds``, so the prefixes are handed to GPT-2 as a
prefilled ``DynamicCache`` (the way peft passes them), with one reparametrised through an MLP as in the
paper for stable training."""

from __future__ import annotations

import torch
from torch import nn

from finetune.adapters.base import Adaptation, AdapterConfig


class Prefix(Adaptation):
    def __init__(self, model, cfg: AdapterConfig):
        super().__init__()
        c = model.cfg
        self.layers, self.heads, self.head_dim = c.n_layer, c.n_head, c.n_embd // c.n_head
        self.length, self.config = cfg.prompt_length, model.transformer.config
        self.embedding = nn.Parameter(torch.randn(cfg.prompt_length, c.n_embd) * 0.02)
        self.mlp = nn.Sequential(
            nn.Linear(c.n_embd, c.n_embd), nn.Tanh(), nn.Linear(c.n_embd, 2 * c.n_layer * c.n_embd)
        )

    def past(self, batch: int):
        from transformers import DynamicCache

        kv = self.mlp(self.embedding).view(self.length, 2, self.layers, self.heads, self.head_dim)
        kv = kv.permute(1, 2, 3, 0, 4)  # (k|v), layer, head, length, head_dim
        cache = DynamicCache(config=self.config)
        for layer in range(self.layers):
            k = kv[0, layer].unsqueeze(0).expand(batch, -1, -1, -1)
            v = kv[1, layer].unsqueeze(0).expand(batch, -1, -1, -1)
            cache.update(k, v, layer)
        return cache, self.length


def apply(model, cfg: AdapterConfig) -> None:
    model.adaptation = Prefix(model, cfg)
