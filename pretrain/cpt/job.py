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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from pretrain.cpt.corpora import CHUNK_CHARS, CORPUS_VERSION, shakespeare_chunks, write_corpus
from pretrain.cpt.data import TokenDataset, tokenize_source
from pretrain.cpt.model import ModelConfig, load_model, load_tokenizer
from pretrain.cpt.probes import ProbeSet, load_probes
from pretrain.cpt.trainer import (
    PRE_ANNEAL,
    CptEvalConfig,
    CptLearner,
    StageConfig,
    TrainConfig,
    as_stage_results,
    branch_anneal_steps,
    check_stages,
    diagonal,
    runner_schedule,
    stage_steps,
)
from retain.config import RunConfig, to_container
from retain.device import resolve_device
from retain.errors import ConfigError
from retain.io import atomic_path, write_json_atomic
from retain.methods import make_method
from retain.paths import data_root
from retain.rundir import prepare_run_dir
from retain.runner import Runner, RunOutputs
from retain.seeding import derive_seed
from retain.training.distributed import MODES, init_parallel, shutdown
from retain.training.precision import use_bf16
from retain.training.schedules import ScheduleConfig, check_schedule, resolved


@dataclass
class SourceConfig:
    """A text corpus."""

    path: str = "???"
    """a file or folder (text, JSONL, parquet, datasets), or builtin:shakespeare | builtin:bios |
    builtin:babyai:<dataset id> (a BabyAI dataset of `retain collect`, one transcript per episode)"""
    text_field: str = "text"
    """the text field of JSONL/parquet/datasets sources"""
    val_fraction: float = 0.02
    """documents held out for validation (builtin:shakespeare's documents are ~4000-character chunks of the
    plays; builtin:bios ignores it: its validation split is the biographies of the people held out of training)"""
    val_path: str | None = None
    """a file or folder of validation documents of this domain (then all of ``path`` trains and val_fraction is
    ignored)"""


@dataclass
class BiosConfig:
    """The synthetic knowledge corpus (builtin:bios)."""

    people: int = 100
    """fictional people"""
    paraphrases: int = 8
    """biographies per person, each in other words (more raise how well facts can be extracted in new words:
    Allen-Zhu & Li 2023)"""
    held_out: float = 0.1
    """share of the people never trained on: their biographies are the validation split, and probing them gives
    the accuracy of a model that never read the facts"""
    probes: int = 30
    """people probed per group (seen, never seen), each on 4 attributes × 3 held-out phrasings (0: no probes)"""
    probe_during: bool = True
    """probe at every evaluation point of a stage too (the target domain's stability gap, Guo et al. 2024), not
    only at stage ends"""


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
    arm: dict[str, Any] = field(default_factory=dict)
    """a preset's named arm (e.g. group rewarm_arm/ of experiment=cpt_rewarm): values its stages interpolate
    (``${arm.lr}``), so one swept key picks a whole setting and a sweep can list settings that are not a grid"""
    budget_scale: float = 1.0
    """multiplies every stage's token budget: a run or preset at a fraction of its cost (debug=fast: 0.02)"""
    parallel: str = "none"
    """none | ddp | fsdp: data parallelism under ``torchrun --nproc_per_node=N retain cpt ...`` (FSDP2 shards
    weights, gradients and optimizer state per transformer block); one process without torchrun"""


BUILTINS = "builtin:shakespeare, builtin:bios[:<k>], builtin:babyai:<dataset id>"


def _builtin(name: str, cfg: DictConfig) -> tuple[Path, Path | None]:
    """Materialize a built-in corpus under RETAIN_DATA/cpt (once; it is deterministic): its path and, where the
    corpus defines its validation documents itself (the biographies of held-out people), theirs."""
    root = data_root() / "cpt"
    if name == "shakespeare":
        out = root / f"shakespeare-chunks{CHUNK_CHARS}"
        if not out.exists():
            # Jobs started together (a sweep) publish the same files: the first one's are kept.
            with atomic_path(out, directory=True, keep_existing=True) as tmp:
                for chunk, text in shakespeare_chunks():
                    (tmp / f"{chunk}.txt").write_text(text + "\n", encoding="utf-8")
        return out, None
    if name == "bios" or name.startswith("bios:"):
        # builtin:bios:<k> is another corpus of the same kind with other people (a further domain).
        k = name.partition(":")[2]
        if k and not (k.isdigit() and int(k) >= 1):
            raise ConfigError(f"unknown built-in corpus builtin:{name}", "use builtin:bios or builtin:bios:<k>, k >= 1")
        seed = derive_seed(cfg.seed, "bios", int(k)) if k else cfg.seed
        bios = cfg.bios
        out = root / f"bios-v{CORPUS_VERSION}-{bios.people}x{bios.paraphrases}-heldout{bios.held_out:g}-seed{seed}"
        if not (out / "people.jsonl").exists():  # written last; the files are deterministic and atomic
            write_corpus(out, bios.people, bios.paraphrases, seed=seed, held_out=bios.held_out)
        return out / "bios.txt", (out / "bios_val.txt" if bios.held_out > 0 else None)
    if name == "babyai" or name.startswith("babyai:"):
        return _babyai(name.partition(":")[2], root), None
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


def _source_paths(cfg: DictConfig) -> dict[str, tuple[Path, Path | None]]:
    """Each source's documents and, when they come apart, its validation documents."""
    paths = {}
    for name, source in cfg.sources.items():
        if source.path.startswith("builtin:"):
            path, val = _builtin(source.path.split(":", 1)[1], cfg)
        else:
            path, val = Path(source.path).expanduser(), None
        if source.val_path:
            val = Path(source.val_path).expanduser()
        for what, p in (("path", path), ("val_path", val)):
            if p is not None and not p.exists():
                raise ConfigError(
                    f"source {name}: {what} {p} does not exist", f"give a file or folder of text, or {BUILTINS}"
                )
        paths[name] = (path, val)
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
                if steps:  # None (a fraction of the stage: scales by itself) and 0 stay as they are
                    setattr(stage.schedule, phase, max(1, round(steps * cfg.budget_scale)))
    # Token-matched branches: a stage the next one branches from before its anneal anneals after its budget.
    for stage, successor in zip(stages, stages[1:]):
        if successor.inherit.from_checkpoint == PRE_ANNEAL and stage.schedule.name == "infinite":
            stage.anneal_after_budget = True
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
    stages = job_stages(cfg)
    for stage in stages:
        check_schedule(stage.schedule, stage_steps(stage, train))  # before anything is written
        for name in list(stage.mix) + list(stage.replay):
            if name not in cfg.sources:
                raise ConfigError(
                    f"stage {stage.name} uses source {name!r}, which is not in sources",
                    f"use one of {', '.join(cfg.sources)}",
                )
    check_stages(stages, list(cfg.sources), train)  # hold first, pre_anneal without an anneal
    diagonal(stages, list(cfg.sources))  # stage i is scored as source i


class KnowledgeProbe:
    """The probe of every synthetic-biography source (``builtin:bios``, ``builtin:bios:<k>``): multiple-choice
    accuracy in held-out words, for people seen in training and people never seen, with the chance level
    (``pretrain/cpt/probes.py``); keys ``<source>/...``. ``names`` limits a call to some sources, ``seen_only`` to
    the people seen in training (what a stability gap is measured on: half the forward passes)."""

    def __init__(self, cfg: DictConfig, paths: dict[str, tuple[Path, Path | None]], tokenizer):
        probes = {
            name: load_probes(paths[name][0].parent, cfg.bios.probes, seed=cfg.seed)
            for name, source in cfg.sources.items()
            if source.path.split(":")[:2] == ["builtin", "bios"] and cfg.bios.probes > 0
        }
        self.sets = {name: ProbeSet(p, tokenizer) for name, p in probes.items()}
        self.seen = {name: probes.subset(lambda q: q["seen"]) for name, probes in self.sets.items()}

    def __call__(self, model, names: list[str] | None = None, seen_only: bool = False) -> dict[str, float]:
        sets = self.seen if seen_only else self.sets
        return {
            f"{name}/{key.partition('/')[2]}": value
            for name, probes in sets.items()
            if names is None or name in names
            for key, value in probes.score(model).items()
            if not (seen_only and key.endswith("/chance"))
        }


def _tokenize(cfg: DictConfig, paths: dict[str, tuple[Path, Path | None]], tokenizer) -> dict[str, TokenDataset]:
    sources = {}
    for name, (path, val) in paths.items():
        val_fraction = 0.0 if val is not None else cfg.sources[name].val_fraction
        # Everything the shards depend on: runs that differ in any of it never share (or overwrite) a folder.
        identity = f"{path.resolve()}|{val and val.resolve()}|{cfg.seed}|{val_fraction}|{cfg.sources[name].text_field}|"
        key = hashlib.sha1((identity + tokenizer.backend_tokenizer.to_str()).encode()).hexdigest()[:12]
        out = data_root() / "cpt" / "tokens" / f"{name}-{key}"  # tokenize_source skips it when up to date
        tokenize_source(
            path,
            tokenizer,
            out,
            val_fraction=val_fraction,
            seed=cfg.seed,
            text_field=cfg.sources[name].text_field,
            val_source=val,
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
    """The report's "What was run" lines: the model, every stage with the tokens it actually trained on (and the
    nominal budget when budget_scale shrank it), the schedules, the method."""
    model = cfg.model
    arch = model.config or {}
    built = f"random init {arch.get('model_type', '?')} ({arch.get('num_hidden_layers', '?')} layers, width {arch.get('hidden_size', '?')})"
    lines = [f"- model: `{model.name_or_path or built}`"]
    train = OmegaConf.to_object(cfg.train)
    per_update = train.seq_len * train.batch_size * train.grad_accum
    for nominal, stage in zip(cfg.stages, job_stages(cfg)):
        replay = f", replay {json.dumps(stage.replay)}" if stage.replay else ""
        branch = branch_anneal_steps(stage)
        updates = stage_steps(stage, train) - branch
        scaled = f" (budget {nominal.tokens} × budget_scale {cfg.budget_scale:g})" if cfg.budget_scale != 1.0 else ""
        anneal = (
            f"; then {branch} anneal updates ({branch * per_update} tokens) as a branch the next stage does not continue"
            if branch
            else ""
        )
        peak = "" if stage.schedule.name == "hold" else f", η_max {stage.lr:g}"
        lines.append(
            f"- stage `{stage.name}` (scored as `{stage.scored_as or max(stage.mix, key=stage.mix.get)}`): "
            f"{updates * per_update} tokens trained = {updates} updates × {per_update}{scaled} of "
            f"{json.dumps(stage.mix)}{replay}{peak}{anneal}; schedule {_schedule_text(stage, updates)}"
        )
    lines.append(f"- method: `{cfg.method.name}`")
    return lines


def _schedule_text(stage: StageConfig, updates: int) -> str:
    """A stage's schedule in words, with only the fields its shape reads and where each rate comes from."""
    sched = resolved(stage.schedule, updates + branch_anneal_steps(stage))
    if sched.name == "hold":
        return "`hold`: the previous stage's final rate, constant (no re-warm)"
    fraction = stage.schedule.warmup_fraction if stage.schedule.warmup_steps is None else None
    warmup = f"warmup {sched.warmup_steps} updates" + (f" ({fraction:g} of the stage)" if fraction is not None else "")
    if sched.name == "cosine":
        return f"`cosine`: {warmup}, then cosine decay to {sched.min_lr_ratio:g}·η_max"
    if sched.name == "constant":
        return f"`constant`: {warmup}, then η_max"
    if sched.name == "wsd":
        return f"`wsd`: {warmup}, η_max, then a {sched.decay_type} decay over the last {sched.decay_fraction:g} of the stage to {sched.min_lr_ratio:g}·η_max"
    if stage.schedule.const_lr is not None:
        const = f"η_const = {stage.schedule.const_lr:g} (const_lr, absolute)"
    else:
        const = f"η_const = {sched.const_lr_ratio:g}·η_max = {sched.const_lr_ratio * stage.lr:.3g} (const_lr_ratio)"
    start = (
        "from η_const (no warmup or cooldown: no re-warm)"
        if sched.skip_warmup_and_cooldown
        else f"{warmup}, {sched.cooldown_type} cooldown over {sched.cooldown_steps} updates"
    )
    anneal = (
        f", anneal to {sched.min_lr_ratio:g}·η_max over the last {sched.anneal_steps} updates"
        if sched.anneal_steps
        else ""
    )
    return f"`infinite`: {start}, {const}{anneal}"


def _summary_lines(summary: dict, result: dict, run_dir: Path) -> list[str]:
    """What a user wants to read at the end: forgetting, knowledge against chance, both stability gaps."""
    lines = [f"retain cpt: {len(result['stages'])} stages, {summary['steps']} updates → {run_dir}"]
    if summary.get("forgetting") is not None:
        lines.append(f"  forgetting (validation loss rise of earlier domains, nats): {summary['forgetting']:.3f}")
    if "knowledge_accuracy" in summary:
        lines.append(
            f"  knowledge of {summary['knowledge_source']} (multiple choice, held-out phrasings): "
            f"{summary['knowledge_accuracy']:.2f} on people seen in training, "
            f"{summary.get('knowledge_unseen_accuracy', float('nan')):.2f} on people never seen; "
            f"chance {summary.get('knowledge_chance', float('nan')):.2f}"
        )
    for kind, title in (("earlier", "earlier domains (De Lange)"), ("target", "the stage's own domain (Guo)")):
        for stage, gaps in zip(result["stages"][1:], result["stability_gap"][1:]):
            for name, gap in gaps.items():
                if (gap.get("kind") == "probe" and kind == "target") or gap.get("kind") == kind:
                    what = name.removeprefix("probe:")
                    unit = "" if name.startswith("probe:") else " nats"
                    if gap["depth"] <= 0:
                        lines.append(
                            f"  stability gap, {title}: {what} in stage {stage}: none (never worse than at its start)"
                        )
                        continue
                    back = (
                        f"back at its start after {gap['recovery_step']} updates"
                        if gap["recovery_step"] is not None
                        else f"{gap['share_regained']:.0%} of it regained by the stage end"
                    )
                    lines.append(
                        f"  stability gap, {title}: {what} in stage {stage}: {gap['depth']:.3f}{unit} worse after "
                        f"{gap['worst_step']} updates, {back}"
                    )
    lines.append(f"  report: {run_dir / 'report.md'}")
    return lines


def run_cpt(cfg: DictConfig, stop_after: int | None = None) -> dict:
    """Train the stages; write results (R over sources, losses), summary and report into ``cfg.run_dir``.

    Under torchrun every process runs this; the main one writes the run directory, the tokenizer and the
    token shards first, the others wait for it (barriers) and read them.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded unless the user asks
    if not cfg.progress:  # transformers' own bars ("Writing model shards", "Loading weights") go quiet too
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
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
    # A tokenizer trained here sees the first stage's sources only (their training documents): a real continual
    # pretraining run uses its base model's tokenizer, which never saw the later domains or any validation text.
    first = [*cfg.stages[0].mix, *(cfg.stages[0].get("replay") or {})]
    text_files = [
        p for n in first for p in (sorted(paths[n][0].glob("*.txt")) if paths[n][0].is_dir() else [paths[n][0]])
    ]
    model_cfg: ModelConfig = OmegaConf.to_object(cfg.model)
    for turn in ("main", "others"):  # the main process trains the tokenizer and writes the shards; then the rest
        if (turn == "main") == main:
            tokenizer = load_tokenizer(model_cfg, text_files, cache_dir=run_dir / "tokenizer")
            if not (model_cfg.tokenizer or model_cfg.name_or_path):
                write_json_atomic(
                    run_dir / "tokenizer" / "trained_on.json", {"sources": first, "files": len(text_files)}
                )
            sources = _tokenize(cfg, paths, tokenizer)
        parallel.barrier()
    model = load_model(model_cfg, tokenizer, seed=cfg.seed).to(device)
    stages = job_stages(cfg)
    probe = KnowledgeProbe(cfg, paths, tokenizer)
    learner = CptLearner(
        model,
        sources,
        stages,
        OmegaConf.to_object(cfg.train),
        OmegaConf.to_object(cfg.eval),
        run_dir,
        cfg.seed,
        probe if probe.sets else None,
        parallel,
        probe_during=cfg.bios.probe_during,
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
