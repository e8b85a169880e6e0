"""Learning-rate schedules, one task (a CPT stage's token budget, an offline task's updates) at a time.

A stage builds its own scheduler over its own budget ``total_steps``. Four shapes, all multipliers of the
optimizer's learning rate η_max:

- ``cosine``: linear warmup from 0, cosine decay to ``min_lr_ratio``. Building it again for the next stage
  *re-warms* and *re-decays* (Gupta et al. 2023; Ibrahim et al. 2024), which is the baseline those papers
  recommend together with replay.
- ``wsd``: warmup-stable-decay; the decay occupies the last ``decay_fraction`` of the stage.
- ``constant``: linear warmup, then η_max.
- ``hold``: no warmup, the rate the previous stage ended at, held (the true "no re-warm" arm of Gupta et al.
  2023: the learner, not the schedule, knows that rate — CPT sets the stage's η_max to it).
- ``infinite``: the infinite schedule of Ibrahim et al. 2024 (section 7) and Singh et al. 2025 ("Beyond Cosine
  Decay"): warmup → cooldown to η_const → constant → exponential anneal to η_min over the last
  ``anneal_steps``. Only the first stage warms up and cools down; later stages set ``skip_warmup_and_cooldown``
  and continue at η_const, so no stage re-warms (re-warming is what makes a model forget early in a stage).

Steps count optimizer updates. The multiplier at step ``t`` is the one the ``t``-th update uses (0-based);
the value at ``total_steps`` is what the scheduler holds after the stage's last ``scheduler.step()``.
Resume a stage by building the scheduler from the same config and ``total_steps`` and loading its
``state_dict`` (the multipliers are ``functools.partial`` objects, not closures, so nothing code-like is saved).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import partial

import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from retain.errors import ConfigError

NAMES = ("cosine", "wsd", "constant", "infinite", "hold")
DECAY_TYPES = ("cosine", "linear", "1-sqrt")  # exactly what transformers' get_wsd_schedule accepts
COOLDOWN_TYPES = ("cosine", "inv_sqrt")


@dataclass
class ScheduleConfig:
    """The learning-rate schedule of one continual-pretraining stage (all rates are ratios of η_max)."""

    name: str = "cosine"
    """cosine | wsd | constant | infinite | hold"""
    warmup_fraction: float | None = None
    """linear warmup over this share of the stage's updates (rounded; the papers' unit: Gupta et al. 2023 sweep 0,
    0.5, 1 and 2%), unless ``warmup_steps`` is set"""
    warmup_steps: int | None = None
    """linear warmup from 0 to η_max, in optimizer steps; when set it overrides ``warmup_fraction`` (None: the
    fraction's, or no warmup without one). Ignored by infinite when skip_warmup_and_cooldown"""
    min_lr_ratio: float = 0.1
    """η_min/η_max in (0, 1]: where cosine and wsd end and where the infinite schedule's anneal ends
    (0.1 is the usual LLM choice, e.g. 3e-4 → 3e-5 in Ibrahim et al. 2024)"""
    decay_fraction: float = 0.1
    """wsd: the decay phase's share of the stage, in (0, 1] (Hägele et al. 2024 use 10-20%)"""
    decay_type: str = "1-sqrt"
    """wsd decay shape: cosine | linear | 1-sqrt (transformers' names; Hägele et al. 2024 find 1-sqrt best)"""
    cooldown_steps: int = 0
    """infinite: steps of the cooldown from η_max to η_const, right after warmup"""
    cooldown_type: str = "cosine"
    """infinite cooldown shape: cosine | inv_sqrt"""
    inv_sqrt_alpha: float = 10.0
    """infinite, inv_sqrt cooldown: steepness α of h(x) = 1/sqrt(1+αx) - 1 (> 0; larger drops faster early).
    10 is this module's choice: it gives a visibly inverse-square-root shape (42% of the drop in the first
    10% of the cooldown); it is not a value taken from the papers"""
    const_lr_ratio: float = 0.55
    """infinite: η_const/η_max in (0, 1], the rate held across stages (Ibrahim et al. 2024 hold 1.65e-4 after
    a 3e-4 peak, i.e. 0.55); ignored when const_lr is set"""
    const_lr: float | None = None
    """infinite: η_const as an absolute rate (<= the stage's η_max) instead of a ratio of it"""
    anneal_steps: int = 0
    """infinite: K, the last steps of the stage that anneal η_const → η_min exponentially; 0 = no anneal in
    this stage (anneal only before a checkpoint you mean to evaluate or release)"""
    skip_warmup_and_cooldown: bool = False
    """infinite only: start this stage at η_const (every stage after the first), with no warmup or cooldown"""


def resolved(cfg: ScheduleConfig, total_steps: int, base_lr: float | None = None) -> ScheduleConfig:
    """``cfg`` with what depends on the stage made concrete: ``warmup_steps`` (from ``warmup_fraction`` when it is
    None), and ``const_lr_ratio`` from an absolute ``const_lr`` (given the stage's η_max ``base_lr``)."""
    if cfg.warmup_fraction is not None and not 0 <= cfg.warmup_fraction < 1:
        raise ConfigError(f"warmup_fraction={cfg.warmup_fraction} is not in [0, 1)", "use e.g. 0.01 (1% of the stage)")
    out = dataclasses.replace(cfg)
    if cfg.warmup_steps is None:
        out.warmup_steps = round(cfg.warmup_fraction * total_steps) if cfg.warmup_fraction is not None else 0
    if cfg.const_lr is not None and base_lr is not None:
        if not 0 < cfg.const_lr <= base_lr:
            raise ConfigError(
                f"const_lr={cfg.const_lr} is not in (0, η_max={base_lr}]", "use 0 < const_lr <= the stage's lr"
            )
        out.const_lr_ratio, out.const_lr = cfg.const_lr / base_lr, None
    return out


def check_schedule(cfg: ScheduleConfig, total_steps: int) -> None:
    """Raise ``ConfigError`` (one line: the field and the fix) unless ``cfg`` can schedule ``total_steps``.

    ``build_scheduler`` calls it; call it yourself to fail before anything is written.
    """
    if cfg.name not in NAMES:
        raise ConfigError(f"unknown schedule name={cfg.name!r}", f"use one of {', '.join(NAMES)}")
    if total_steps < 1:
        raise ConfigError(f"total_steps={total_steps}: a stage needs at least one step", "train for >= 1 step")
    cfg = resolved(cfg, total_steps)
    if cfg.name == "hold" and cfg.warmup_steps:
        raise ConfigError("schedule name=hold does not warm up", "set warmup_steps=0 (and warmup_fraction=null)")
    for field in ("warmup_steps", "cooldown_steps", "anneal_steps"):
        if getattr(cfg, field) < 0:
            raise ConfigError(f"{field}={getattr(cfg, field)} is negative", f"use {field} >= 0")
    for field in ("min_lr_ratio", "const_lr_ratio", "decay_fraction"):
        value = getattr(cfg, field)
        if not 0.0 < value <= 1.0:
            raise ConfigError(f"{field}={value} is outside (0, 1]", f"use 0 < {field} <= 1")
    if cfg.decay_type not in DECAY_TYPES:
        raise ConfigError(f"unknown decay_type={cfg.decay_type!r}", f"use one of {', '.join(DECAY_TYPES)}")
    if cfg.cooldown_type not in COOLDOWN_TYPES:
        raise ConfigError(f"unknown cooldown_type={cfg.cooldown_type!r}", f"use one of {', '.join(COOLDOWN_TYPES)}")
    if cfg.inv_sqrt_alpha <= 0:
        raise ConfigError(f"inv_sqrt_alpha={cfg.inv_sqrt_alpha} is not positive", "use inv_sqrt_alpha > 0")
    # Silently ignoring it would re-warm a later stage, the very thing the flag is meant to avoid.
    if cfg.skip_warmup_and_cooldown and cfg.name != "infinite":
        raise ConfigError(
            f"skip_warmup_and_cooldown applies to the infinite schedule, not name={cfg.name!r}",
            "use name=infinite, or skip_warmup_and_cooldown=false",
        )

    if cfg.name == "infinite":
        warmup, cooldown = _warmup_and_cooldown(cfg)
        if warmup + cooldown + cfg.anneal_steps > total_steps:
            raise ConfigError(
                f"warmup_steps + cooldown_steps + anneal_steps = {warmup + cooldown + cfg.anneal_steps} "
                f"exceeds total_steps={total_steps}",
                "shorten the phases or train the stage longer",
            )
        # The anneal goes from η_const down to η_min; upwards it would undo what it is for.
        # (an absolute const_lr is checked where η_max is known: build_scheduler resolves it first)
        if cfg.anneal_steps > 0 and cfg.const_lr is None and cfg.min_lr_ratio > cfg.const_lr_ratio:
            raise ConfigError(
                f"min_lr_ratio={cfg.min_lr_ratio} is above const_lr_ratio={cfg.const_lr_ratio}",
                "use min_lr_ratio <= const_lr_ratio",
            )
    elif cfg.name == "wsd":
        decay = _wsd_decay_steps(cfg, total_steps)
        if cfg.warmup_steps + decay > total_steps:
            raise ConfigError(
                f"warmup_steps + decay steps = {cfg.warmup_steps} + {decay} exceeds total_steps={total_steps}",
                "lower warmup_steps or decay_fraction",
            )
    elif cfg.warmup_steps > total_steps:
        raise ConfigError(
            f"warmup_steps={cfg.warmup_steps} exceeds total_steps={total_steps}", "use warmup_steps <= total_steps"
        )


def _warmup_and_cooldown(cfg: ScheduleConfig) -> tuple[int, int]:
    """The infinite schedule's warmup and cooldown lengths in this stage (none after the first stage)."""
    if cfg.skip_warmup_and_cooldown:
        return 0, 0
    return cfg.warmup_steps, cfg.cooldown_steps


def _wsd_decay_steps(cfg: ScheduleConfig, total_steps: int) -> int:
    # At least one step, so a short stage still ends at min_lr_ratio instead of jumping there.
    return max(1, round(cfg.decay_fraction * total_steps))


def anneal_start(cfg: ScheduleConfig, total_steps: int) -> int | None:
    """The update at which the schedule starts its final decay to η_min (infinite's anneal, wsd's decay),
    or None when it has none: the step before it is the *pre-anneal* checkpoint that later stages may branch
    from (continue at the stable rate on new data, instead of from an annealed model)."""
    cfg = resolved(cfg, total_steps)
    if cfg.name == "infinite" and cfg.anneal_steps > 0:
        return total_steps - cfg.anneal_steps
    if cfg.name == "wsd":
        return total_steps - _wsd_decay_steps(cfg, total_steps)
    return None


def infinite_lr_factor(step: int, cfg: ScheduleConfig, total_steps: int) -> float:
    """The infinite schedule's multiplier of η_max at ``step`` of a stage of ``total_steps`` (a pure function).

    With W warmup, C cooldown and K anneal steps, T = total_steps, c = const_lr_ratio, m = min_lr_ratio:

    - warmup,   0 <= t < W:        t / W
    - cooldown, W <= t < W + C:    p = (t - W) / C;
      cosine:   c + (1 - c) (1 + cos(pi p)) / 2;  inv_sqrt: 1 + (c - 1) h(p) / h(1), h(x) = 1/sqrt(1 + alpha x) - 1
    - constant, W + C <= t < T - K: c
    - anneal,   T - K <= t <= T:   c (m / c) ** ((t - (T - K)) / K), so c at its start and m at T;
      the ratio of consecutive steps is the constant (m / c) ** (1 / K): exponential decay.

    Past T it stays at the stage's last value. ``skip_warmup_and_cooldown`` makes W = C = 0.
    Assumes ``check_schedule(cfg, total_steps)`` passed.
    """
    warmup, cooldown = _warmup_and_cooldown(cfg)
    const, lowest = cfg.const_lr_ratio, cfg.min_lr_ratio
    anneal_start = total_steps - cfg.anneal_steps
    if step < warmup:
        return step / warmup
    if step < warmup + cooldown:
        progress = (step - warmup) / cooldown
        if cfg.cooldown_type == "cosine":
            return const + (1.0 - const) * 0.5 * (1.0 + math.cos(math.pi * progress))

        def h(x: float) -> float:
            return 1.0 / math.sqrt(1.0 + cfg.inv_sqrt_alpha * x) - 1.0

        return 1.0 + (const - 1.0) * h(progress) / h(1.0)
    if cfg.anneal_steps == 0 or step < anneal_start:
        return const
    k = min(step, total_steps) - anneal_start
    return const * (lowest / const) ** (k / cfg.anneal_steps)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: ScheduleConfig, total_steps: int) -> LRScheduler:
    """A per-step scheduler for one stage of ``total_steps`` optimizer updates, over the optimizer's lr (η_max).

    Call ``optimizer.step()`` then ``scheduler.step()`` once per update. cosine, wsd and constant are
    transformers' own schedules (so runs compare with HF Trainer runs); infinite is a ``LambdaLR`` over
    ``infinite_lr_factor``. Note transformers' wsd warms up from min_lr_ratio, not from 0.
    Raises ``ConfigError`` for values that cannot work (see ``check_schedule``).
    """
    # imported here: transformers takes seconds to import, and only these three schedules need it
    from transformers.optimization import (
        get_constant_schedule_with_warmup,
        get_cosine_with_min_lr_schedule_with_warmup,
        get_wsd_schedule,
    )

    cfg = resolved(cfg, total_steps, optimizer.param_groups[0]["lr"])  # an absolute const_lr as its ratio
    check_schedule(cfg, total_steps)
    if cfg.name == "cosine":
        return get_cosine_with_min_lr_schedule_with_warmup(
            optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=total_steps, min_lr_rate=cfg.min_lr_ratio
        )
    if cfg.name == "wsd":
        return get_wsd_schedule(
            optimizer,
            num_warmup_steps=cfg.warmup_steps,
            num_decay_steps=_wsd_decay_steps(cfg, total_steps),
            num_training_steps=total_steps,
            decay_type=cfg.decay_type,
            min_lr_ratio=cfg.min_lr_ratio,
        )
    if cfg.name in ("constant", "hold"):
        return get_constant_schedule_with_warmup(optimizer, num_warmup_steps=cfg.warmup_steps)
    return LambdaLR(optimizer, partial(infinite_lr_factor, cfg=cfg, total_steps=total_steps))


def lr_at(cfg: ScheduleConfig, total_steps: int, base_lr: float, steps: list[int] | range) -> list[float]:
    """The learning rate at each of ``steps`` of a stage whose peak is ``base_lr`` (for plots and tests).

    Builds the real scheduler on a throwaway optimizer and evaluates its own multiplier at each step, so the
    values are those that stepping it yields (O(1) per step, however far the step).
    """
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base_lr)
    scheduler = build_scheduler(optimizer, cfg, total_steps)
    assert isinstance(scheduler, LambdaLR)  # all four are: LambdaLR sets lr = base_lr * multiplier(step)
    factor = scheduler.lr_lambdas[0]
    return [base_lr * float(factor(step)) for step in steps]
