"""The continual-pretraining learner: a causal LM trained through stages, nanoGPT-style, on the continual runner.

A stage is one task of the continual sequence: a token budget, a data mixture (new sources by weight, replayed
sources by exact ratio), a peak learning rate and its own schedule. ``CptLearner`` implements the runner's
``Learner`` protocol (``retain/learner.py``); the runner (``retain/runner.py``) owns the loop around it:
evaluating every source before training (``initial``), densely early in each stage and sparsely later, into
R's row at each stage end (stages × sources, validation loss, lower is better), the stability gap, probes,
checkpoints and exact resume. What is CPT's own lives here:

1. ``prepare_task``: steps = tokens // (seq_len * batch_size * grad_accum); a fresh AdamW and a scheduler over
   the stage's own steps; ``inherit`` decides what carries over from the previous stage (or ``from_checkpoint``,
   or ``pre_anneal``: the previous stage's checkpoint from just before its anneal);
2. ``train_chunk``: per update, one sampler batch of ``batch_size * grad_accum`` rows split into micro-batches,
   bf16 autocast when asked, gradient clipping, the optimizer and scheduler steps, ``train/`` and ``perf/``
   metrics every ``log_every``; the pre-anneal checkpoint when the schedule's anneal starts;
3. ``evaluate``: the mean token cross-entropy of each source's fixed validation batches.

``state()`` holds the weights, the optimizer, scheduler and sampler states, the stage and step; with the
runner's part of a checkpoint (R, curves, RNG, tracker offset) ``resume=True`` continues bit for bit: on CPU
with the same seed the final weights equal an uninterrupted run's. ``train_stages`` runs stages through the
runner in one call (the API the residual demo, the benchmarks and the tests use).
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
from retain.checkpoint import latest_checkpoint, load_checkpoint, load_latest, save_checkpoint
from retain.errors import CheckpointError, ConfigError, TrainingDiverged
from retain.learner import LearnerState, StepHooks, TaskScore
from retain.methods import make_method
from retain.runner import CHECKPOINTS, Runner, Schedule
from retain.seeding import derive_seed, seed_everything
from retain.tracking import Tracker
from retain.training.distributed import Parallel
from retain.training.optim import adamw, maybe_compile
from retain.training.perf import flops_per_token, peak_flops
from retain.training.precision import autocast, use_bf16
from retain.training.schedules import ScheduleConfig, anneal_start, build_scheduler

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
    """peak learning rate η_max (ignored by schedule name=hold, which holds the previous stage's final rate)"""
    scored_as: str | None = None
    """the source this stage is scored as: R's diagonal entry for it (forgetting and plasticity read it). None: the
    largest ``mix`` entry. Stage i must be scored as source i (the i-th of ``sources``): a mismatch is an error,
    so reordering ``sources`` cannot silently make forgetting wrong"""
    schedule: ScheduleConfig | None = None
    """the learning-rate schedule over this stage's steps; None: the run's ``schedule`` (``retain cpt`` fills it
    in; ``train_stages`` uses ``ScheduleConfig()``)"""
    inherit: InheritConfig = field(default_factory=InheritConfig)
    """what carries over from the previous stage"""
    anneal_after_budget: bool = False
    """an infinite schedule's anneal (anneal_steps) runs after the stage's token budget instead of inside it: the
    next stage branches from the pre-anneal point, so the trajectory that carries on trained on exactly ``tokens``
    (token-matched with a per-stage cosine) and the anneal is a side branch whose updates are counted apart.
    ``retain cpt`` sets it on every infinite stage whose successor branches from its pre-anneal checkpoint"""


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
    """the fixed sample of each source's validation split scored at every evaluation point inside a stage (the
    curves and their stability gaps), in batches of TrainConfig.batch_size windows spread evenly over the split;
    its standard error is logged (eval/<source>/loss_se). Rows of R are scored on the whole split"""
    row_val_batches: int | None = None
    """batches scored for a row of R (before stage 0 and at each stage end); None: the whole validation split"""


def stage_steps(stage: StageConfig, train: TrainConfig) -> int:
    """Optimizer updates of ``stage``; ConfigError if its budget is below one update."""
    per_step = train.seq_len * train.batch_size * train.grad_accum
    steps = stage.tokens // per_step
    if steps < 1:
        raise ConfigError(
            f"stage {stage.name!r}: tokens={stage.tokens} is less than one update ({per_step} tokens)",
            "raise the stage's tokens or lower seq_len/batch_size/grad_accum",
        )
    return steps + branch_anneal_steps(stage)


def branch_anneal_steps(stage: StageConfig) -> int:
    """Updates a stage trains past its budget: its anneal, when it is a branch (``anneal_after_budget``)."""
    schedule = stage.schedule
    if stage.anneal_after_budget and schedule is not None and schedule.name == "infinite":
        return schedule.anneal_steps
    return 0


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    parallel: Parallel | None = None,
    bf16: bool = False,
    with_se: bool = False,
) -> float | tuple[float, float]:
    """Mean token cross-entropy of ``model`` over ``batches`` (every target token weighs the same); with ``with_se``
    also its standard error over windows (windows are equally long: std of the window means / sqrt(windows)).

    Data-parallel: each process scores its rows of every batch and the sums are added over processes.
    """
    parallel = parallel or Parallel()
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count, squares, windows = 0.0, 0, 0.0, 0
    for inputs, targets in batches:
        inputs, targets = parallel.rows(inputs), parallel.rows(targets)
        with autocast(device, bf16):
            logits = model(input_ids=inputs.to(device)).logits
        losses = F.cross_entropy(logits.flatten(0, 1).float(), targets.to(device).flatten(), reduction="none").view_as(
            targets
        )
        total += float(losses.sum())
        count += targets.numel()
        squares += float(losses.mean(1).pow(2).sum())
        windows += targets.shape[0]
    model.train(was_training)
    total, count, squares, windows = parallel.sum([total, count, squares, windows])
    mean = total / count
    if not with_se:
        return mean
    variance = max(squares / windows - mean**2, 0.0) * windows / max(windows - 1, 1)
    return mean, math.sqrt(variance / windows)


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


def check_stages(stages: list[StageConfig], names: list[str], train: TrainConfig) -> list[int]:
    """Each stage's number of updates, after checking what can be checked before anything runs."""
    for i, stage in enumerate(stages):
        unknown = sorted((set(stage.mix) | set(stage.replay)) - set(names))
        if unknown:
            raise ConfigError(f"stage {stage.name!r} names unknown sources {unknown}", f"use some of {names}")
        if i == 0 and stage.schedule is not None and stage.schedule.name == "hold":
            raise ConfigError(
                f"the first stage {stage.name!r} has schedule hold (the previous stage's final rate), but none precedes it",
                "give the first stage a schedule that sets its own rate (cosine, constant, ...)",
            )
        if stage.inherit.from_checkpoint == PRE_ANNEAL:
            previous = stages[i - 1].schedule if i > 0 else None
            if previous is None or not anneal_start(previous, stage_steps(stages[i - 1], train)):
                raise ConfigError(
                    f"stage {stage.name!r} branches from the pre-anneal checkpoint, but "
                    + ("it is the first stage" if i == 0 else f"stage {stages[i - 1].name!r} has no anneal"),
                    "give the previous stage an infinite schedule with anneal_steps > 0, or a wsd schedule",
                )
    return [stage_steps(stage, train) for stage in stages]


def diagonal(stages: list[StageConfig], names: list[str]) -> list[str]:
    """The source each stage is scored as (``scored_as``, else its largest ``mix`` entry), checked against R's
    columns: stage i must be scored as source i (stages past the last source have no diagonal entry), and a
    stage's source must be one it trains on."""
    out = []
    for i, stage in enumerate(stages):
        scored = stage.scored_as or max(stage.mix, key=lambda n: stage.mix[n])
        if scored not in stage.mix:
            raise ConfigError(
                f"stage {stage.name!r} is scored as {scored!r}, which it does not train on (mix {sorted(stage.mix)})",
                f"set stages.{i}.scored_as to one of {sorted(stage.mix)}",
            )
        if i < len(names) and names[i] != scored:
            raise ConfigError(
                f"stage {i} ({stage.name!r}) is scored as source {scored!r}, but R's column {i} is source {names[i]!r}",
                f"list the sources in stage order (source {i} = {scored!r}), or set stages.{i}.scored_as={names[i]}",
            )
        out.append(scored)
    return out


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
    return adamw(model.parameters(), lr, tuple(train.betas), train.weight_decay)


def _take_moments(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict, parallel: Parallel, full: bool
) -> None:
    """Load only the per-parameter state (moments, step counts) of ``state``, keeping this optimizer's
    hyper-parameters: a full load would bring back the old lr and the old scheduler's initial_lr.
    ``full``: ``state`` comes from a checkpoint file (full), not from the previous stage's live optimizer."""
    groups = parallel.optimizer_state(model, optimizer, full=False)["param_groups"]
    parallel.load_optimizer_state(model, optimizer, {"state": state["state"], "param_groups": groups}, full=full)


class CptLearner:
    """Stages of continual pretraining as a ``retain.learner.Learner``; see the module docstring."""

    metric = "loss"
    higher_is_better = False
    unit = "updates"

    def __init__(
        self,
        model: torch.nn.Module,
        sources: dict[str, TokenDataset],
        stages: list[StageConfig],
        train: TrainConfig,
        eval_cfg: CptEvalConfig,
        run_dir: str | Path,
        seed: int = 0,
        probe: Callable[[torch.nn.Module], dict[str, float]] | None = None,
        parallel: Parallel | None = None,
        probe_during: bool = False,
    ):
        self.parallel = parallel or Parallel()
        self.model, self.sources, self.stages, self.train = model, sources, stages, train
        self.tasks = [s.name for s in stages]
        self.eval_tasks = list(sources)
        self.steps_of = check_stages(stages, self.eval_tasks, train)
        self.scored_as = diagonal(stages, self.eval_tasks)
        self.probe_during = probe_during and probe is not None
        self.parallel.check_batch(train.batch_size)
        self.seed, self.probe_fn = seed, probe
        self.ckpt_root = Path(run_dir) / CHECKPOINTS
        self.device = next(model.parameters()).device
        self.bf16 = use_bf16(train.precision, self.device)
        self.flops_token = flops_per_token(model, train.seq_len)
        self.peak = peak_flops(self.device, train.peak_tflops)
        # on the CPU: a second copy of a pretrained model must not take accelerator memory
        self.start_weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        self.train_model = self.parallel.wrap(model)  # FSDP2 shards `model` in place; DDP wraps it
        self.forward = maybe_compile(self.train_model, train.compile)
        self.val = {
            n: sources[n].val_batches(train.seq_len, train.batch_size, eval_cfg.val_batches) for n in self.eval_tasks
        }
        self.row_val = {
            n: sources[n].val_batches(train.seq_len, train.batch_size, eval_cfg.row_val_batches)
            for n in self.eval_tasks
        }
        seed_everything(seed)
        source = _checkpoint_source(stages, 0, self.ckpt_root) if stages else None
        if source is not None and stages[0].inherit.weights:
            # `initial` is what stage 0 starts from, so the checkpoint's weights are loaded before it.
            self.parallel.load_model_state(model, load_checkpoint(source)[0])
        self._global_step = 0
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: LRScheduler | None = None
        self.sampler: MixtureSampler | None = None
        self.stage, self.stage_step, self.offset = -1, 0, 0
        self.stage_lr = stages[0].lr if stages else 0.0  # η_max of the current stage (hold: the previous final rate)
        self.replayed: dict[int, float] = {}
        self.replay_memory: int | None = None
        self.sched_pos = 0  # schedule position where the previous stage stopped (inherit.scheduler)
        self.fresh = False  # reset_model ran: the next stage inherits nothing
        self.hooks, self.bar = StepHooks(), None
        self.log = lambda metrics, step: None

    # -- the protocol ------------------------------------------------------------------------------------

    @property
    def global_step(self) -> int:
        return self._global_step

    def budget(self, task: int) -> int:
        return self.steps_of[task]

    def granularity(self, task: int) -> int:
        return 1

    def bind(self, log, hooks: StepHooks, progress) -> None:
        self.log, self.hooks, self.bar = log, hooks, progress

    def _mixture(
        self, task: int, data_tasks: list[int], replayed: dict[int, float] | None = None, memory: int | None = None
    ) -> tuple[dict[str, float], dict[str, float], dict[str, int]]:
        """The stage's mix and replay. Several data tasks (multitask) train on their mixes merged; a method's
        replay of earlier stages adds each one's mix, at its share of every batch, to the stage's own replay —
        with a ``memory`` budget, from the first ``memory`` tokens of each earlier stage (split over its
        sources by weight)."""
        stage = self.stages[task]
        mix: dict[str, float] = dict(stage.mix)
        if list(data_tasks) != [task]:
            mix = {}
            for k in data_tasks:
                for name, weight in self.stages[k].mix.items():
                    mix[name] = mix.get(name, 0.0) + weight / sum(self.stages[k].mix.values())
        replay = {n: r for n, r in stage.replay.items() if n not in mix}
        kept: dict[str, int] = {}
        for k, share in (replayed or {}).items():
            total = sum(self.stages[k].mix.values())
            for name, weight in self.stages[k].mix.items():
                if name not in mix:  # a source this stage trains on anyway needs no replay
                    replay[name] = replay.get(name, 0.0) + share * weight / total
                    if memory is not None:
                        kept[name] = kept.get(name, 0) + int(memory * weight / total)
        return mix, replay, kept

    def _sampler(self, task: int, data_tasks: list[int], seed: int, replayed=None, memory=None) -> MixtureSampler:
        mix, replay, kept = self._mixture(task, data_tasks, replayed, memory)
        return MixtureSampler(
            {n: self.sources[n] for n in [*mix, *replay]},
            mix,
            self.train.seq_len,
            self.train.batch_size * self.train.grad_accum,  # one sampler batch per update, split into micro-batches
            seed=seed,
            replay=replay,
            replay_tokens=kept,
        )

    def prepare_task(
        self, task: int, data_tasks: list[int], replay: dict[int, float] | None = None, memory: int | None = None
    ) -> bool:
        i, stage, parallel, model = task, self.stages[task], self.parallel, self.model
        inh = stage.inherit
        # Where inherited things come from: a named checkpoint, or the live objects of the previous stage.
        src_opt = parallel.optimizer_state(model, self.optimizer, full=False) if self.optimizer is not None else None
        src_full = False  # src_opt is this run's live (per-process) state, not a checkpoint's
        src_pos = self.sched_pos
        src_sampler = self.sampler.state_dict() if self.sampler is not None else None
        src_lr = self.scheduler.get_last_lr()[0] if self.scheduler is not None and not self.fresh else None
        source = None if self.fresh else _checkpoint_source(self.stages, i, self.ckpt_root)
        if self.fresh:  # a fresh model for this stage (method=reset): nothing of the previous one carries over
            src_opt, src_sampler = None, None
        elif source is not None:
            c_weights, c_state = _learner_part(source)
            if inh.weights and i > 0:  # stage 0's were loaded before `initial`
                parallel.load_model_state(model, c_weights)
            src_opt, src_full = c_state.get("optimizer"), True
            src_pos = c_state.get("sched_offset", 0) + c_state.get("scheduler", {}).get("last_epoch", 0)
            src_sampler = c_state.get("sampler")
            src_lr = (c_state.get("scheduler") or {}).get("_last_lr", [None])[0]
            if inh.step and inh.from_checkpoint != PRE_ANNEAL:  # a branch within this run keeps counting on
                self._global_step = int(c_state.get("global_step", 0))
        if i > 0 and not inh.weights and not self.fresh:  # back to the weights the run started from
            parallel.load_model_state(model, self.start_weights)
        if not inh.step:
            self._global_step = 0

        self.offset = src_pos if inh.scheduler else 0
        data_seed, data_step = derive_seed(self.seed, "data", i), 0
        if inh.data_position and src_sampler is not None:
            data_seed, data_step = int(src_sampler["seed"]), int(src_sampler["step"])
        self.stage_lr = stage.lr
        if stage.schedule is not None and stage.schedule.name == "hold":  # no re-warm: where the last stage ended
            if src_lr is None:
                raise ConfigError(
                    f"stage {stage.name!r} holds the previous stage's final rate, but it starts from a fresh model",
                    "give it a schedule of its own (e.g. constant with stages.<i>.lr)",
                )
            self.stage_lr = float(src_lr)
        self.optimizer = _optimizer(model, self.stage_lr, self.train)
        if inh.optimizer and src_opt is not None:
            _take_moments(model, self.optimizer, src_opt, parallel, full=src_full)
        self.scheduler = _scheduler(self.optimizer, stage.schedule or ScheduleConfig(), self.steps_of[i], self.offset)
        self.replayed = {int(k): float(v) for k, v in (replay or {}).items()}
        self.replay_memory = memory
        self.sampler = self._sampler(i, data_tasks, data_seed, self.replayed, memory)
        self.sampler.step = data_step
        self.stage, self.stage_step, self.data_tasks = i, 0, list(data_tasks)
        self.sched_pos, self.fresh = self.offset, False
        # The stability gap is measured from where the stage starts: the previous row of R, unless the weights
        # just changed (from a checkpoint, or back to the start), which needs an evaluation there.
        return i > 0 and (source is not None or not inh.weights)

    def train_chunk(self, task: int, chunk: int, units: int) -> None:
        stage, train, parallel, device = self.stages[task], self.train, self.parallel, self.device
        steps = self.steps_of[task]
        anneal_at = anneal_start(stage.schedule or ScheduleConfig(), steps)
        self.train_model.train()
        for _ in range(units):
            t0 = time.perf_counter()
            inputs, targets = self.hooks.batch(self, self.sampler.next_batch())
            lr = self.scheduler.get_last_lr()[0]  # the rate this update uses
            total, penalty = 0.0, None
            micro = list(zip(inputs.chunk(train.grad_accum), targets.chunk(train.grad_accum)))
            for k, (x, y) in enumerate(micro):
                x, y = parallel.rows(x).to(device), parallel.rows(y).to(device)
                with parallel.gradient_sync(self.train_model, sync=k == len(micro) - 1):
                    with autocast(device, self.bf16):
                        logits = self.forward(input_ids=x).logits
                    loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
                    penalty = self.hooks.penalty(self)  # a continual method's (L2, EWC, ...), None for most
                    objective = loss if penalty is None else loss + penalty
                    (objective / train.grad_accum).backward()  # mean over micro-batches = the full batch's mean
                total += loss.item() / train.grad_accum
            if not math.isfinite(total):
                raise TrainingDiverged(
                    f"training diverged: loss {total} at update {self.stage_step + 1} of stage {stage.name!r} (lr {lr:.3g})",
                    f"lower stages.{task}.lr or raise the schedule's warmup_steps (or use train.precision=fp32); "
                    "the last checkpoint is kept in checkpoints/",
                )
            if train.clip > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), train.clip)
            self.hooks.transform_gradients(self)
            self.optimizer.step()
            self.hooks.after_step(self)
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.stage_step += 1
            self._global_step += 1
            if self.bar is not None:
                self.bar.update(1)
            if self.stage_step % train.log_every == 0:
                total = parallel.sum([total])[0] / parallel.world  # each process saw its rows
                tokens_per_s = inputs.numel() / max(time.perf_counter() - t0, 1e-9)
                perf = {"perf/tokens_per_second": tokens_per_s, "perf/tflops": tokens_per_s * self.flops_token / 1e12}
                if self.peak:
                    perf["perf/mfu"] = tokens_per_s * self.flops_token / (self.peak * parallel.world)
                if device.type == "cuda":
                    perf["perf/max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
                if penalty is not None:
                    perf["train/penalty"] = float(penalty.detach())
                self.log({"train/loss": total, "train/lr": lr, **perf}, self._global_step)
                if self.bar is not None:
                    self.bar.set_postfix(stage=stage.name, loss=f"{total:.3f}", refresh=False)
            if anneal_at and self.stage_step == anneal_at:
                self._save_pre_anneal(stage.name)
        if self.stage_step == steps:
            self.sched_pos = self.offset + steps

    def _save_pre_anneal(self, stage_name: str) -> None:
        """The branch point of ``inherit.from_checkpoint=pre_anneal``: this stage just before its anneal."""
        state = self.state()  # every process: gathering sharded state is collective
        if self.parallel.is_main:
            meta = {"stage": stage_name, "stage_step": self.stage_step, "sources": self.eval_tasks}
            root = self.ckpt_root / PRE_ANNEAL / stage_name
            save_checkpoint(root, self._global_step, state.weights, {"learner": state.state}, meta=meta, keep=1)
        self.parallel.barrier()

    def evaluate(self, tasks: list[int], weights: dict[int, dict[str, torch.Tensor] | None]) -> dict[int, TaskScore]:
        """The fixed sample of each source's validation split (an evaluation point of a curve)."""
        return self._score(tasks, weights, self.val)

    def evaluate_row(
        self, tasks: list[int], weights: dict[int, dict[str, torch.Tensor] | None]
    ) -> dict[int, TaskScore]:
        """The whole validation split of each source (``eval.row_val_batches``): a row of R."""
        return self._score(tasks, weights, self.row_val)

    def _score(self, tasks: list[int], weights: dict, batches: dict) -> dict[int, TaskScore]:
        out = {}
        own = None
        for j in tasks:
            if weights.get(j) is not None:
                if own is None:
                    own = self.weights()
                self.load_weights(weights[j])
            loss, se = evaluate(self.train_model, batches[self.eval_tasks[j]], self.parallel, self.bf16, with_se=True)
            if weights.get(j) is not None:
                self.load_weights(own)
            # perplexity capped: exp overflows on a diverged run
            out[j] = TaskScore(loss, {"loss": loss, "loss_se": se, "perplexity": math.exp(min(loss, 50.0))})
        return out

    def probe(self) -> dict[str, float]:
        return self.probe_fn(self.model) if self.probe_fn is not None else {}

    def probe_point(self) -> dict[str, float]:
        """Probes at an evaluation point inside a stage (``probe_during``): only of the sources trained so far —
        a domain's knowledge cannot be lost or gained before its own stage, and probing costs forward passes."""
        if not self.probe_during:
            return {}
        trained = self.scored_as[: self.stage + 1]
        sets = getattr(self.probe_fn, "sets", None)
        if sets is None:
            return self.probe_fn(self.model)
        names = [n for n in sets if n in trained]
        return self.probe_fn(self.model, names, seen_only=True) if names else {}

    @staticmethod
    def probe_gap(key: str) -> bool:
        """The probes whose stability gap is measured: accuracies of what was trained, not the chance level or
        the never-seen people's."""
        return key.endswith("knowledge_accuracy") or "/seen/" in key

    def named_parameters(self):
        return self.model.named_parameters()

    def weights(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.parallel.model_state(self.model).items()}

    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        self.parallel.load_model_state(self.model, weights)

    def initial_weights(self, task: int) -> dict[str, torch.Tensor]:
        return self.start_weights

    def reset_model(self, task: int) -> None:
        if self.parallel.sharded:
            raise ConfigError(
                "method=reset keeps a model per stage, which parallel=fsdp does not gather on every process",
                "use parallel=ddp (or none) with method=reset",
            )
        self.parallel.load_model_state(self.model, self.start_weights)
        self.optimizer, self.sampler, self.sched_pos, self.fresh = None, None, 0, True

    def state(self) -> LearnerState:
        state = {
            "stage": self.stage,
            "stage_step": self.stage_step,
            "global_step": self._global_step,
            "optimizer": self.parallel.optimizer_state(self.model, self.optimizer),
            "scheduler": self.scheduler.state_dict(),
            "sched_offset": self.offset,
            "sampler": self.sampler.state_dict(),
            "data_tasks": self.data_tasks,
            "replayed": {str(k): v for k, v in self.replayed.items()},
            "replay_memory": self.replay_memory,
            "stage_lr": self.stage_lr,
        }
        return LearnerState(self.parallel.model_state(self.model), state)

    def load_state(self, state: LearnerState, where: str) -> None:
        s = state.state
        i = int(s["stage"])
        stage = self.stages[i]
        self.parallel.load_model_state(self.model, state.weights)
        self.stage, self.stage_step, self._global_step = i, int(s["stage_step"]), int(s["global_step"])
        self.offset, self.data_tasks = int(s["sched_offset"]), list(s["data_tasks"])
        self.stage_lr = float(s.get("stage_lr", stage.lr))
        self.optimizer = _optimizer(self.model, self.stage_lr, self.train)
        self.scheduler = _scheduler(self.optimizer, stage.schedule or ScheduleConfig(), self.steps_of[i], self.offset)
        self.replayed = {int(k): v for k, v in s.get("replayed", {}).items()}
        self.replay_memory = s.get("replay_memory")
        self.sampler = self._sampler(i, self.data_tasks, int(s["sampler"]["seed"]), self.replayed, self.replay_memory)
        self.parallel.load_optimizer_state(self.model, self.optimizer, s["optimizer"])
        self.scheduler.load_state_dict(s["scheduler"])
        self.sampler.load_state_dict(s["sampler"])
        self.sched_pos = self.offset + self.stage_step if self.stage_step == self.steps_of[i] else self.offset

    # -- what continual-learning methods use (retain/methods) --------------------------------------------

    def regularized_parameters(self, critic: bool = False) -> list[str]:
        return [n for n, p in self.model.named_parameters() if p.requires_grad]

    def method_batches(self, task: int, batches: int, batch_size: int):
        """Windows of the stage's own mixture, from a sampler of their own (the training stream is untouched)."""
        sampler = MixtureSampler(
            {n: self.sources[n] for n in self.stages[task].mix},
            self.stages[task].mix,
            self.train.seq_len,
            batch_size,
            seed=derive_seed(self.seed, "method-batches", task),
        )
        for _ in range(batches):
            inputs, targets = sampler.next_batch()
            yield inputs.to(self.device), targets.to(self.device)

    def _logits(self, inputs: torch.Tensor) -> torch.Tensor:
        with autocast(self.device, self.bf16):
            return self.model(input_ids=inputs).logits.float()

    def log_likelihood(self, batch) -> torch.Tensor:
        """Per window: the mean log-likelihood of its tokens."""
        inputs, targets = batch
        logp = F.log_softmax(self._logits(inputs), -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        return logp.mean(-1)

    def output_norm(self, batch) -> torch.Tensor:
        """Per window: the mean over its tokens of the logits' squared norm."""
        return self._logits(batch[0]).pow(2).sum(-1).mean(-1)

    def loss(self, batch) -> torch.Tensor:
        inputs, targets = batch
        return F.cross_entropy(self._logits(inputs).flatten(0, 1), targets.flatten())

    def memory(self, task: int, size: int) -> dict[str, torch.Tensor]:
        inputs, targets = next(self.method_batches(task, 1, size))
        return {"inputs": inputs.cpu(), "targets": targets.cpu()}

    def memory_batch(self, memories: list[dict[str, torch.Tensor]], size: int, generator: torch.Generator):
        inputs = torch.cat([m["inputs"] for m in memories])
        targets = torch.cat([m["targets"] for m in memories])
        pick = torch.randint(len(inputs), (size,), generator=generator)
        return inputs[pick].to(self.device), targets[pick].to(self.device)

    def retrain(self, task: int, units: int) -> None:
        raise ConfigError(
            "PackNet's pruning and retraining is not built for language models here",
            "use method=ewc, l2, mas, agem or replay with retain cpt",
        )

    def summary(self, results: dict) -> dict[str, Any]:
        out: dict[str, Any] = {"stages": self.tasks, "sources": self.eval_tasks}
        last = results["probes"]["stages"][-1] if results["probes"]["stages"] else {}
        probed = [k.removesuffix("/knowledge_accuracy") for k in last if k.endswith("/knowledge_accuracy")]
        if probed:  # the first probed source (bios in the default run): seen people, never-seen people, chance
            name = probed[0]
            out["knowledge_source"] = name
            out["knowledge_accuracy"] = last[f"{name}/knowledge_accuracy"]
            for key, summary_key in (("unseen_accuracy", "knowledge_unseen_accuracy"), ("chance", "knowledge_chance")):
                if f"{name}/{key}" in last:
                    out[summary_key] = last[f"{name}/{key}"]
        return out

    def close(self) -> None:
        pass


def _learner_part(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Weights and the learner's state of a checkpoint (a run's, or a pre-anneal one)."""
    weights, state, _, _ = load_checkpoint(path)
    if "learner" not in state:
        raise CheckpointError(
            f"checkpoint {path} was not written by retain cpt", "name a run's checkpoints/ folder or run dir"
        )
    return weights, state["learner"]


def runner_schedule(train: TrainConfig, eval_cfg: CptEvalConfig) -> Schedule:
    """When the runner evaluates and checkpoints a stage: densely early, sparsely later, checkpoints apart."""
    return Schedule(
        during="all",
        every=eval_cfg.sparse_every,
        dense_every=eval_cfg.dense_every,
        dense_until_fraction=eval_cfg.dense_until_fraction,
        checkpoint_every=train.checkpoint_every,
    )


def tracker_resume_offset(run_dir: str | Path) -> int | None:
    """The tracker byte offset stored in the run's newest intact checkpoint (None when there is none)."""
    found = load_latest(Path(run_dir) / CHECKPOINTS)
    return None if found is None else int(found[2]["runner"]["tracker_offset"])


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
    method: Any = None,
) -> dict:
    """Train ``model`` through ``stages`` on the continual runner and return the continual results.

    Returns ``{"sources", "stages", "matrix", "initial", "curves", "stability_gap", "probes", "global_step",
    "stopped"}``: ``matrix`` is R (one row per stage, one column per source in ``sources``' order: validation
    loss after the stage), ``initial`` the losses before stage 0, ``curves`` per source the
    ``[global_step, loss]`` of every evaluation, ``stability_gap`` per stage and source the gap measured
    by ``retain.metrics.stability_gap`` (steps counted from the stage's start), ``probes`` what ``probe(model)``
    returned before stage 0 (``initial``) and after each stage (``stages``).
    ``resume=True`` continues from the newest intact checkpoint under ``run_dir/checkpoints`` (a fresh start when
    there is none). ``stop_after`` returns after that many updates in this call, saving nothing more (as if
    killed); the result then has ``stopped=True`` and only the rows finished so far. ``parallel`` (from
    ``distributed.init_parallel``) trains data-parallel; only its main process writes checkpoints. Writes no
    results, summary or report: ``retain cpt`` does (``write_files``).
    """
    learner = CptLearner(model, sources, stages, train, eval_cfg, run_dir, seed, probe, parallel)
    runner = Runner(
        learner,
        make_method(method or {"name": "finetune"}),
        run_dir,
        schedule=runner_schedule(train, eval_cfg),
        resume=resume,
        progress=progress,
        parallel=learner.parallel,
        write_files=False,
        tracker=tracker,
    )
    return as_stage_results(runner.run(stop_after=stop_after))


def as_stage_results(results: dict) -> dict:
    """The runner's results under CPT's names (sources are R's columns, stages its rows)."""
    keys = ("matrix", "initial", "curves", "stability_gap", "probes", "global_step", "stopped")
    return {"sources": results["tasks"], "stages": results["rows"], **{k: results[k] for k in keys}}
