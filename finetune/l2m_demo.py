"""``retain demo`` (``story=l2m``, the default): the story retain exists for, in one command on a CPU.

1. collect scripted-expert data for four Meta-World pretraining tasks and a 3-task CW10 sequence (skipped
   for the datasets already under RETAIN_DATA);
2. pretrain a tiny multi-domain Decision Transformer on the four tasks (``experiment=l2m_small_pretrain``);
3. tune it onto the sequence with each variant (full fine-tuning, L2M and the L2M oracle by default), in
   parallel processes,
   scoring the sequence (R) and the four pretraining tasks (retention) after every task;
4. one comparison report: forgetting and plasticity on the sequence, and what each variant kept of the
   pretraining tasks.

Every step is an ordinary job whose run directory sits inside the demo's (``pretrain/``,
``<variant>/seed_<s>/``), so each can be inspected, rebuilt (``retain report``) or resumed on its own.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from retain.config import load_config, to_container

SEQUENCES = ("mt4_pretrain", "cw3_quick")


@dataclass
class L2mStoryConfig:
    """``retain demo`` with ``story=l2m``: what is collected, pretrained and tuned."""

    variants: list[str] = field(default_factory=lambda: ["full", "l2m", "l2m_oracle"])
    """how the pretrained model is tuned (variant/: full, lora, l2p, l2m, l2m_oracle, ewc, replay, ...)"""
    seeds: list[int] = field(default_factory=lambda: [0])
    """tuning seeds per variant"""
    episodes: int = 20
    """expert episodes collected per task (only for datasets that are missing)"""
    pretrain: list[str] = field(default_factory=lambda: ["experiment=l2m_small_pretrain"])
    """overrides of the `retain pretrain` job"""
    tune: list[str] = field(default_factory=lambda: ["experiment=l2m_small"])
    """overrides of every `retain sequence` job"""


def _missing(sequence: str) -> bool:
    from envs.datasets import dataset_path, sequence_dataset_id

    cfg = load_config("sequence", [f"sequence={sequence}"])
    return any(
        dataset_path(sequence_dataset_id("retain", sequence, t.name, "expert")) is None for t in cfg.sequence.tasks
    )


def _collect(run_dir: Path, story: L2mStoryConfig, workers: int) -> None:
    from envs.collect import run_collect

    for sequence in SEQUENCES:
        if not _missing(sequence):
            print(f"  data: {sequence} already collected", flush=True)
            continue
        t0 = time.perf_counter()
        overrides = [f"sequence={sequence}", f"episodes={story.episodes}", f"workers={workers}", "progress=false"]
        run_collect(load_config("collect", [*overrides, f"run_dir={run_dir / 'collect' / sequence}"]))
        print(f"  data: {sequence} collected ({time.perf_counter() - t0:.0f} s)", flush=True)


def _check(cfg: DictConfig, story: L2mStoryConfig) -> None:
    """Compose every job of the story and check the pretraining's own settings before anything runs."""
    from hydra.errors import HydraException

    from pretrain.dt import _learner_config
    from retain.errors import ConfigError
    from retain.training.schedules import check_schedule

    if not story.variants or not story.seeds:
        raise ConfigError("l2m.variants and l2m.seeds must not be empty", "e.g. l2m.variants=[full,l2m] l2m.seeds=[0]")
    try:
        learner = _learner_config(load_config("pretrain", list(story.pretrain)))
        for variant in story.variants:
            load_config("sequence", [*story.tune, f"variant={variant}"])
    except HydraException as e:
        first = str(e).strip().splitlines()[0]
        raise ConfigError(f"l2m story: {first}", "check l2m.pretrain, l2m.tune and l2m.variants (variant/)") from e
    check_schedule(learner.schedule, learner.updates_per_task)


def _pretrain(cfg: DictConfig, run_dir: Path, story: L2mStoryConfig) -> Path:
    from pretrain.job import run_pretrain

    where = run_dir / "pretrain"
    model = where / "model"
    if model.exists():
        print(f"  pretrain: {model} exists", flush=True)
        return model
    resume = bool(cfg.resume) and (where / "config.yaml").exists()
    t0 = time.perf_counter()
    overrides = [*story.pretrain, f"run_dir={where}", f"resume={resume}", "progress=false", f"seed={cfg.seed}"]
    summary = run_pretrain(load_config("pretrain", overrides))
    print(
        f"  pretrain: mean success on the pretraining tasks {summary['average']:.2f} "
        f"({time.perf_counter() - t0:.0f} s) → {model}",
        flush=True,
    )
    return model


def _tune_config(cfg: DictConfig, run_dir: Path, story: L2mStoryConfig, model: Path, variant: str, seed: int):
    where = run_dir / variant / f"seed_{seed}"
    resume = bool(cfg.resume) and (where / "config.yaml").exists()
    overrides = [
        *story.tune,
        f"variant={variant}",
        f"seed={seed}",
        f"learner.model.path={model}",
        f"run_dir={where}",
        f"resume={resume}",
        "progress=false",
        f"threads={cfg.threads}",
    ]
    return load_config("sequence", overrides)


def run_l2m_story(cfg: DictConfig) -> dict:
    """Steps 1-4 of the module docstring into ``cfg.run_dir``; returns the demo's summary."""
    from finetune.demo import run_children
    from retain.report import compare_runs
    from retain.rundir import prepare_run_dir, write_summary
    from retain.tracking import Tracker

    started = time.perf_counter()
    story: L2mStoryConfig = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(L2mStoryConfig), cfg.l2m))
    _check(cfg, story)  # bad overrides fail here, before anything is collected or trained
    run_dir = Path(prepare_run_dir(cfg))
    print(
        "retain demo: collect → pretrain a Decision Transformer → tune it onto a sequence → what it forgot", flush=True
    )
    _collect(run_dir, story, cfg.workers)
    model = _pretrain(cfg, run_dir, story)
    runs = [(v, s) for v in story.variants for s in story.seeds]
    children = [_tune_config(cfg, run_dir, story, model, v, s) for v, s in runs]
    summaries = run_children(runs, children, cfg.workers, _line)
    compare_runs([c.run_dir for c in children], run_dir)
    comparison = json.loads((run_dir / "comparison.json").read_text())["groups"]
    summary = {
        "job": "demo",
        "story": "l2m",
        "wall_time_s": time.perf_counter() - started,
        "model": str(model),
        "groups": comparison,
        "runs": {f"{v}/seed_{s}": summary for (v, s), summary in zip(runs, summaries)},
        "config": to_container(cfg.l2m),
    }
    write_summary(run_dir, summary)
    with Tracker(run_dir, cfg.logger, resume_offset=None) as tracker:
        scalars = {}
        for label, agg in comparison.items():
            name = label.split(" ")[0]
            scalars.update({f"cl/{name}/{k}": agg[k]["mean"] for k in ("forgetting", "plasticity", "average")})
            kept = agg.get("retention", {}).get("pretraining", {})
            scalars.update(
                {f"cl/{name}/pretraining/{k}": v["mean"] for k, v in kept.items() if v.get("mean") is not None}
            )
        tracker.log({k: v for k, v in scalars.items() if v is not None}, step=max(s["steps"] for s in summaries))
    print("mean over seeds × tasks (success):")
    for label, agg in comparison.items():
        kept = agg.get("retention", {}).get("pretraining", {})
        print(
            f"{label.split(' ')[0]:>10}: sequence forgetting {agg['forgetting']['mean']:.2f}, plasticity "
            f"{agg['plasticity']['mean']:.2f}; pretraining tasks {_mean(kept.get('average'))} at the end "
            f"(lost {_mean(kept.get('forgetting'))})",
            flush=True,
        )
    print(f"report: {run_dir / 'report.md'} ({time.perf_counter() - started:.0f} s)")
    return summary


def _mean(stats: dict | None) -> str:
    return f"{stats['mean']:.2f}" if stats and stats.get("mean") is not None else "–"


def _line(name: str, seed: int, s: dict) -> str:
    lost = s.get("pretraining/forgetting")
    lost = f"{lost:.2f}" if lost is not None else "–"
    return (
        f"  {name} seed {seed}: forgetting {s['forgetting']:.2f}  plasticity {s['plasticity']:.2f}  "
        f"pretraining tasks lost {lost}  ({s['wall_time_s']:.0f} s)"
    )
