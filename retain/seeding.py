"""Seeding: one root seed, and child seeds derived from it by name so that every part of a run
(a task, a training chunk, an evaluation) gets its own stream, independent of execution order."""

from __future__ import annotations

import random

import numpy as np
import torch


def derive_seed(seed: int, *keys: int | str) -> int:
    """A 31-bit seed determined by ``seed`` and ``keys`` (strings are hashed stably)."""
    words = [int(seed)]
    for key in keys:
        words.append(
            key if isinstance(key, int) else int.from_bytes(str(key).encode()[:16].ljust(16, b"\0"), "little") % (2**63)
        )
    return int(np.random.SeedSequence(words).generate_state(1)[0] & 0x7FFFFFFF)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """The global RNG states as plain tensors and ints, loadable with ``torch.load(weights_only=True)``."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
    }


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npy = state["numpy"]
    np.random.set_state(("MT19937", npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["cached"]))
    torch.set_rng_state(state["torch"])
