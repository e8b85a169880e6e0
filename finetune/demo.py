"""``retain demo``: the default sequence run once per method, compared in one report.

Each method's run is a full sequence run directory under ``<run_dir>/<method>/``; the demo's own
directory holds the comparison (``report.md``, curves, heatmaps, ``comparison.json``). Methods
run in parallel worker processes (``workers=2`` on a 2-core machine).
"""

from __future__ import annotations

import multiprocessing as mp
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from finetune.methods import MethodConfig
from finetune.sequence import SequenceJobConfig, run_sequence
from retain.config import to_container
from retain.metrics import METRIC_KEYS
from retain.report import compare_runs
from retain.rundir import prepare_run_dir, write_summary
from retain.tracking import Tracker


@dataclass
class DemoJobConfig(SequenceJobConfig):
    """``retain demo``: the sequence job's keys, plus the methods to compare."""

    methods: dict[str, MethodConfig] = field(default_factory=dict)
    """the methods to run, by name (each one is a method/ config)"""
    workers: int = 2
    """method runs in parallel processes (1: one after another in this process)"""


def method_config(cfg: DictConfig, name: str) -> DictConfig:
    """The sequence-job config of one method of the demo."""
    base = {k: v for k, v in to_container(cfg).items() if k not in ("methods", "workers")}
    run_dir = Path(cfg.run_dir) / name
    # a resumed demo resumes the methods that had started and starts the others
    resume = bool(cfg.resume) and (run_dir / "config.yaml").exists()
    base.update(method=to_container(cfg.methods[name]), run_dir=str(run_dir), resume=resume)
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
    children = [method_config(cfg, name) for name in names]
    parallel = cfg.workers > 1 and len(children) > 1
    print(
        f"retain demo: sequence {cfg.sequence.name} with {', '.join(names)}"
        + (f" in {min(cfg.workers, len(children))} processes" if parallel else ""),
        flush=True,
    )
    if parallel:
        for child in children:
            child.progress = False  # parallel bars would interleave; the summary line reports each
        with ProcessPoolExecutor(
            max_workers=min(cfg.workers, len(children)), mp_context=mp.get_context("spawn")
        ) as pool:
            summaries = list(pool.map(_run_child, [OmegaConf.to_yaml(c) for c in children]))
    else:
        summaries = [run_sequence(child) for child in children]
    compare_runs([c.run_dir for c in children], cfg.run_dir)
    summary = {"job": "demo", "wall_time_s": time.perf_counter() - started, "runs": dict(zip(names, summaries))}
    with Tracker(cfg.run_dir, cfg.logger, resume_offset=None) as tracker:
        scalars = {
            f"cl/{name}/{k}": v for name, s in zip(names, summaries) for k in METRIC_KEYS if (v := s.get(k)) is not None
        }
        tracker.log(scalars, step=max(s["steps"] for s in summaries))
    write_summary(cfg.run_dir, summary)
    for name, s in zip(names, summaries):
        print(
            f"{name:>10}: average {s['average']:.3f}  forgetting {s['forgetting']:.3f}  plasticity {s['plasticity']:.3f}  ({s['wall_time_s']:.0f} s)"
        )
    print(f"report: {Path(cfg.run_dir) / 'report.md'}")
    return summary
