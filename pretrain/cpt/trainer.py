"""The continual-pretraining trainer core: train a causal LM through a list of stages, nanoGPT-style.

A stage is one task of the continual sequence: a token budget, a data mixture (new sources by weight,
replayed sources by exact ratio), a peak learning rate and its own schedule. ``train_stages`` runs them in
order, top to bottom:

1. evaluate every source before training (``initial``);
2. per stage: steps = tokens // (seq_len * batch_size * grad_accum); a fresh AdamW and a scheduler over the
   stage's own steps; ``inherit`` decides what carries over from the previous stage (or ``from_checkpoint``);
3. per step: one sampler batch of ``batch_size * grad_accum`` rows, split into ``grad_accum`` micro-batches,
   gradient clipping, optimizer step, scheduler step; ``train/`` and ``perf/`` metrics every ``log_every``;
   validation loss of every source densely early in the stage and sparsely later (``eval/<source>/``);
4. at each stage end every source is evaluated into one row of the results matrix R (stages x sources, lower
   is better) and a checkpoint is written.

**Exact resume.** Checkpoints (every ``checkpoint_every`` steps and at each stage end) hold the weights, the
optimizer, scheduler and sampler states, the stage index, step within the stage, global step, R and curves
so far, the tracker's byte offset and the global RNG states. The sampler is stateless beyond its step, so
``resume=True`` continues bit for bit: on CPU with the same seed the final weights equal an uninterrupted
run's. Open the tracker with ``Tracker(run_dir, resume_offset=tracker_resume_offset(run_dir))`` so lines
logged after the checkpoint are dropped. ``stop_after`` ends a call after that many updates as if it were
killed (nothing extra is saved), which is how tests interrupt a run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from pretrain.cpt.data import MixtureSampler, TokenDataset
from pretrain.cpt.distributed import Parallel
from pretrain.cpt.perf import flops_per_token, peak_flops
from pretrain.cpt.schedules import ScheduleConfig, anneal_start, build_scheduler
from retain.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from retain.errors import ConfigError, TrainingDiverged
from retain.metrics import stability_gap
from retain.seeding import derive_seed, rng_state, seed_everything, set_rng_state
from retain.tracking import Tracker, progress_bar

CHECKPOINTS = "checkpoints"
PRE_ANNEAL = "pre_anneal"  # inherit.from_checkpoint: the previous stage's checkpoint from just before its anneal


@dataclass
class InheritConfig:
    """What a stage takes from the previous stage, or from ``from_checkpoint`` when that is set."""

    weights: bool = True
    """continue from the previous weights; False restarts from the weights the model had when
    ``train_stages`` was called (or keeps the current ones if ``from_checkpoint`` is unset and this is stage 0)"""
    optimizer: bool = True
    """carry AdamW's moment estimates over (the stage's own lr, betas and weight decay still apply)"""
    scheduler: bool = False
    """read this stage's schedule at the position where the previous one stopped instead of at 0 (no re-warm:
    meant for the infinite schedule); False starts the schedule afresh, i.e. re-warms"""
    data_position: bool = False
    """continue the previous sampler's seed and step (the same stream, e.g. a stage that splits a long run);
    False draws this stage's batches from a seed of its own, from step 0"""
    step: bool = True
    """continue the global step (logging x-axis); False restarts it at 0"""
    from_checkpoint: str | None = None
    """a checkpoint folder, or a folder holding ``latest.json`` (a run's ``checkpoints/`` or its run dir);
    inherit from it instead of from the previous stage. ``pre_anneal``: branch from the previous stage's
    checkpoint from just before its anneal (infinite with anneal_steps, or wsd), i.e. continue at the stable
    rate instead of from the annealed weights"""


@dataclass
class StageConfig:
    """One stage (task) of continual pretraining."""

    name: str
    """the stage's name (a row of R)"""
    tokens: int
    """training token budget; steps = tokens // (seq_len * batch_size * grad_accum)"""
    mix: dict[str, float]
    """new-data sources and their sampling weights (normalized)"""
    replay: dict[str, float] = field(default_factory=dict)
    """replayed sources and the exact share of each batch's rows they take"""
    lr: float = 3e-4
    """peak learning rate η_max"""
    schedule: ScheduleConfig | None = None
    """the learning-rate schedule over this stage's steps; None: the run's ``schedule`` (``retain cpt`` fills it
    in; ``train_stages`` uses ``ScheduleConfig()``)"""
    inherit: InheritConfig = field(default_factory=InheritConfig)
    """what carries over from the previous stage"""


@dataclass
class TrainConfig:
    """Optimization settings shared by all stages."""

    seq_len: int = 256
    """tokens per training window (the model sees seq_len inputs and predicts seq_len targets)"""
    batch_size: int = 8
    """windows per micro-batch, over all processes (each of N data-parallel processes takes batch_size/N)"""
    grad_accum: int = 1
    """micro-batches per optimizer update"""
    clip: float = 1.0
    """max global gradient norm (clip_grad_norm_); <= 0 disables clipping"""
    weight_decay: float = 0.1
    """AdamW decoupled weight decay"""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas (0.95 is the usual LLM choice)"""
    checkpoint_every: int = 0
    """write a checkpoint every this many updates within a stage (0: only at stage ends)"""
    log_every: int = 1
    """log train/ and perf/ metrics every this many updates"""
    precision: str = "auto"
    """auto | fp32 | bf16: bf16 autocast (weights, optimizer and the loss stay fp32); auto = bf16 on a CUDA GPU
    that supports it and on a CPU with bf16 instructions (AVX512-BF16/AMX), fp32 elsewhere (emulated bf16 is
    slower than fp32)"""
    compile: bool = False
    """torch.compile the model for training (the first steps pay for compilation)"""
    peak_tflops: float | None = None
    """the accelerator's peak TFLOP/s for perf/mfu; None: known NVIDIA GPUs' bf16 figure, no MFU on CPU"""


@dataclass
class CptEvalConfig:
    """When validation losses are computed during a stage."""

    dense_every: int = 10
    """evaluate every this many updates early in the stage (where re-warming forgets fastest)"""
    dense_until_fraction: float = 0.1
    """the early part of the stage that is evaluated densely"""
    sparse_every: int = 100
    """evaluate every this many updates afterwards"""
    val_batches: int = 4
    """fixed validation batches per source (of TrainConfig.batch_size windows)"""


def stage_steps(stage: StageConfig, train: TrainConfig) -> int:
    """Optimizer updates of ``stage``; ConfigError if its budget is below one update."""
    per_step = train.seq_len * train.batch_size * train.grad_accum
    steps = stage.tokens // per_step
    if steps < 1:
        raise ConfigError(
            f"stage {stage.name!r}: tokens={stage.tokens} is less than one update ({per_step} tokens)",
            "raise the stage's tokens or lower seq_len/batch_size/grad_accum",
        )
    return steps


def is_eval_step(step: int, steps: int, cfg: CptEvalConfig) -> bool:
    """Whether updates ``1..steps`` of a stage end with an evaluation at ``step`` (the stage end is separate)."""
    if step <= cfg.dense_until_fraction * steps:
        return cfg.dense_every > 0 and step % cfg.dense_every == 0
    return cfg.sparse_every > 0 and step % cfg.sparse_every == 0


def native_cpu_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (AVX512-BF16 or AMX): only then is bf16 autocast faster
    than fp32 on CPU (1.4x on the default model here); emulated, it is slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: no cheap, reliable check, so no bf16 by default
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def use_bf16(precision: str, device: torch.device) -> bool:
    """Whether training and evaluation run under bf16 autocast (see ``TrainConfig.precision``)."""
    if precision not in ("auto", "fp32", "bf16"):
        raise ConfigError(f"unknown train.precision={precision!r}", "use auto, fp32 or bf16")
    if precision == "auto":
        if device.type == "cuda":
            return torch.cuda.is_bf16_supported()
        return device.type == "cpu" and native_cpu_bf16()
    return precision == "bf16"


def _autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    parallel: Parallel | None = None,
    bf16: bool = False,
) -> float:
    """Mean token cross-entropy of ``model`` over ``batches`` (every target token weighs the same).

    Data-parallel: each process scores its rows of every batch and the sums are added over processes.
    """
    parallel = parallel or Parallel()
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for inputs, targets in batches:
        inputs, targets = parallel.rows(inputs), parallel.rows(targets)
        with _autocast(device, bf16):
            logits = model(input_ids=inputs.to(device)).logits
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.to(device).flatten(), reduction="sum")
        total += float(loss)
        count += targets.numel()
    model.train(was_training)
    total, count = parallel.sum([total, count])
    return total / count


def tracker_resume_offset(run_dir: str | Path) -> int | None:
    """The tracker byte offset stored in the run's latest checkpoint (None when there is none)."""
    path = latest_checkpoint(Path(run_dir) / CHECKPOINTS)
    if path is None:
        return None
    return int(load_checkpoint(path)[1]["tracker_offset"])


def _resolve_checkpoint(path: str | Path) -> Path:
    path = Path(path)
    for root in (path, path / CHECKPOINTS):
        if (root / "latest.json").exists():
            found = latest_checkpoint(root)
            assert found is not None
            return found
    return path


def _checkpoint_source(stages: list[StageConfig], i: int, ckpt_root: Path) -> Path | None:
    """Where stage ``i`` inherits from: ``inherit.from_checkpoint`` resolved (``pre_anneal``: the previous
    stage's checkpoint from just before its anneal), or None to inherit from the previous stage."""
    name = stages[i].inherit.from_checkpoint
    if not name:
        return None
    if name == PRE_ANNEAL:
        return _resolve_checkpoint(ckpt_root / PRE_ANNEAL / stages[i - 1].name)
    return _resolve_checkpoint(name)


def _check_stages(stages: list[StageConfig], names: list[str], train: TrainConfig) -> list[int]:
    """Each stage's number of updates, after checking what can be checked before anything runs."""
    for i, stage in enumerate(stages):
        unknown = sorted((set(stage.mix) | set(stage.replay)) - set(names))
        if unknown:
            raise ConfigError(f"stage {stage.name!r} names unknown sources {unknown}", f"use some of {names}")
        if stage.inherit.from_checkpoint == PRE_ANNEAL:
            previous = stages[i - 1].schedule if i > 0 else None
            if previous is None or not anneal_start(previous, stage_steps(stages[i - 1], train)):
                raise ConfigError(
                    f"stage {stage.name!r} branches from the pre-anneal checkpoint, but "
                    + ("it is the first stage" if i == 0 else f"stage {stages[i - 1].name!r} has no anneal"),
                    "give the previous stage an infinite schedule with anneal_steps > 0, or a wsd schedule",
                )
    return [stage_steps(stage, train) for stage in stages]


def _shifted(step: int, factor: Any, offset: int) -> float:
    return factor(step + offset)


def _scheduler(optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, steps: int, offset: int) -> LRScheduler:
    """The stage's scheduler, read ``offset`` steps into its schedule (inherit.scheduler) when offset > 0."""
    scheduler = build_scheduler(optimizer, cfg, steps)
    if offset == 0:
        return scheduler
    assert isinstance(scheduler, LambdaLR)  # all of build_scheduler's are
    # partial, not a closure: LambdaLR's state_dict must stay plain data for weights_only loading.
    return LambdaLR(optimizer, partial(_shifted, factor=scheduler.lr_lambdas[0], offset=offset))


def _optimizer(model: torch.nn.Module, lr: float, train: TrainConfig) -> torch.optim.AdamW:
    # The fused kernel (CPU and CUDA) updates all parameters in one pass: ~4x faster than the per-tensor loop
    # on CPU. DTensor parameters (FSDP2) take the multi-tensor path.
    sharded = any(type(p).__name__ == "DTensor" for p in model.parameters())
    return torch.optim.AdamW(
        model.parameters(),
        lr=lr,
        betas=tuple(train.betas),
        weight_decay=train.weight_decay,
        fused=None if sharded else True,
    )


def _take_moments(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict, parallel: Parallel, full: bool
) -> None:
    """Load only the per-parameter state (moments, step counts) of ``state``, keeping this optimizer's
    hyper-parameters: a full load would bring back the old lr and the old scheduler's initial_lr.
    ``full``: ``state`` comes from a checkpoint file (full), not from the previous stage's live optimizer."""
    groups = parallel.optimizer_state(model, optimizer, full=False)["param_groups"]
    parallel.load_optimizer_state(model, optimizer, {"state": state["state"], "param_groups": groups}, full=full)


class _Stage:
    """Where the current stage started: its scores then, and where its evaluations begin in the curves
    (the stability gap is measured against these); checkpointed so a resumed stage measures the same."""

    def __init__(self, start_losses: list[float], start_step: int, curve_start: dict[str, int]):
        self.start_losses, self.start_step, self.curve_start = start_losses, start_step, curve_start

    def state(self) -> dict:
        return {"start_losses": self.start_losses, "start_step": self.start_step, "curve_start": self.curve_start}

    def gaps(self, names: list[str], curves: dict[str, list[list[float]]]) -> dict[str, dict]:
        """Per source: depth of the loss rise above its stage-start value and where it recovered."""
        out = {}
        for j, n in enumerate(names):
            points = curves[n][self.curve_start[n] :]
            steps = [int(step) - self.start_step for step, _ in points]
            out[n] = stability_gap(steps, [loss for _, loss in points], self.start_losses[j], higher_is_better=False)
        return out


def train_stages(
    model: torch.nn.Module,
    sources: dict[str, TokenDataset],
    stages: list[StageConfig],
    train: TrainConfig,
    eval_cfg: CptEvalConfig,
    run_dir: str | Path,
    tracker: Tracker,
    seed: int = 0,
    resume: bool = False,
    stop_after: int | None = None,
    probe: Callable[[torch.nn.Module], dict[str, float]] | None = None,
    progress: bool = False,
    parallel: Parallel | None = None,
) -> dict:
    """Train ``model`` through ``stages`` and return the continual results.

    Returns ``{"sources", "stages", "matrix", "initial", "curves", "stability_gap", "probes", "global_step",
    "stopped"}``: ``matrix`` is R (one row per stage, one column per source in ``sources``' order: validation
    loss after the stage), ``initial`` the losses before stage 0, ``curves`` per source the
    ``[global_step, loss]`` of every evaluation, ``stability_gap`` per stage and source the gap measured
    by ``retain.metrics.stability_gap`` (steps counted from the stage's start), ``probes`` what ``probe(model)``
    returned before stage 0 (``initial``) and after each stage (``stages``).
    ``resume=True`` continues from the latest checkpoint under ``run_dir/checkpoints`` (a fresh start when there
    is none). ``stop_after`` returns after that many updates in this call, saving nothing more (as if killed);
    the result then has ``stopped=True`` and only the rows finished so far. ``parallel`` (from
    ``distributed.init_parallel``) trains data-parallel; only its main process writes checkpoints.
    """
    parallel = parallel or Parallel()
    names = list(sources)
    steps_of = _check_stages(stages, names, train)
    parallel.check_batch(train.batch_size)
    ckpt_root = Path(run_dir) / CHECKPOINTS
    device = next(model.parameters()).device
    bf16 = use_bf16(train.precision, device)
    flops_token = flops_per_token(model, train.seq_len)
    peak = peak_flops(device, train.peak_tflops)
    start_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    train_model = parallel.wrap(model)  # FSDP2 shards `model` in place; DDP wraps it
    forward = torch.compile(train_model) if train.compile else train_model
    val = {n: sources[n].val_batches(train.seq_len, train.batch_size, eval_cfg.val_batches) for n in names}

    def eval_all(global_step: int) -> list[float]:
        losses = [evaluate(train_model, val[n], parallel, bf16) for n in names]
        metrics = {}
        for n, loss in zip(names, losses):
            metrics[f"eval/{n}/loss"] = loss
            metrics[f"eval/{n}/perplexity"] = math.exp(min(loss, 50.0))  # capped: exp overflows on a diverged run
            curves[n].append([global_step, loss])
        tracker.log(metrics, global_step)
        return losses

    def run_probe(global_step: int) -> dict[str, float]:
        if probe is None:
            return {}
        values = probe(model)
        tracker.log({f"eval/{k}": v for k, v in values.items()}, global_step)
        return values

    saved = latest_checkpoint(ckpt_root) if resume else None
    if saved is not None:
        weights, state, _, _ = load_checkpoint(saved)
        parallel.load_model_state(model, weights)
        R, initial, curves, gaps, probes = state["R"], state["initial"], state["curves"], state["gaps"], state["probes"]
        global_step, resume_at = state["global_step"], state
        set_rng_state(state["rng"])
    else:
        seed_everything(seed)
        R, curves, gaps, global_step, resume_at = [], {n: [] for n in names}, [], 0, None
        source = _checkpoint_source(stages, 0, ckpt_root) if stages else None
        if source is not None and stages[0].inherit.weights:
            # `initial` is what stage 0 starts from, so the checkpoint's weights are loaded before it.
            parallel.load_model_state(model, load_checkpoint(source)[0])
        initial = eval_all(0)
        probes = {"initial": run_probe(0), "stages": []}

    optimizer: torch.optim.Optimizer | None = None
    scheduler: LRScheduler | None = None
    sampler: MixtureSampler | None = None
    sched_pos = 0  # schedule position where the previous stage stopped (inherit.scheduler)
    done_here = 0  # updates run in this call (stop_after)
    done_before = sum(steps_of[: resume_at["stage"]]) + resume_at["stage_step"] if resume_at else 0
    bar = progress_bar(sum(steps_of), progress and parallel.is_main, desc="cpt", unit="update", initial=done_before)

    for i, stage in enumerate(stages):
        steps = steps_of[i]
        if resume_at is not None and i < resume_at["stage"]:
            continue  # finished before the checkpoint; its results are in R
        resuming = resume_at is not None and i == resume_at["stage"]
        inh = stage.inherit
        # Where inherited things come from: a named checkpoint, or the live objects of the previous stage.
        src_opt = parallel.optimizer_state(model, optimizer, full=False) if optimizer is not None else None
        src_full = False  # src_opt is this run's live (per-process) state, not a checkpoint's
        src_pos = sched_pos
        src_sampler = sampler.state_dict() if sampler is not None else None
        source = _checkpoint_source(stages, i, ckpt_root)
        if source is not None and not resuming:
            c_weights, c_state, _, _ = load_checkpoint(source)
            if inh.weights and i > 0:  # stage 0's were loaded before `initial`
                parallel.load_model_state(model, c_weights)
            src_opt, src_full = c_state.get("optimizer"), True
            src_pos = c_state.get("sched_offset", 0) + c_state.get("scheduler", {}).get("last_epoch", 0)
            src_sampler = c_state.get("sampler")
            if inh.step and inh.from_checkpoint != PRE_ANNEAL:  # a branch within this run keeps counting on
                global_step = int(c_state.get("global_step", 0))
        elif i > 0 and not resuming and not inh.weights:
            parallel.load_model_state(model, start_weights)
        if not inh.step and not resuming:
            global_step = 0

        offset = src_pos if inh.scheduler else 0
        data_seed, data_step = derive_seed(seed, "data", i), 0
        if inh.data_position and src_sampler is not None:
            data_seed, data_step = int(src_sampler["seed"]), int(src_sampler["step"])
        if resuming:
            offset, data_seed = resume_at["sched_offset"], int(resume_at["sampler"]["seed"])

        optimizer = _optimizer(model, stage.lr, train)
        if inh.optimizer and src_opt is not None and not resuming:
            _take_moments(model, optimizer, src_opt, parallel, full=src_full)
        schedule = stage.schedule or ScheduleConfig()
        scheduler = _scheduler(optimizer, schedule, steps, offset)
        anneal_at = anneal_start(schedule, steps)
        stage_sources = {n: sources[n] for n in [*stage.mix, *stage.replay]}
        sampler = MixtureSampler(
            stage_sources,
            stage.mix,
            train.seq_len,
            train.batch_size * train.grad_accum,  # one sampler batch per update, split into micro-batches below
            seed=data_seed,
            replay=stage.replay,
        )
        sampler.step = data_step
        step = 0
        if resuming:
            parallel.load_optimizer_state(model, optimizer, resume_at["optimizer"])
            scheduler.load_state_dict(resume_at["scheduler"])
            sampler.load_state_dict(resume_at["sampler"])
            step = int(resume_at["stage_step"])
            current = _Stage(**resume_at["current"])
        else:
            # The stability gap is measured from where the stage starts: the previous row of R, unless the
            # weights just changed (from a checkpoint, or back to the start), which needs an evaluation here.
            moved = i > 0 and (source is not None or not inh.weights)
            start = eval_all(global_step) if moved else (R[i - 1] if i > 0 else initial)
            current = _Stage(list(start), global_step, {n: len(curves[n]) for n in names})
        sched_pos = offset

        # Bound now, so the checkpoint saves this stage's objects (R, initial and curves are mutated in place).
        checkpoint = partial(
            _save,
            root=ckpt_root,
            model=model,
            parallel=parallel,
            tracker=tracker,
            names=names,
            stage_name=stage.name,
            stage_index=i,
            optimizer=optimizer,
            scheduler=scheduler,
            offset=offset,
            sampler=sampler,
            current=current,
            results={"R": R, "initial": initial, "curves": curves, "gaps": gaps, "probes": probes},
        )

        train_model.train()
        while step < steps:
            if stop_after is not None and done_here >= stop_after:
                bar.close()
                return _result(names, stages, R, initial, curves, gaps, probes, global_step, stopped=True)
            t0 = time.perf_counter()
            inputs, targets = sampler.next_batch()
            lr = scheduler.get_last_lr()[0]  # the rate this update uses
            total = 0.0
            micro = list(zip(inputs.chunk(train.grad_accum), targets.chunk(train.grad_accum)))
            for k, (x, y) in enumerate(micro):
                x, y = parallel.rows(x).to(device), parallel.rows(y).to(device)
                with parallel.gradient_sync(train_model, sync=k == len(micro) - 1):
                    with _autocast(device, bf16):
                        logits = forward(input_ids=x).logits
                    loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
                    (loss / train.grad_accum).backward()  # mean over micro-batches = the full batch's mean
                total += loss.item() / train.grad_accum
            if not math.isfinite(total):
                raise TrainingDiverged(
                    f"training diverged: loss {total} at update {step + 1} of stage {stage.name!r} (lr {lr:.3g})",
                    f"lower stages.{i}.lr or raise the schedule's warmup_steps (or use train.precision=fp32); "
                    "the last checkpoint is kept in checkpoints/",
                )
            if train.clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), train.clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            global_step += 1
            done_here += 1
            bar.update(1)
            if step % train.log_every == 0:
                total = parallel.sum([total])[0] / parallel.world  # each process saw its rows
                tokens_per_s = inputs.numel() / max(time.perf_counter() - t0, 1e-9)
                perf = {"perf/tokens_per_second": tokens_per_s, "perf/tflops": tokens_per_s * flops_token / 1e12}
                if peak:
                    perf["perf/mfu"] = tokens_per_s * flops_token / (peak * parallel.world)
                if device.type == "cuda":
                    perf["perf/max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
                tracker.log({"train/loss": total, "train/lr": lr, **perf}, global_step)
                bar.set_postfix(stage=stage.name, loss=f"{total:.3f}", refresh=False)
            if step < steps and is_eval_step(step, steps, eval_cfg):
                eval_all(global_step)
            if anneal_at and step == anneal_at:
                checkpoint(step=step, global_step=global_step, root=ckpt_root / PRE_ANNEAL / stage.name, keep=1)
            if train.checkpoint_every > 0 and step % train.checkpoint_every == 0 and step < steps:
                checkpoint(step=step, global_step=global_step)
        sched_pos = offset + steps
        if len(R) <= i:  # not yet recorded (a resume from this stage's end checkpoint has it)
            R.append(eval_all(global_step))
            gaps.append(current.gaps(names, curves))
            tracker.log({f"eval/{n}/stability_gap_depth": gap["depth"] for n, gap in gaps[-1].items()}, global_step)
            probes["stages"].append(run_probe(global_step))
            checkpoint(step=step, global_step=global_step)
        resume_at = None if resuming else resume_at
    bar.close()
    return _result(names, stages, R, initial, curves, gaps, probes, global_step, stopped=False)


def _save(
    root: Path,
    model: torch.nn.Module,
    parallel: Parallel,
    tracker: Tracker,
    names: list[str],
    stage_name: str,
    stage_index: int,
    optimizer: torch.optim.Optimizer,
    scheduler: LRScheduler,
    offset: int,
    sampler: MixtureSampler,
    current: _Stage,
    results: dict,
    step: int,
    global_step: int,
    keep: int = 2,
) -> None:
    """A checkpoint holding everything the rest of the run depends on (see the module docstring).

    Every process takes part (gathering sharded state is a collective); only the main one writes.
    """
    weights = parallel.model_state(model)
    state = {
        "stage": stage_index,
        "stage_step": step,
        "global_step": global_step,
        "optimizer": parallel.optimizer_state(model, optimizer),
        "scheduler": scheduler.state_dict(),
        "sched_offset": offset,
        "sampler": sampler.state_dict(),
        "current": current.state(),
        **results,
        "tracker_offset": tracker.offset(),
        "rng": rng_state(),
    }
    if parallel.is_main:
        meta = {"stage": stage_name, "stage_index": stage_index, "stage_step": step, "sources": names}
        save_checkpoint(root, global_step, weights, state, meta=meta, keep=keep)
    parallel.barrier()  # nobody reads a checkpoint (resume, from_checkpoint) before it exists


def _result(names, stages, R, initial, curves, gaps, probes, global_step, stopped: bool) -> dict:
    return {
        "sources": list(names),
        "stages": [s.name for s in stages],
        "matrix": [list(row) for row in R],
        "initial": list(initial),
        "curves": curves,
        "stability_gap": list(gaps),
        "probes": probes,
        "global_step": global_step,
        "stopped": stopped,
    }
