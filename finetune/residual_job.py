"""``retain residual``: the job's config and function. It merges three given models with ``finetune.residual``,
or with ``demo=true`` runs ``finetune.residual_demo``. Imports go one way (job → demo → merge), so the merge
stays importable alone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig

from finetune.residual import check_inputs, merge_residual
from finetune.residual_demo import DemoConfig, run_demo
from retain.config import RunConfig
from retain.errors import ConfigError
from retain.rundir import prepare_run_dir, write_summary


@dataclass
class ResidualJobConfig(RunConfig):
    """``retain residual``: target + α·(instruct − base) as a loadable model, or the demo."""

    base: str | None = None
    """the model instruct was tuned from (a transformers folder with safetensors weights)"""
    instruct: str | None = None
    """the instruction-tuned model"""
    target: str | None = None
    """the model to give instruction following back to: base after continued pretraining"""
    out: str | None = None
    """where the merged model goes (null: <run_dir>/model)"""
    alpha: float = 1.0
    """scale α of the residual (0: the target unchanged)"""
    overwrite: bool = False
    """replace an existing non-empty out folder"""
    demo: bool = False
    """run the demo experiment instead of merging given models"""
    demo_cfg: DemoConfig = field(default_factory=DemoConfig)
    """sizes and budgets of the demo"""


def run_residual(cfg: DictConfig) -> dict:
    """Merge ``cfg.base``/``instruct``/``target`` into ``cfg.out`` (or run the demo); summary in ``cfg.run_dir``."""
    if cfg.demo:
        return run_demo(cfg)
    started = time.perf_counter()
    given = {role: cfg[role] for role in ("base", "instruct", "target")}
    if None in given.values():
        missing = ", ".join(f"{role}=" for role, path in given.items() if path is None)
        raise ConfigError(
            f"retain residual needs base=, instruct= and target= (missing {missing})",
            "pass three model folders, or demo=true for the demo experiment",
        )
    out = Path(cfg.out or Path(cfg.run_dir) / "model").expanduser().resolve()
    # All checks before the run directory is made, so a refused merge leaves nothing behind.
    check_inputs(*(Path(p).expanduser().resolve() for p in given.values()), out, cfg.alpha, cfg.overwrite)
    run_dir = prepare_run_dir(cfg)
    record = merge_residual(**given, out=out, alpha=cfg.alpha, overwrite=cfg.overwrite, progress=cfg.progress)
    summary = {
        "job": "residual",
        "out": str(out),
        "alpha": cfg.alpha,
        "tensors": len(record["tensors"]),
        **record["total"],
        "wall_time_s": time.perf_counter() - started,
    }
    write_summary(run_dir, summary)
    print(f"residual: {out}")
    return summary
