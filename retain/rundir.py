"""The run directory contract: ``config.yaml``, ``metrics.jsonl``, ``summary.json``, ``checkpoints/``,
``results.json`` (sequence and cpt jobs), ``report.md`` and PNG plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from retain.config import to_container
from retain.errors import UserError
from retain.io import write_json_atomic, write_text_atomic

CONFIG_FILE = "config.yaml"
SUMMARY_FILE = "summary.json"
RESULTS_FILE = "results.json"
CHECKPOINTS = "checkpoints"

# Keys that may change between a run and its resumption without changing its result (parallel: CPT
# checkpoints are full and keyed by parameter name, so a DDP/FSDP run resumes in one process and back).
RESUMABLE_KEYS = {"resume", "progress", "traceback", "device", "threads", "run_dir", "logger", "name", "parallel"}


def _diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            if not prefix and key in RESUMABLE_KEYS:
                continue
            out += _diff(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [f"{prefix[:-1]}: {old!r} → {new!r}"]


def prepare_run_dir(cfg: DictConfig) -> Path:
    """Create (or, with ``resume=true``, check) the run directory and write ``config.yaml``.

    A fresh run refuses a directory that already holds a run; a resumed run refuses a config
    that differs from the one it started with (apart from ``RESUMABLE_KEYS``).
    """
    run_dir = Path(cfg.run_dir)
    resolved = to_container(cfg)
    existing = run_dir / CONFIG_FILE
    if cfg.resume:
        if not existing.exists():
            raise UserError(
                f"resume=true but {run_dir} holds no run (no {CONFIG_FILE})",
                "pass the run_dir= of the run to continue, or drop resume=true",
            )
        old = yaml.safe_load(existing.read_text())
        changed = _diff(old, resolved)
        if changed:
            raise UserError(
                f"resume=true with a config that differs from the run's: {changed[0]}"
                + (f" (+{len(changed) - 1} more)" if len(changed) > 1 else ""),
                "resume with the original overrides, or start a new run_dir",
            )
        return run_dir
    if existing.exists():
        raise UserError(
            f"run directory {run_dir} already holds a run",
            "pass resume=true to continue it, or choose another run_dir=",
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(existing, OmegaConf.to_yaml(OmegaConf.create(resolved)))
    return run_dir


def write_summary(run_dir: str | Path, summary: dict) -> None:
    write_json_atomic(Path(run_dir) / SUMMARY_FILE, summary)


def write_results(run_dir: str | Path, results: dict) -> None:
    write_json_atomic(Path(run_dir) / RESULTS_FILE, results)
