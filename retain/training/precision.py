"""Mixed precision: when to train under bf16 autocast, and the autocast context itself.

Weights, optimizer state and the loss stay fp32; only the matmuls run in bf16. On CPU that only pays with
bf16 instructions in hardware (AVX512-BF16/AMX); emulated bf16 is slower than fp32.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from retain.errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16")


def native_cpu_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX): only then is bf16 autocast faster
    than fp32 on CPU (1.4x on the CPT default model here); emulated, it is slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no cheap, reliable check, so no bf16 by default
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def use_bf16(precision: str, device: torch.device) -> bool:
    """Whether training and evaluation run under bf16 autocast: ``auto`` = bf16 on a CUDA GPU that supports
    it and on a CPU with bf16 instructions, fp32 elsewhere; ``fp32``/``bf16`` force it."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}", f"use one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        if device.type == "cuda":
            return torch.cuda.is_bf16_supported()
        return device.type == "cpu" and native_cpu_bf16()
    return precision == "bf16"


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` when ``bf16``, else a no-op context."""
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)
