"""``retain cpt``: continual pretraining of a language model over stages, scored like any sequence.

Sources are text corpora (files, folders, JSONL, parquet, ``datasets`` folders, or the built-in
offline corpora ``builtin:shakespeare``, ``builtin:bios`` and ``builtin:babyai:<dataset id>``: a BabyAI
dataset's episodes as text transcripts, see ``pretrain/cpt/transcripts.py``), tokenized once under RETAIN_DATA.
Each stage trains on its mixture (with replay) for its token budget; at every stage end every
source's validation loss fills a row of R, so ``retain/metrics.py`` gives forgetting and transfer
with ``higher_is_better=false``, exactly as for RL. Knowledge of the synthetic biographies is probed
by completion (does "<name> was born in" continue with the right city?).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from pretrain.cpt.corpora import TEMPLATES, shakespeare_plays, write_corpus
from pretrain.cpt.data import TokenDataset, tokenize_source
from pretrain.cpt.model import ModelConfig, load_model, load_tokenizer
from pretrain.cpt.trainer import (
    PRE_ANNEAL,
    CptEvalConfig,
    CptLearner,
    StageConfig,
    TrainConfig,
    as_stage_results,
    runner_schedule,
    stage_steps,
)
from retain.config import RunConfig, to_container
from retain.device import resolve_device
from retain.errors import ConfigError
from retain.io import atomic_path
from retain.methods import make_method
from retain.paths import data_root
from retain.rundir import prepare_run_dir
from retain.runner import Runner, RunOutputs
from retain.seeding import derive_seed
from retain.training.distributed import MODES, init_parallel, shutdown
from retain.training.precision import use_bf16
from retain.training.schedules import ScheduleConfig, check_schedule


@dataclass
class SourceConfig:
    """A text corpus."""

    path: str = "???"
    """a file or folder (text, JSONL, parquet, datasets), or builtin:shakespeare | builtin:bios |
    builtin:babyai:<dataset id> (a BabyAI dataset of `retain collect`, one transcript per episode)"""
    text_field: str = "text"
    """the text field of JSONL/parquet/datasets sources"""
    val_fraction: float = 0.02
    """documents held out for validation"""


@dataclass
class BiosConfig:
    """The synthetic knowledge corpus (builtin:bios)."""

    people: int = 300
    """fictional people"""
    paraphrases: int = 4
    """biographies per person, each in other words"""
    probes: int = 200
    """completion probes scored for knowledge (0: none)"""


@dataclass
class CptJobConfig(RunConfig):
    """``retain cpt``: stages of continual pretraining, evaluated on every source."""

    model: ModelConfig = field(default_factory=ModelConfig)
    sources: dict[str, SourceConfig] = field(default_factory=dict)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    """the learning-rate schedule of every stage that does not set its own (group ``schedule/``); an infinite
    schedule warms up and cools down in the first stage only"""
    stages: list[StageConfig] = field(default_factory=list)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: CptEvalConfig = field(default_factory=CptEvalConfig)
    bios: BiosConfig = field(default_factory=BiosConfig)
    method: dict[str, Any] = field(default_factory=lambda: {"name": "finetune"})
    """the continual method over the stages (method/ group): finetune (stages in order, as CPT does) | reset |
    multitask (stage i trains on the mixtures of stages 0..i merged)"""
    budget_scale: float = 1.0
    """multiplies every stage's token budget: a run or preset at a fraction of its cost (debug=fast: 0.02)"""
    parallel: str = "none"
    """none | ddp | fsdp: data parallelism under ``torchrun --nproc_per_node=N retain cpt ...`` (FSDP2 shards
    weights, gradients and optimizer state per transformer block); one process without torchrun"""


BUILTINS = "builtin:shakespeare, builtin:bios[:<k>], builtin:babyai:<dataset id>"


def _builtin(name: str, cfg: DictConfig) -> Path:
    """Materialize a built-in corpus under RETAIN_DATA/cpt (once; it is deterministic)."""
    root = data_root() / "cpt"
    if name == "shakespeare":
        out = root / "shakespeare"
        if not out.exists():
            # Jobs started together (a sweep) publish the same files: the first one's are kept.
            with atomic_path(out, directory=True, keep_existing=True) as tmp:
                for play in shakespeare_plays():
                    shutil.copy(play, tmp / play.name)
        return out
    if name == "bios" or name.startswith("bios:"):
        # builtin:bios:<k> is another corpus of the same kind with other people (a further domain).
        k = name.partition(":")[2]
        if k and not (k.isdigit() and int(k) >= 1):
            raise ConfigError(f"unknown built-in corpus builtin:{name}", "use builtin:bios or builtin:bios:<k>, k >= 1")
        seed = derive_seed(cfg.seed, "bios", int(k)) if k else cfg.seed
        out = root / f"bios-{cfg.bios.people}x{cfg.bios.paraphrases}-seed{seed}"
        if not (out / "people.jsonl").exists():  # written last; the files are deterministic and atomic
            write_corpus(out, cfg.bios.people, cfg.bios.paraphrases, seed=seed)
        return out / "bios.txt"
    if name == "babyai" or name.startswith("babyai:"):
        return _babyai(name.partition(":")[2], root)
    raise ConfigError(f"unknown built-in corpus builtin:{name}", f"use {BUILTINS}, or a path")


def _babyai(dataset: str, root: Path) -> Path:
    """builtin:babyai:<dataset id>: the dataset's episodes as transcripts, rendered once per dataset version."""
    if not dataset.strip():
        raise ConfigError(
            "builtin:babyai names no dataset",
            "use builtin:babyai:<dataset id>, e.g. retain/babyai4/goto_local/expert-v0",
        )
    # Imported here: only this source needs the env and dataset stack (gymnasium, minari, h5py).
    from pretrain.cpt.transcripts import write_transcripts

    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", dataset.strip().strip("/"))
    return write_transcripts(dataset.strip(), root / "babyai" / slug)


def _source_paths(cfg: DictConfig) -> dict[str, Path]:
    paths = {}
    for name, source in cfg.sources.items():
        path = (
            _builtin(source.path.split(":", 1)[1], cfg)
            if source.path.startswith("builtin:")
            else Path(source.path).expanduser()
        )
        if not path.exists():
            raise ConfigError(
                f"source {name}: {path} does not exist",
                f"give a file or folder of text, or {BUILTINS}",
            )
        paths[name] = path
    return paths


def job_stages(cfg: DictConfig) -> list[StageConfig]:
    """The stages of ``cfg``, each with its schedule: its own, or the run's ``schedule`` (a copy per stage).

    With the run's schedule infinite, stages after the first skip its warmup and cooldown and continue at
    η_const: that is what makes it a single schedule over all stages instead of a re-warm per stage. When
    that schedule anneals at each stage's end (so R's rows are measured annealed), the next stage branches
    from the checkpoint saved just before the anneal (Ibrahim et al. 2024) unless it names a checkpoint.
    Every budget is multiplied by ``budget_scale``, and so are the schedules' phases counted in steps, so a
    scaled run keeps its shape.
    """
    if cfg.budget_scale <= 0:
        raise ConfigError(f"budget_scale={cfg.budget_scale} is not positive", "use a budget_scale > 0, e.g. 0.1")
    stages = [OmegaConf.to_object(s) for s in cfg.stages]
    for i, stage in enumerate(stages):
        stage.tokens = int(stage.tokens * cfg.budget_scale)
        if stage.schedule is None:
            stage.schedule = copy.deepcopy(OmegaConf.to_object(cfg.schedule))
            if stage.schedule.name == "infinite" and i > 0:
                stage.schedule.skip_warmup_and_cooldown = True
                if stage.schedule.anneal_steps > 0 and not stage.inherit.from_checkpoint:
                    stage.inherit.from_checkpoint = PRE_ANNEAL
        if cfg.budget_scale != 1.0:
            for phase in ("warmup_steps", "cooldown_steps", "anneal_steps"):
                steps = getattr(stage.schedule, phase)
                setattr(stage.schedule, phase, max(1, round(steps * cfg.budget_scale)) if steps else 0)
    return stages


def _check(cfg: DictConfig) -> None:
    if not cfg.sources or not cfg.stages:
        raise ConfigError("retain cpt needs sources and stages", "see configs/cpt.yaml for the default two-stage run")
    if cfg.parallel not in MODES:
        raise ConfigError(f"unknown parallel={cfg.parallel!r}", f"use one of {', '.join(MODES)}")
    method = make_method(cfg.method)  # its config checked before anything is written
    if method.cfg.name == "packnet":
        raise ConfigError("method=packnet is not built for language models here", "use ewc, l2, mas, agem or replay")
    if method.cfg.name == "reset" and cfg.parallel == "fsdp":
        raise ConfigError("method=reset with parallel=fsdp", "use parallel=ddp (or none) with method=reset")
    train = OmegaConf.to_object(cfg.train)
    use_bf16(train.precision, torch.device("cpu"))  # raises on an unknown precision
    runner_schedule(train, OmegaConf.to_object(cfg.eval)).check()
    for stage in job_stages(cfg):
        check_schedule(stage.schedule, stage_steps(stage, train))  # before anything is written
        for name in list(stage.mix) + list(stage.replay):
            if name not in cfg.sources:
                raise ConfigError(
                    f"stage {stage.name} uses source {name!r}, which is not in sources",
                    f"use one of {', '.join(cfg.sources)}",
                )


def knowledge_probes(model, tokenizer, bios_dir: Path, n: int) -> float:
    """Completion accuracy on the biographies: the greedy continuation of "<name> was born in" etc.
    must start with the true value (first template of each fact, its value cut off)."""
    people = [json.loads(line) for line in (bios_dir / "people.jsonl").read_text().splitlines()]
    prompts = []
    for person in people:
        for attribute, templates in TEMPLATES.items():
            template = templates[0]
            prefix = template.split("{value}")[0].format(name=person["name"]).rstrip()
            prompts.append((prefix, person[attribute]))
    rng = np.random.default_rng(0)
    chosen = [prompts[i] for i in rng.choice(len(prompts), size=min(n, len(prompts)), replace=False)]
    device = next(model.parameters()).device
    model.eval()
    correct = 0
    with torch.no_grad():
        for prefix, answer in chosen:
            ids = torch.tensor([tokenizer.encode(prefix)], device=device)
            want = len(tokenizer.encode(" " + answer))
            out = model.generate(ids, max_new_tokens=want + 2, do_sample=False, pad_token_id=tokenizer.pad_token_id)
            text = tokenizer.decode(out[0, ids.shape[1] :]).strip()
            correct += text.startswith(answer)
    model.train()
    return correct / max(len(chosen), 1)


def _tokenize(cfg: DictConfig, paths: dict[str, Path], tokenizer) -> dict[str, TokenDataset]:
    sources = {}
    for name, path in paths.items():
        # Everything the shards depend on: runs that differ in any of it never share (or overwrite) a folder.
        identity = f"{path.resolve()}|{cfg.seed}|{cfg.sources[name].val_fraction}|{cfg.sources[name].text_field}|"
        key = hashlib.sha1((identity + tokenizer.backend_tokenizer.to_str()).encode()).hexdigest()[:12]
        out = data_root() / "cpt" / "tokens" / f"{name}-{key}"  # tokenize_source skips it when up to date
        tokenize_source(
            path,
            tokenizer,
            out,
            val_fraction=cfg.sources[name].val_fraction,
            seed=cfg.seed,
            text_field=cfg.sources[name].text_field,
        )
        sources[name] = TokenDataset(out)
    return sources


def _condition(cfg: DictConfig, stages: list[str]) -> str:
    """What tells this run's setting apart from others of a sweep (seeds of one setting share it): its ``name``
    (presets set it from what they sweep), else the overrides it was launched with (seed left out), else its
    stages."""
    if cfg.name:
        return str(cfg.name)
    try:
        from hydra.core.hydra_config import HydraConfig

        overrides = [o for o in HydraConfig.get().overrides.task if o.split("=")[0].lstrip("+~") not in _NOT_A_SETTING]
    except ValueError:  # not launched by Hydra (tests, notebooks)
        overrides = []
    return " ".join(overrides) or " → ".join(stages)


_NOT_A_SETTING = {"seed", "run_dir", "name", "resume", "progress", "device", "threads", "logger", "debug"}


def describe(cfg: DictConfig) -> list[str]:
    """The report's "What was run" lines: the model, every stage, the run's schedule and method."""
    model = cfg.model
    arch = model.config or {}
    built = f"random init {arch.get('model_type', '?')} ({arch.get('num_hidden_layers', '?')} layers, width {arch.get('hidden_size', '?')})"
    lines = [f"- model: `{model.name_or_path or built}`"]
    for stage in job_stages(cfg):
        replay = f", replay {json.dumps(stage.replay)}" if stage.replay else ""
        lines.append(
            f"- stage `{stage.name}`: {stage.tokens} tokens of {json.dumps(stage.mix)}{replay}, lr {stage.lr}, "
            f"schedule `{stage.schedule.name}`"
        )
    lines.append(f"- schedule (stages without their own): `{json.dumps(to_container(cfg.schedule))}`")
    lines.append(f"- method: `{cfg.method.name}`")
    return lines


def _summary_lines(summary: dict, result: dict, run_dir: Path) -> list[str]:
    """What a user wants to read at the end: forgetting, knowledge, the stability gap, where the report is."""
    lines = [f"retain cpt: {len(result['stages'])} stages, {summary['steps']} updates → {run_dir}"]
    if summary.get("forgetting") is not None:
        lines.append(f"  forgetting (validation loss rise of earlier domains, nats): {summary['forgetting']:.3f}")
    if "knowledge_accuracy" in summary:
        lines.append(f"  knowledge-probe accuracy (bios completions): {summary['knowledge_accuracy']:.2f}")
    for stage, gaps in zip(result["stages"][1:], result["stability_gap"][1:]):
        for source, gap in gaps.items():
            if gap["depth"] > 0:
                recovered = gap["recovery_step"]
                if recovered is not None:
                    when = f"back at its start value after {recovered} updates"
                else:
                    when = f"+{gap['end']:.3f} at the stage end (not back at its start value)"
                lines.append(
                    f"  stability gap, {source} in stage {stage}: +{gap['depth']:.3f} nats after "
                    f"{gap['worst_step']} updates, {when}"
                )
    if not any(line.startswith("  stability gap") for line in lines):
        lines.append("  stability gap: no domain got worse early in a stage (at this evaluation grid)")
    lines.append(f"  report: {run_dir / 'report.md'}")
    return lines


def run_cpt(cfg: DictConfig, stop_after: int | None = None) -> dict:
    """Train the stages; write results (R over sources, losses), summary and report into ``cfg.run_dir``.

    Under torchrun every process runs this; the main one writes the run directory, the tokenizer and the
    token shards first, the others wait for it (barriers) and read them.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded unless the user asks
    started = time.perf_counter()
    cfg.run_dir = str(cfg.run_dir)
    torch.set_num_threads(cfg.threads)
    _check(cfg)
    device = resolve_device(cfg.device)
    parallel = init_parallel(cfg.parallel, device)
    try:
        return _run(cfg, device, parallel, started, stop_after)
    finally:
        shutdown()


def _run(cfg: DictConfig, device: torch.device, parallel, started: float, stop_after: int | None) -> dict:
    main = parallel.is_main
    if main:
        paths = _source_paths(cfg)
        run_dir = prepare_run_dir(cfg)
    parallel.barrier()
    if not main:
        paths, run_dir = _source_paths(cfg), Path(cfg.run_dir)
    text_files = [p for path in paths.values() for p in (sorted(path.glob("*.txt")) if path.is_dir() else [path])]
    model_cfg: ModelConfig = OmegaConf.to_object(cfg.model)
    for turn in ("main", "others"):  # the main process trains the tokenizer and writes the shards; then the rest
        if (turn == "main") == main:
            tokenizer = load_tokenizer(model_cfg, text_files, cache_dir=run_dir / "tokenizer")
            sources = _tokenize(cfg, paths, tokenizer)
        parallel.barrier()
    model = load_model(model_cfg, tokenizer, seed=cfg.seed).to(device)
    stages = job_stages(cfg)
    bios = next((paths[n] for n, s in cfg.sources.items() if s.path == "builtin:bios"), None)  # the first corpus
    probe = None
    if bios is not None and cfg.bios.probes > 0:

        def probe(m):
            return {"bios/knowledge_accuracy": knowledge_probes(m, tokenizer, bios.parent, cfg.bios.probes)}

    learner = CptLearner(
        model,
        sources,
        stages,
        OmegaConf.to_object(cfg.train),
        OmegaConf.to_object(cfg.eval),
        run_dir,
        cfg.seed,
        probe,
        parallel,
    )
    outputs = RunOutputs(
        job="cpt",
        config=to_container(cfg),
        summary={"seed": cfg.seed, "method": cfg.method.name, "label": "cpt · " + _condition(cfg, learner.tasks)},
        results={"stages": learner.tasks},
        description=describe(cfg),
    )
    runner = Runner(
        learner,
        make_method(cfg.method),
        run_dir,
        schedule=runner_schedule(learner.train, OmegaConf.to_object(cfg.eval)),
        logger=cfg.logger,
        outputs=outputs,
        resume=cfg.resume,
        progress=cfg.progress,
        parallel=parallel,
        started=started,
    )
    results = runner.run(stop_after=stop_after)
    if results["stopped"]:  # tests: as if killed
        return {"stopped": True}
    weights = parallel.model_state(model)  # a collective under FSDP: every process takes part
    if not main:
        return {"job": "cpt", "steps": results["global_step"]}
    summary = results["summary"]
    model.save_pretrained(run_dir / "model", state_dict=weights, safe_serialization=True)
    tokenizer.save_pretrained(run_dir / "model")
    if cfg.progress:
        print("\n".join(_summary_lines(summary, as_stage_results(results), run_dir)))
    return summary
