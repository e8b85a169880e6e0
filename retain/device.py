"""One device resolver for every job: ``device=auto|cpu|cuda|cuda:N``."""

from __future__ import annotations

import os

import torch

from retain.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """The torch device ``name`` asks for, checked: ``auto`` is CUDA when visible, else CPU.

    Under torchrun on GPUs, ``auto``/``cuda`` take the GPU of the process's ``LOCAL_RANK`` (and make it current).
    """
    name = str(name).strip().lower()
    if name not in ("auto", "cpu", "cuda") and not (name.startswith("cuda:") and name[5:].isdigit()):
        raise ConfigError(f"device={name!r} is not a device", "use device=auto, cpu, cuda or cuda:N")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but no CUDA device is visible to torch", "use device=auto or device=cpu")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if device.type == "cuda":
        if device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device={name} but only {torch.cuda.device_count()} CUDA GPU(s) are visible", "use a visible index"
            )
        torch.cuda.set_device(device)
    return device
