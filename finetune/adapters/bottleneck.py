"""Bottleneck adapters (Houlsby et al. 2019): after each block's feed-forward output, a residual
``x + up(GELU(down(x)))`` of width ``bottleneck``, ``up`` zero-initialised so tuning starts at the pretrained
model. peft has no bottleneck adapters; they are forward hooks on GPT-2's ``mlp`` modules."""

from __future__ import annotations

from torch import nn

from finetune.adapters.base import Adaptation, AdapterConfig


class Bottlenecks(Adaptation):
    def __init__(self, model, cfg: AdapterConfig):
        super().__init__()
        d = model.cfg.n_embd
        self.down = nn.ModuleList(nn.Linear(d, cfg.bottleneck) for _ in model.transformer.h)
        self.up = nn.ModuleList(nn.Linear(cfg.bottleneck, d) for _ in model.transformer.h)
        for up in self.up:
            nn.init.zeros_(up.weight)
            nn.init.zeros_(up.bias)
        self.act = nn.GELU()
        for layer, block in enumerate(model.transformer.h):
            block.mlp.register_forward_hook(self._hook(layer))

    def _hook(self, layer: int):
        def hook(module, inputs, out):
            return out + self.up[layer](self.act(self.down[layer](out)))

        return hook


def apply(model, cfg: AdapterConfig) -> None:
    model.adaptation = Bottlenecks(model, cfg)
