"""``retain demo``: the default sequence run once per method, compared in one report.

Each method's run is a full sequence run directory under ``<run_dir>/<method>/``; the demo's own
directory holds the comparison (``report.md``, curves, heatmaps, ``comparison.json``). Methods
run in parallel worker processes (``workers=2`` on a 2-core machine).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from finetune.sequence import SequenceJobConfig, run_sequence
from retain.aggregate import describe, fmt_stats
from retain.config import to_container
from retain.metrics import METRIC_KEYS
from retain.report import compare_runs
from retain.rundir import prepare_run_dir, write_summary
from retain.tracking import Tracker


@dataclass
class DemoJobConfig(SequenceJobConfig):
    """``retain demo``: the sequence job's keys, plus the methods to compare."""

    methods: dict[str, Any] = field(default_factory=dict)
    """the methods to run, by name (each one is a method/ config)"""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """each method runs once per seed; the report aggregates seeds with rliable (IQM, mean, 95% CIs)"""
    workers: int = 2
    """runs in parallel processes (1: one after another in this process)"""


def method_config(cfg: DictConfig, name: str, seed: int) -> DictConfig:
    """The sequence-job config of one (method, seed) run of the demo."""
    base = {k: v for k, v in to_container(cfg).items() if k not in ("methods", "workers", "seeds")}
    run_dir = Path(cfg.run_dir) / name / f"seed_{seed}"
    # a resumed demo resumes the methods that had started and starts the others
    resume = bool(cfg.resume) and (run_dir / "config.yaml").exists()
    base.update(method=to_container(cfg.methods[name]), run_dir=str(run_dir), resume=resume, seed=seed)
    return OmegaConf.merge(OmegaConf.structured(SequenceJobConfig), base)


def _run_child(cfg_yaml: str) -> dict:
    import torch

    cfg = OmegaConf.merge(OmegaConf.structured(SequenceJobConfig), OmegaConf.create(cfg_yaml))
    torch.set_num_threads(cfg.threads)
    return run_sequence(cfg)


def run_demo(cfg: DictConfig) -> dict:
    started = time.perf_counter()
    cfg.run_dir = str(cfg.run_dir)
    if not cfg.methods:
        from retain.errors import ConfigError

        raise ConfigError("demo has no methods to compare", "add some, e.g. +methods.finetune.name=finetune")
    prepare_run_dir(cfg)
    names = list(cfg.methods)
    runs = [(name, seed) for name in names for seed in cfg.seeds]
    children = [method_config(cfg, name, seed) for name, seed in runs]
    parallel = cfg.workers > 1 and len(children) > 1
    where = f" in {min(cfg.workers, len(children))} processes" if parallel else ""
    print(
        f"retain demo: sequence {cfg.sequence.name}, methods {', '.join(names)}, seeds {list(cfg.seeds)}: {len(runs)} runs{where}",
        flush=True,
    )
    if parallel:
        for child in children:
            child.progress = False  # parallel bars would interleave; a line per finished run instead
        with ProcessPoolExecutor(
            max_workers=min(cfg.workers, len(children)), mp_context=mp.get_context("spawn")
        ) as pool:
            summaries = []
            for (name, seed), s in zip(runs, pool.map(_run_child, [OmegaConf.to_yaml(c) for c in children])):
                summaries.append(s)
                print(
                    f"  {name} seed {seed}: forgetting {s['forgetting']:.3f}  average {s['average']:.3f}  ({s['wall_time_s']:.0f} s)",
                    flush=True,
                )
    else:
        summaries = [run_sequence(child) for child in children]
    compare_runs([c.run_dir for c in children], cfg.run_dir)
    comparison = json.loads((Path(cfg.run_dir) / "comparison.json").read_text())["groups"]
    summary = {
        "job": "demo",
        "wall_time_s": time.perf_counter() - started,
        "groups": comparison,
        "runs": {f"{name}/seed_{seed}": s for (name, seed), s in zip(runs, summaries)},
    }
    with Tracker(cfg.run_dir, cfg.logger, resume_offset=None) as tracker:
        scalars = {
            f"cl/{label.split(' ')[0]}/{k}": agg[k]["mean"]
            for label, agg in comparison.items()
            for k in METRIC_KEYS
            if agg[k]["mean"] is not None
        }
        tracker.log(scalars, step=max(s["steps"] for s in summaries))
    write_summary(cfg.run_dir, summary)
    print(f"interquartile mean over seeds × tasks [{describe()}], n = seeds:")
    for label, agg in comparison.items():
        cells = "  ".join(f"{k} {fmt_stats(agg[k], 'iqm')}" for k in ("forgetting", "average", "plasticity"))
        print(f"{label.split(' ')[0]:>10}: {cells}")
    print(f"report: {Path(cfg.run_dir) / 'report.md'}")
    return summary
