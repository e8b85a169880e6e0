"""Learning-to-Modulate (Schmied et al. 2023): a frozen pretrained Decision Transformer, modulated per input
by one entry of a pool chosen by learned keys (``pool.KeyPool``; size 30, top-1 in the paper).

An entry holds, for every transformer layer, LoRA (rank 8, alpha 16) on the attention's query and value
projections and a rank-8 residual on the feed-forward activation (``modulation=lora``), or (IA)^3 rescaling
vectors for keys, values and the feed-forward activation (``modulation=ia3``). LoRA's B matrices start at
zero and (IA)^3's vectors at one, so an entry nobody trained leaves the model as it was pretrained: inputs
of pretraining tasks that select such an entry are answered by the pretrained model itself. GPT-2 computes
Q, K and V in one fused projection (``c_attn``); the deltas are added to its Q and V thirds.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from finetune.adapters.base import Adaptation, AdapterConfig, query
from finetune.adapters.pool import KeyPool


class ModulationPool(Adaptation):
    def __init__(self, model, cfg: AdapterConfig):
        super().__init__()
        if cfg.modulation not in ("lora", "ia3"):
            from retain.errors import ConfigError

            raise ConfigError(f"adapter.modulation={cfg.modulation!r}", "use lora or ia3")
        d, layers, p, r = model.cfg.n_embd, model.cfg.n_layer, cfg.pool_size, cfg.rank
        ff = model.transformer.h[0].mlp.c_fc.nf
        self.kind, self.d, self.scale = cfg.modulation, d, cfg.alpha / cfg.rank
        self.pool = KeyPool(p, d, cfg.top_k, cfg.count_penalty, cfg.key_loss, cfg.oracle)

        def lora_a(n_in: int) -> nn.Parameter:  # kaiming-uniform like LoRA's A; B starts at zero
            bound = 1.0 / math.sqrt(n_in)
            return nn.Parameter(torch.empty(p, layers, n_in, r).uniform_(-bound, bound))

        if self.kind == "lora":
            self.q_a, self.q_b = lora_a(d), nn.Parameter(torch.zeros(p, layers, r, d))
            self.v_a, self.v_b = lora_a(d), nn.Parameter(torch.zeros(p, layers, r, d))
            self.ff_a, self.ff_b = lora_a(ff), nn.Parameter(torch.zeros(p, layers, r, ff))
        else:
            self.k_scale = nn.Parameter(torch.ones(p, layers, d))
            self.v_scale = nn.Parameter(torch.ones(p, layers, d))
            self.ff_scale = nn.Parameter(torch.ones(p, layers, ff))
        self._index: torch.Tensor | None = None
        self._hooks = []
        for layer, block in enumerate(model.transformer.h):
            self._hooks.append(block.attn.c_attn.register_forward_hook(self._attention_hook(layer)))
            self._hooks.append(block.mlp.act.register_forward_hook(self._ff_hook(layer)))

    # -- routing -----------------------------------------------------------------------------------------

    def begin(self, states, mask, task):
        self._index = self.pool.select(query(states, mask), task)
        return None

    def end(self) -> None:
        self._index = None

    def aux_loss(self):
        return self.pool.key_loss()

    def start_task(self, task: int) -> None:
        self.pool.start_task(task)

    def _gather(self, weights: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The selected entries' weights of ``layer``, ``(B, k, ...)``, and which of them are real."""
        index = self._index
        valid = (index >= 0).to(weights.dtype)
        return weights[index.clamp_min(0), layer], valid

    def _delta(self, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, layer: int) -> torch.Tensor:
        """Mean over the selected entries of ``scale * x A B``, per row (x: ``(B, L, n)``)."""
        a_sel, valid = self._gather(a, layer)
        b_sel, _ = self._gather(b, layer)
        low = torch.einsum("bln,bknr->bklr", x, a_sel.to(x.dtype))
        out = torch.einsum("bklr,bkrm->bklm", low, b_sel.to(x.dtype))
        out = out * valid.view(*valid.shape, 1, 1).to(x.dtype)
        return self.scale * out.sum(1) / valid.shape[1]

    def _rescale(self, out: torch.Tensor, scale: torch.Tensor, layer: int) -> torch.Tensor:
        s_sel, valid = self._gather(scale, layer)
        s = torch.where(valid.unsqueeze(-1) > 0, s_sel, torch.ones_like(s_sel)).mean(1)  # B, n
        return s.unsqueeze(1).to(out.dtype)

    def _attention_hook(self, layer: int):
        def hook(module, inputs, out):
            if self._index is None:
                return out
            x, d = inputs[0], self.d
            if self.kind == "lora":
                dq = self._delta(x, self.q_a, self.q_b, layer)
                dv = self._delta(x, self.v_a, self.v_b, layer)
                return out + torch.cat([dq, torch.zeros_like(dq), dv], dim=-1)
            q, k, v = out.split(d, dim=-1)
            return torch.cat(
                [q, k * self._rescale(k, self.k_scale, layer), v * self._rescale(v, self.v_scale, layer)], -1
            )

        return hook

    def _ff_hook(self, layer: int):
        def hook(module, inputs, out):
            if self._index is None:
                return out
            if self.kind == "lora":
                return out + self._delta(out, self.ff_a, self.ff_b, layer)
            return out * self._rescale(out, self.ff_scale, layer)

        return hook


def apply(model, cfg: AdapterConfig) -> None:
    model.adaptation = ModulationPool(model, cfg)
