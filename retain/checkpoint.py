"""Checkpoint IO: safetensors weights, a ``weights_only`` torch file for the rest, JSON metadata.

A checkpoint is a folder ``checkpoints/step_<N>/`` holding
- ``weights.safetensors`` (model tensors) and optionally ``arrays.safetensors`` (large buffers,
  e.g. an off-policy replay buffer),
- ``state.pt``: optimizer, scheduler, RNG and progress state, loaded with ``weights_only=True``
  so a checkpoint can never run code,
- ``meta.json``: config, step, library versions.
Each folder is written under a temporary name and renamed when complete; ``latest.json`` (itself
written atomically) points at the newest complete one, so a crash mid-save loses nothing.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from retain.errors import CheckpointError
from retain.io import atomic_path, write_json_atomic

LATEST = "latest.json"


def _versions() -> dict:
    import importlib.metadata as md

    out = {"python": sys.version.split()[0]}
    for dist in ("torch", "retain", "stable-baselines3", "gymnasium", "transformers"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return out


def _tensors_for_safetensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses shared storage and non-contiguous tensors; cloning makes each standalone.
    return {name: t.detach().cpu().contiguous().clone() for name, t in tensors.items()}


def save_checkpoint(
    root: str | Path,
    step: int,
    weights: dict[str, torch.Tensor],
    state: dict[str, Any],
    meta: dict[str, Any] | None = None,
    arrays: dict[str, torch.Tensor] | None = None,
    keep: int = 2,
) -> Path:
    """Write a complete checkpoint for ``step`` under ``root`` and point ``latest.json`` at it."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:012d}"
    with atomic_path(final, directory=True) as tmp:
        save_file(_tensors_for_safetensors(weights), tmp / "weights.safetensors")
        if arrays:
            save_file(_tensors_for_safetensors(arrays), tmp / "arrays.safetensors")
        torch.save(state, tmp / "state.pt")
        meta = {"step": step, "versions": _versions(), **(meta or {})}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
    write_json_atomic(root / LATEST, {"step": step, "path": final.name})
    _prune(root, keep, final)
    return final


def _prune(root: Path, keep: int, newest: Path) -> None:
    done = sorted(p for p in root.glob("step_*") if p.is_dir())
    for old in done[:-keep] if keep > 0 else []:
        if old != newest:
            shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest complete checkpoint under ``root``, or None if there is none."""
    pointer = Path(root) / LATEST
    if not pointer.exists():
        return None
    try:
        name = json.loads(pointer.read_text())["path"]
    except (json.JSONDecodeError, KeyError) as e:
        raise CheckpointError(
            f"checkpoint pointer {pointer} is corrupt ({e})", "delete it to start over, or restore it from a backup"
        ) from e
    path = Path(root) / name
    if not path.is_dir():
        raise CheckpointError(
            f"checkpoint pointer {pointer} names {name}, which does not exist", "delete the pointer to start over"
        )
    return path


def load_checkpoint(
    path: str | Path,
) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any], dict[str, torch.Tensor]]:
    """Load ``(weights, state, meta, arrays)`` from a checkpoint folder; a clear error if it is damaged."""
    path = Path(path)
    fix = "delete this checkpoint folder (an older one is used) or start a new run with resume=false"
    for name in ("weights.safetensors", "state.pt", "meta.json"):
        if not (path / name).is_file():
            raise CheckpointError(f"checkpoint {path} is incomplete: {name} is missing", fix)
    try:
        weights = load_file(path / "weights.safetensors")
        arrays = load_file(path / "arrays.safetensors") if (path / "arrays.safetensors").exists() else {}
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"checkpoint {path} has corrupt tensors ({e})", fix) from e
    try:
        state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors come in many types; all mean the same to a user
        raise CheckpointError(
            f"checkpoint {path}/state.pt cannot be read safely ({type(e).__name__}: {str(e).splitlines()[0]})", fix
        ) from e
    try:
        meta = json.loads((path / "meta.json").read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"checkpoint {path}/meta.json is not valid JSON ({e})", fix) from e
    return weights, state, meta, arrays


def check_shapes(expected: dict[str, torch.Tensor], loaded: dict[str, torch.Tensor], where: str) -> None:
    """Fail with one line if ``loaded`` tensors do not fit the model's (names and shapes)."""
    missing = sorted(set(expected) - set(loaded))
    unexpected = sorted(set(loaded) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {where} does not fit this model: missing {missing[:3]}, unexpected {unexpected[:3]}",
            "load it with the agent/env config it was trained with",
        )
    for name, tensor in expected.items():
        if tuple(tensor.shape) != tuple(loaded[name].shape):
            raise CheckpointError(
                f"checkpoint {where} does not fit this model: {name} has shape {tuple(loaded[name].shape)}, the model expects {tuple(tensor.shape)}",
                "the task's observation/action spaces or the network sizes differ from the run that saved it",
            )


def load_latest(
    root: str | Path,
) -> tuple[Path, dict[str, torch.Tensor], dict[str, Any], dict[str, Any], dict[str, torch.Tensor]] | None:
    """The newest *intact* checkpoint under ``root`` as ``(path, weights, state, meta, arrays)``; None if there
    is none at all.

    A damaged newest checkpoint (a truncated file, a corrupt pointer) is skipped with a warning on stderr for
    the previous one (``save_checkpoint`` keeps two); CheckpointError when every checkpoint is damaged.
    """
    root = Path(root)
    candidates = sorted((p for p in root.glob("step_*") if p.is_dir()), reverse=True)
    try:
        pointed = latest_checkpoint(root)
    except CheckpointError as e:
        pointed = None
        if candidates:
            print(f"retain: warning: {e.problem}; looking for an intact checkpoint", file=sys.stderr)
    if pointed is not None:
        candidates = [pointed] + [p for p in candidates if p != pointed and p.name < pointed.name]
    if not candidates:
        return None
    problems = []
    for path in candidates:
        try:
            loaded = load_checkpoint(path)
        except CheckpointError as e:
            problems.append(e.problem)
            continue
        if problems:
            print(f"retain: warning: {problems[0]}; resuming from the intact checkpoint {path.name}", file=sys.stderr)
        return (path, *loaded)
    raise CheckpointError(
        f"no intact checkpoint under {root}: {problems[0]}"
        + (f" (and {len(problems) - 1} older one(s) damaged too)" if len(problems) > 1 else ""),
        "start the run again with resume=false (or a new run_dir)",
    )
