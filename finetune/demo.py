"""``retain demo``: the story in one command, compared in one report.

``story=l2m`` (the default, ``finetune/l2m_demo.py``): collect Meta-World data → pretrain a Decision
Transformer → tune it onto a 3-task sequence with full fine-tuning, L2M and the L2M oracle (task-id routing) → the sequence's forgetting
and the retention of the pretraining tasks. ``story=methods``: the default sequence run once per method and
seed (SB3 PPO, finetune vs reset).

Each run is a full run directory under ``<run_dir>/<method or variant>/seed_<s>/``; the demo's own
directory holds the comparison (``report.md``, curves, heatmaps, ``comparison.json``). Runs go to
parallel worker processes (``workers=2`` on a 2-core machine).
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

from finetune.l2m_demo import L2mStoryConfig
from finetune.sequence import SequenceJobConfig, run_sequence
from retain.aggregate import describe, fmt_stats
from retain.config import to_container
from retain.metrics import METRIC_KEYS
from retain.report import compare_runs
from retain.rundir import prepare_run_dir, write_summary
from retain.tracking import Tracker


@dataclass
class DemoJobConfig(SequenceJobConfig):
    """``retain demo``: the sequence job's keys, plus the story and (story=methods) the methods to compare."""

    story: str = "l2m"
    """l2m: collect → pretrain a Decision Transformer → tune with full FT and L2M → forgetting and retention;
    methods: the sequence below once per method and seed"""
    l2m: L2mStoryConfig = field(default_factory=L2mStoryConfig)

    methods: dict[str, Any] = field(default_factory=dict)
    """the methods to run, by name (each one is a method/ config)"""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """each method runs once per seed; the report aggregates seeds with rliable (IQM, mean, 95% CIs)"""
    workers: int = 2
    """runs in parallel processes (1: one after another in this process)"""


def method_config(cfg: DictConfig, name: str, seed: int) -> DictConfig:
    """The sequence-job config of one (method, seed) run of the demo."""
    base = {k: v for k, v in to_container(cfg).items() if k not in ("methods", "workers", "seeds", "story", "l2m")}
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


def run_children(runs: list[tuple[str, int]], children: list[DictConfig], workers: int, line) -> list[dict]:
    """Run sequence jobs (in ``workers`` spawned processes when more than one), printing ``line(name, seed,
    summary)`` as each finishes; their summaries in order."""
    if workers > 1 and len(children) > 1:
        for child in children:
            child.progress = False  # parallel bars would interleave; a line per finished run instead
        with ProcessPoolExecutor(max_workers=min(workers, len(children)), mp_context=mp.get_context("spawn")) as pool:
            summaries = []
            for (name, seed), s in zip(runs, pool.map(_run_child, [OmegaConf.to_yaml(c) for c in children])):
                summaries.append(s)
                print(line(name, seed, s), flush=True)
            return summaries
    summaries = []
    for (name, seed), child in zip(runs, children):
        summaries.append(run_sequence(child))
        print(line(name, seed, summaries[-1]), flush=True)
    return summaries


def run_demo(cfg: DictConfig) -> dict:
    from retain.errors import ConfigError

    if cfg.story == "l2m":
        from finetune.l2m_demo import run_l2m_story

        cfg.run_dir = str(cfg.run_dir)
        return run_l2m_story(cfg)
    if cfg.story != "methods":
        raise ConfigError(f"story={cfg.story!r}", "use story=l2m (pretrain → tune → forgetting) or story=methods")
    started = time.perf_counter()
    cfg.run_dir = str(cfg.run_dir)
    if not cfg.methods:
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
    summaries = run_children(
        runs,
        children,
        cfg.workers,
        lambda name, seed, s: (
            f"  {name} seed {seed}: forgetting {s['forgetting']:.3f}  average {s['average']:.3f}  "
            f"({s['wall_time_s']:.0f} s)"
        ),
    )
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
