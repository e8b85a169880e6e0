"""Learning-rate schedules of LLM continual pretraining: every phase against its formula computed by hand,
re-warming across stages, bad configs as one-line ConfigErrors, and real AdamW stepping without warnings."""

import io
import math
import warnings

import pytest
import torch

from retain.errors import ConfigError
from retain.training.schedules import (
    ScheduleConfig,
    anneal_start,
    build_scheduler,
    check_schedule,
    infinite_lr_factor,
    lr_at,
    resolved,
)

ETA = 3e-4  # η_max
T = 100

# warmup 0-10, cooldown 10-30, constant 30-70, anneal 70-100
INFINITE = dict(
    name="infinite",
    warmup_steps=10,
    cooldown_steps=20,
    const_lr_ratio=0.5,
    min_lr_ratio=0.1,
    anneal_steps=30,
)


def lr(cfg: ScheduleConfig, step: int, total: int = T) -> float:
    return lr_at(cfg, total, ETA, [step])[0]


# ---- infinite ----


def test_infinite_warmup_is_linear_and_reaches_eta_max():
    cfg = ScheduleConfig(**INFINITE)
    assert lr(cfg, 0) == 0.0
    assert lr(cfg, 5) == pytest.approx(0.5 * ETA)
    assert lr(cfg, 10) == pytest.approx(ETA)


def test_infinite_cosine_cooldown_by_hand():
    cfg = ScheduleConfig(**INFINITE, cooldown_type="cosine")
    # mid-cooldown, p = 0.5: c + (1 - c)(1 + cos(pi/2))/2 = 0.5 + 0.25
    assert lr(cfg, 20) == pytest.approx(0.75 * ETA)
    # p = 0.25: 0.5 + 0.5 * (1 + cos(pi/4)) / 2
    assert lr(cfg, 15) == pytest.approx((0.5 + 0.25 * (1 + math.sqrt(2) / 2)) * ETA)
    assert lr(cfg, 30) == pytest.approx(0.5 * ETA)


def test_infinite_inv_sqrt_cooldown_by_hand():
    cfg = ScheduleConfig(**INFINITE, cooldown_type="inv_sqrt", inv_sqrt_alpha=10.0)
    # p = 0.5: h(0.5) = 1/sqrt(6) - 1, h(1) = 1/sqrt(11) - 1; 1 + (0.5 - 1) h(0.5)/h(1) = 0.576406...
    expected = 1 - 0.5 * (1 / math.sqrt(6) - 1) / (1 / math.sqrt(11) - 1)
    assert expected == pytest.approx(0.576406, abs=1e-6)
    assert lr(cfg, 20) == pytest.approx(expected * ETA)
    # steeper than cosine early on: below the cosine curve at the same point
    assert lr(cfg, 20) < lr(ScheduleConfig(**INFINITE), 20)
    assert lr(cfg, 30) == pytest.approx(0.5 * ETA)
    cooldown = lr_at(cfg, T, ETA, range(10, 31))
    assert all(a > b for a, b in zip(cooldown, cooldown[1:]))


def test_infinite_constant_phase_is_eta_const():
    cfg = ScheduleConfig(**INFINITE)
    assert lr_at(cfg, T, ETA, range(30, 71)) == pytest.approx([0.5 * ETA] * 41)


def test_infinite_anneal_is_exponential_from_const_to_min():
    cfg = ScheduleConfig(**INFINITE)
    assert lr(cfg, 70) == pytest.approx(0.5 * ETA)
    assert lr(cfg, 100) == pytest.approx(0.1 * ETA)
    # halfway: c (m/c)^(1/2) = 0.5 sqrt(0.2)
    assert lr(cfg, 85) == pytest.approx(0.5 * math.sqrt(0.2) * ETA)
    anneal = lr_at(cfg, T, ETA, range(70, 101))
    ratios = [b / a for a, b in zip(anneal, anneal[1:])]
    assert ratios == pytest.approx([0.2 ** (1 / 30)] * 30)
    # past the stage's end it holds η_min
    assert lr(cfg, 150) == pytest.approx(0.1 * ETA)


def test_infinite_without_anneal_stays_at_const_to_the_end():
    cfg = ScheduleConfig(**{**INFINITE, "anneal_steps": 0})
    assert lr_at(cfg, T, ETA, [30, 99, 100]) == pytest.approx([0.5 * ETA] * 3)


def test_infinite_factor_is_the_multiplier():
    cfg = ScheduleConfig(**INFINITE)
    assert [infinite_lr_factor(t, cfg, T) * ETA for t in (0, 10, 20, 50, 85, 100)] == pytest.approx(
        lr_at(cfg, T, ETA, [0, 10, 20, 50, 85, 100])
    )


def test_skip_warmup_and_cooldown_starts_at_const():
    cfg = ScheduleConfig(**INFINITE, skip_warmup_and_cooldown=True)
    # warmup_steps and cooldown_steps are ignored: constant until the anneal
    assert lr_at(cfg, T, ETA, [0, 1, 10, 69, 70]) == pytest.approx([0.5 * ETA] * 5)
    assert lr(cfg, 100) == pytest.approx(0.1 * ETA)
    # 110 warmup+cooldown+anneal steps would not fit 100 steps, but skipped phases take none
    check_schedule(
        ScheduleConfig(**{**INFINITE, "warmup_steps": 50, "cooldown_steps": 60}, skip_warmup_and_cooldown=True), T
    )


# ---- cosine, wsd, constant ----


def test_cosine_warmup_linear_then_decays_to_min():
    cfg = ScheduleConfig(name="cosine", warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(cfg, T, ETA, range(11)) == pytest.approx([t / 10 * ETA for t in range(11)])
    # halfway through the decay: m + (1 - m)/2
    assert lr(cfg, 55) == pytest.approx((0.1 + 0.9 * 0.5) * ETA)
    assert lr(cfg, T) == pytest.approx(0.1 * ETA)
    decay = lr_at(cfg, T, ETA, range(10, T + 1))
    assert all(a > b for a, b in zip(decay, decay[1:]))


def test_cosine_next_stage_rewarms_on_the_same_optimizer():
    """Stage 2 builds a new cosine schedule on stage 1's optimizer (Adam moments kept): it re-warms from ~0."""
    cfg = ScheduleConfig(name="cosine", warmup_steps=10, min_lr_ratio=0.1)
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=ETA)
    x = torch.randn(8, 2)
    for stage in range(2):
        scheduler = build_scheduler(optimizer, cfg, T)
        seen = []
        for _ in range(T):
            seen.append(optimizer.param_groups[0]["lr"])
            model(x).pow(2).mean().backward()
            optimizer.step()
            optimizer.zero_grad()
            scheduler.step()
        assert seen[0] == pytest.approx(0.0, abs=1e-12), stage
        assert seen[10] == pytest.approx(ETA), stage  # back to η_max: the base is still the peak, not the last lr
        assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1 * ETA), stage


def test_wsd_plateau_then_decay_to_min():
    cfg = ScheduleConfig(name="wsd", warmup_steps=10, decay_fraction=0.2, decay_type="linear", min_lr_ratio=0.1)
    # transformers' wsd warms up from min_lr_ratio: m + (1 - m) t/W
    assert lr(cfg, 0) == pytest.approx(0.1 * ETA)
    assert lr(cfg, 5) == pytest.approx((0.1 + 0.9 * 0.5) * ETA)
    assert lr_at(cfg, T, ETA, range(10, 81)) == pytest.approx([ETA] * 71)
    # decay over the last 20 steps, linear: 1 - p scaled into [m, 1]
    assert lr(cfg, 90) == pytest.approx((0.1 + 0.9 * 0.5) * ETA)
    assert lr(cfg, T) == pytest.approx(0.1 * ETA)


@pytest.mark.parametrize("decay_type", ["cosine", "linear", "1-sqrt"])
def test_wsd_decay_types_end_at_min(decay_type):
    cfg = ScheduleConfig(name="wsd", decay_type=decay_type, min_lr_ratio=0.2)
    decay = lr_at(cfg, T, ETA, range(90, T + 1))
    assert decay[0] == pytest.approx(ETA)
    assert decay[-1] == pytest.approx(0.2 * ETA)
    assert all(a > b for a, b in zip(decay, decay[1:]))


def test_constant_with_and_without_warmup():
    assert lr_at(ScheduleConfig(name="constant"), T, ETA, [0, 50, T]) == pytest.approx([ETA] * 3)
    cfg = ScheduleConfig(name="constant", warmup_steps=4)
    assert lr_at(cfg, T, ETA, [0, 1, 2, 4, 50, T]) == pytest.approx([0, ETA / 4, ETA / 2, ETA, ETA, ETA])


# ---- bad configs ----

BAD = [
    (dict(name="linear"), T, "name"),
    (dict(INFINITE, warmup_steps=40, cooldown_steps=40, anneal_steps=30), T, "anneal_steps"),
    (dict(min_lr_ratio=0.0), T, "min_lr_ratio"),
    (dict(min_lr_ratio=1.5), T, "min_lr_ratio"),
    (dict(INFINITE, const_lr_ratio=0.0), T, "const_lr_ratio"),
    (dict(INFINITE, const_lr_ratio=1.2), T, "const_lr_ratio"),
    (dict(INFINITE, min_lr_ratio=0.6), T, "min_lr_ratio"),  # anneal would go up from 0.5
    (dict(decay_fraction=0.0), T, "decay_fraction"),
    (dict(warmup_steps=-1), T, "warmup_steps"),
    (dict(INFINITE, cooldown_steps=-5), T, "cooldown_steps"),
    (dict(INFINITE, anneal_steps=-1), T, "anneal_steps"),
    (dict(), 0, "total_steps"),
    (dict(name="wsd", decay_type="sqrt"), T, "decay_type"),
    (dict(INFINITE, cooldown_type="linear"), T, "cooldown_type"),
    (dict(INFINITE, inv_sqrt_alpha=0.0), T, "inv_sqrt_alpha"),
    (dict(name="wsd", warmup_steps=95, decay_fraction=0.1), T, "warmup_steps"),
    (dict(name="cosine", warmup_steps=101), T, "warmup_steps"),
    (dict(name="constant", warmup_steps=101), T, "warmup_steps"),
    (dict(name="cosine", skip_warmup_and_cooldown=True), T, "skip_warmup_and_cooldown"),
]


@pytest.mark.parametrize(("fields", "total", "field"), BAD, ids=[f"{b[2]}-{i}" for i, b in enumerate(BAD)])
def test_bad_config_is_a_one_line_config_error(fields, total, field):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=ETA)
    with pytest.raises(ConfigError) as err:
        build_scheduler(optimizer, ScheduleConfig(**fields), total)
    assert field in err.value.problem
    assert err.value.fix
    assert "\n" not in str(err.value)


def test_phases_that_exactly_fill_the_stage_are_fine():
    cfg = ScheduleConfig(**{**INFINITE, "warmup_steps": 30, "cooldown_steps": 40, "anneal_steps": 30})
    assert lr(cfg, 70) == pytest.approx(0.5 * ETA)
    assert lr(cfg, T) == pytest.approx(0.1 * ETA)


# ---- with a real optimizer ----


@pytest.mark.parametrize(
    "cfg",
    [
        ScheduleConfig(name="cosine", warmup_steps=5),
        ScheduleConfig(name="wsd", warmup_steps=5),
        ScheduleConfig(name="constant", warmup_steps=5),
        ScheduleConfig(**INFINITE, cooldown_type="inv_sqrt"),
        ScheduleConfig(**INFINITE, skip_warmup_and_cooldown=True),
    ],
    ids=["cosine", "wsd", "constant", "infinite", "infinite-skip"],
)
def test_adamw_steps_whole_stage_without_warnings(cfg):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=ETA)
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "lr_scheduler.step() before optimizer.step()"
        scheduler = build_scheduler(optimizer, cfg, T)
        used = []
        for _ in range(T):
            used.append(optimizer.param_groups[0]["lr"])
            torch.nn.functional.mse_loss(model(x), y).backward()
            optimizer.step()
            optimizer.zero_grad()
            scheduler.step()
    assert used == pytest.approx(lr_at(cfg, T, ETA, range(T)))
    assert scheduler.get_last_lr()[0] == pytest.approx(lr_at(cfg, T, ETA, [T])[0])


def test_infinite_resumes_from_a_weights_only_state_dict():
    cfg = ScheduleConfig(**INFINITE)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=ETA)
    scheduler = build_scheduler(optimizer, cfg, T)
    for _ in range(75):
        optimizer.step()
        scheduler.step()
    buffer = io.BytesIO()
    torch.save({"scheduler": scheduler.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)

    optimizer2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=ETA)
    optimizer2.load_state_dict(state["optimizer"])
    resumed = build_scheduler(optimizer2, cfg, T)
    resumed.load_state_dict(state["scheduler"])
    optimizer2.step()
    resumed.step()
    assert optimizer2.param_groups[0]["lr"] == pytest.approx(lr(cfg, 76))


# ---- warmup as a fraction, hold, absolute η_const ----


@pytest.mark.parametrize("name", ["cosine", "constant"])
def test_warmup_fraction_resolves_to_steps_of_the_stage(name):
    cfg = ScheduleConfig(name=name, warmup_fraction=0.01)
    assert resolved(cfg, 200).warmup_steps == 2
    assert cfg.warmup_steps is None  # resolved returns a copy
    assert lr_at(cfg, 200, ETA, [0, 1, 2]) == pytest.approx([0.0, ETA / 2, ETA])
    assert lr_at(cfg, 200, ETA, [0])[0] == 0.0
    # the same fraction of a longer stage is a longer warmup
    assert lr_at(cfg, 1000, ETA, [5, 10]) == pytest.approx([ETA / 2, ETA])
    assert resolved(ScheduleConfig(name=name), 200).warmup_steps == 0  # neither set: no warmup


def test_warmup_steps_override_warmup_fraction():
    cfg = ScheduleConfig(name="cosine", warmup_fraction=0.01, warmup_steps=8)
    assert resolved(cfg, 200).warmup_steps == 8
    assert lr_at(cfg, 200, ETA, [2, 4, 8]) == pytest.approx([ETA / 4, ETA / 2, ETA])
    assert resolved(ScheduleConfig(warmup_fraction=0.5, warmup_steps=0), 200).warmup_steps == 0


@pytest.mark.parametrize("fraction", [-0.01, 1.0, 1.5])
def test_warmup_fraction_outside_0_1_is_refused(fraction):
    with pytest.raises(ConfigError, match="warmup_fraction"):
        check_schedule(ScheduleConfig(warmup_fraction=fraction), T)


def test_hold_is_a_constant_multiplier_of_one_without_warmup():
    cfg = ScheduleConfig(name="hold")
    assert lr_at(cfg, 50, ETA, range(51)) == pytest.approx([ETA] * 51)
    assert lr_at(cfg, 50, ETA, [0])[0] == ETA  # no warmup: the very first update runs at the held rate
    assert anneal_start(cfg, 50) is None


@pytest.mark.parametrize("fields", [dict(warmup_steps=3), dict(warmup_fraction=0.1)])
def test_hold_refuses_a_warmup(fields):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=ETA)
    with pytest.raises(ConfigError, match="hold") as err:
        build_scheduler(optimizer, ScheduleConfig(name="hold", **fields), 50)
    assert "warmup" in err.value.fix
    check_schedule(ScheduleConfig(name="hold", warmup_steps=0), 50)  # an explicit 0 is fine


def test_absolute_const_lr_is_the_same_schedule_as_its_ratio():
    phases = dict(name="infinite", warmup_steps=10, cooldown_steps=20, min_lr_ratio=0.1, anneal_steps=30)
    absolute = ScheduleConfig(**phases, const_lr=5e-4)
    ratio = ScheduleConfig(**phases, const_lr_ratio=0.5)
    assert absolute.const_lr_ratio == 0.55  # the default ratio, which const_lr must override
    assert lr_at(absolute, T, 1e-3, range(T + 1)) == pytest.approx(lr_at(ratio, T, 1e-3, range(T + 1)))
    assert lr_at(absolute, T, 1e-3, [50])[0] == pytest.approx(5e-4)
    # absolute: the same η_const whatever the stage's peak
    assert lr_at(absolute, T, 2e-3, [50])[0] == pytest.approx(5e-4)
    skip = ScheduleConfig(name="infinite", const_lr=5e-4, skip_warmup_and_cooldown=True)
    assert lr_at(skip, T, 1e-3, [0, T]) == pytest.approx([5e-4, 5e-4])
    got = resolved(absolute, T, 1e-3)
    assert got.const_lr is None and got.const_lr_ratio == pytest.approx(0.5)


@pytest.mark.parametrize("const_lr", [2e-3, 0.0, -1e-4])
def test_const_lr_outside_0_eta_max_is_refused(const_lr):
    cfg = ScheduleConfig(name="infinite", const_lr=const_lr)
    with pytest.raises(ConfigError, match="const_lr"):
        lr_at(cfg, T, 1e-3, [0])
    assert lr_at(ScheduleConfig(name="infinite", const_lr=1e-3), T, 1e-3, [T]) == pytest.approx([1e-3])  # = η_max


def test_an_absolute_const_lr_below_min_lr_is_refused_like_its_ratio():
    # const_lr 5e-5 of η_max 1e-3 is the ratio 0.05, below min_lr_ratio 0.1: the anneal would go *up*
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    with pytest.raises(ConfigError, match="min_lr_ratio"):
        build_scheduler(optimizer, ScheduleConfig(**{**INFINITE, "const_lr_ratio": 0.05}), T)
    with pytest.raises(ConfigError, match="min_lr_ratio"):
        build_scheduler(optimizer, ScheduleConfig(**INFINITE, const_lr=5e-5), T)
