"""The optimizer every learner that owns its loop uses, and ``torch.compile`` as an option."""

from __future__ import annotations

from collections.abc import Iterable

import torch


def adamw(
    params: Iterable[torch.nn.Parameter],
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    weight_decay: float = 0.0,
) -> torch.optim.AdamW:
    """AdamW with the fused kernel where it applies: one pass over all parameters, ~4x faster than the
    per-tensor loop on CPU. Sharded parameters (FSDP2's DTensors) take the multi-tensor path."""
    params = list(params)
    sharded = any(type(p).__name__ == "DTensor" for p in params)
    return torch.optim.AdamW(
        params, lr=lr, betas=tuple(betas), weight_decay=weight_decay, fused=None if sharded else True
    )


def maybe_compile(module: torch.nn.Module, enabled: bool) -> torch.nn.Module:
    """``torch.compile(module)`` when ``enabled`` (the first steps pay for compilation), else ``module``."""
    return torch.compile(module) if enabled else module
