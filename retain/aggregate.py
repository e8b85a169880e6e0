"""Aggregates over seeds with rliable (Agarwal et al., "Deep RL at the Edge of the Statistical Precipice", 2021).

A condition (runs with one label, differing only by seed) gives a score matrix of runs × tasks for each metric
that has per-task values (the final score of every task for ``average``, every earlier task's forgetting for
``forgetting``), and runs × 1 for a metric with one value per run. Each matrix is summarised by its interquartile
mean (IQM: the mean of the middle 50% of all run × task scores) and its mean, each with a confidence interval:
rliable's stratified percentile bootstrap, widened to at least Student's t interval of the seeds' means (with few
seeds a percentile bootstrap cannot reach past the seeds' range). The bootstrap resamples runs within every task,
so a condition whose seeds differ task by task gets an interval wider than the spread of its seeds' means; the t
interval (one value per run: its mean over tasks; half-width t_{(1+c)/2, n-1} · s / √n, centred on the mean or
the IQM) covers what the bootstrap cannot: the seeds' own spread with 2-3 seeds, and seeds that are better or
worse on every task at once, which resampling every task on its own averages away. Probability of improvement
P(X > Y) is the chance that a run of X beats a run of Y on a task, averaged over tasks (ties count half).

Intervals are deterministic: the bootstrap is seeded (``SEED``), and the caller's numpy RNG is left as it was.
The statistics computed on every bootstrap resample are vectorised equivalents of rliable's
``aggregate_iqm`` and ``probability_of_improvement`` (checked equal in the tests); rliable's own functions give the
point estimates, rliable's ``get_interval_estimates`` the resampling and the intervals.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import numpy as np

CONFIDENCE = 0.95  # rliable's default coverage
REPS = 2000  # bootstrap resamples: a report builds in about a second
SEED = 0
METHOD = "rliable stratified bootstrap (percentile), widened to at least Student's t interval of the seeds' means"


def describe(confidence: float = CONFIDENCE) -> str:
    """How intervals are computed, for report headers and console lines."""
    return (
        f"{confidence:.0%} CI: rliable's stratified bootstrap, widened to at least Student's t interval of the seeds' "
        "means"
    )


def score_matrix(rows: Sequence[Sequence[float | None] | float | None]) -> np.ndarray:
    """A runs × tasks matrix from one entry per run: a list of per-task values, or a number (one column).
    Runs without a value (None, or a list holding None) are left out."""
    kept = [[r] if isinstance(r, int | float) else list(r) for r in rows if r is not None]
    kept = [[float(v) for v in r] for r in kept if r and all(v is not None for v in r)]
    if not kept:
        return np.zeros((0, 0))
    if len({len(r) for r in kept}) != 1:
        raise ValueError(f"every run needs the same number of task scores, got {sorted({len(r) for r in kept})}")
    return np.asarray(kept, dtype=np.float64)


def iqm(scores: np.ndarray, axis: int | None = None) -> np.ndarray | float:
    """Interquartile mean, as ``rliable.metrics.aggregate_iqm`` (scipy's 25% trimmed mean) with ``axis=None``;
    with ``axis=0``, of every column on its own. Fast enough to run on thousands of bootstrap resamples."""
    if axis is None:
        flat = np.sort(scores, axis=None)
        cut = int(0.25 * flat.size)
        return float(flat[cut : flat.size - cut].mean())
    ordered = np.sort(scores, axis=0)
    cut = int(0.25 * ordered.shape[0])
    return ordered[cut : ordered.shape[0] - cut].mean(axis=0)


def improvement(x: np.ndarray, y: np.ndarray) -> float:
    """P(X > Y) averaged over tasks, as ``rliable.metrics.probability_of_improvement`` (the Mann-Whitney U
    statistic of every task over runs_x × runs_y, ties counting half)."""
    greater = (x[:, None, :] > y[None, :, :]).mean(axis=(0, 1))
    ties = (x[:, None, :] == y[None, :, :]).mean(axis=(0, 1))
    return float(np.mean(greater + 0.5 * ties))


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """rliable's stratified bootstrap draws its indices from numpy's global RNG (not from a ``random_state``):
    seed it for the call, and give the caller's state back afterwards."""
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(state)


def _intervals(scores, func: Callable, reps: int, confidence: float, seed: int) -> np.ndarray:
    """rliable's interval estimate of ``func`` over ``scores`` (one matrix, or a list of independently resampled
    ones): a 2 × k array of lower and upper bounds."""
    import logging

    from rliable import library as rly  # heavy import (arch, pandas, statsmodels): only when comparing runs

    logging.getLogger("absl").setLevel(logging.WARNING)  # rliable logs "Calculating estimates" at INFO
    with _seeded(seed):
        _, cis = rly.get_interval_estimates({"scores": scores}, func, reps=reps, confidence_interval_size=confidence)
    return np.asarray(cis["scores"], dtype=np.float64).reshape(2, -1)


_KEYS = ("iqm", "iqm_ci_low", "iqm_ci_high", "iqm_widened", "mean", "ci_low", "ci_high", "widened")


def _empty(n: int = 0, tasks: int = 0) -> dict:
    return {"n": n, "tasks": tasks, **dict.fromkeys(_KEYS)}


def t_half_width(scores: np.ndarray, confidence: float = CONFIDENCE) -> float:
    """Half-width of Student's t interval of the runs' means (one value per run: its mean over tasks):
    t_{(1+c)/2, n-1} · s / √n, with s the sample standard deviation; needs two runs or more."""
    from scipy import stats

    means = np.asarray(scores, dtype=np.float64).mean(axis=1)
    n = means.size
    return float(stats.t.ppf((1 + confidence) / 2, n - 1) * means.std(ddof=1) / math.sqrt(n))


def _union(point: float, low: float, high: float, half: float) -> tuple[float, float, bool]:
    """The bootstrap's [low, high] widened to cover [point - half, point + half]; whether it was."""
    return min(low, point - half), max(high, point + half), bool(point - half < low or point + half > high)


def _block_stats(shapes: list[tuple[int, int]]) -> Callable[[np.ndarray], np.ndarray]:
    """The IQM and the mean of every block of columns of a runs × columns matrix (blocks side by side, with the
    given shapes), all at once: ``[iqm_0, .., iqm_k, mean_0, .., mean_k]``, as ``iqm``/``aggregate_mean`` would."""
    n = shapes[0][0]
    width = sum(t for _, t in shapes)
    sizes = np.array([n * t for _, t in shapes])
    cuts = (0.25 * sizes).astype(int)
    pad = n * width  # the index of an +inf: padding sorts last and is never summed
    index = np.full((len(shapes), sizes.max()), pad)
    start = 0
    for k, (_, t) in enumerate(shapes):
        cells = np.arange(n)[:, None] * width + np.arange(start, start + t)[None, :]
        index[k, : sizes[k]] = cells.ravel()
        start += t
    rows = np.arange(len(shapes))

    def stats(scores: np.ndarray) -> np.ndarray:
        values = np.sort(np.append(scores.ravel(), np.inf)[index], axis=1)
        sums = np.zeros((len(shapes), values.shape[1] + 1))
        np.cumsum(values, axis=1, out=sums[:, 1:])
        middle = (sums[rows, sizes - cuts] - sums[rows, cuts]) / (sizes - 2 * cuts)
        return np.concatenate([middle, sums[rows, sizes] / sizes])

    return stats


def estimates(
    matrices: Mapping[Hashable, np.ndarray],
    reps: int = REPS,
    confidence: float = CONFIDENCE,
    seed: int = SEED,
) -> dict[Hashable, dict]:
    """IQM and mean of every runs × tasks matrix, each with a CI: the stratified bootstrap's, widened to at least
    Student's t interval of the runs' means (``t_half_width``, centred on the mean, or on the IQM for the IQM).

    Returns ``{name: {"n", "tasks", "iqm", "iqm_ci_low", "iqm_ci_high", "iqm_widened", "mean", "ci_low",
    "ci_high", "widened"}}``: ``n`` is the number of runs (seeds), ``tasks`` the columns; ``widened`` (``iqm_widened``)
    says the t interval set a bound of the mean's (the IQM's) interval, else both are the bootstrap's. The bounds
    and flags are None with one run (no interval) and every value is None with none. Matrices with the same number
    of runs are resampled in one rliable call: the stratified bootstrap draws every column's runs independently, so
    each matrix gets the interval a call of its own would (up to the random draws), at a fraction of the cost.
    """
    from rliable import metrics as rlm

    out: dict[Hashable, dict] = {}
    batches: dict[int, list[Hashable]] = {}
    for name, m in matrices.items():
        m = np.asarray(m, dtype=np.float64)
        if m.ndim != 2 or m.size == 0:
            out[name] = _empty()
            continue
        n, t = m.shape
        out[name] = {**_empty(n, t), "iqm": float(rlm.aggregate_iqm(m)), "mean": float(rlm.aggregate_mean(m))}
        if n > 1:
            batches.setdefault(n, []).append(name)
    for names in batches.values():
        blocks = [np.asarray(matrices[name], dtype=np.float64) for name in names]
        cis = _intervals(
            np.concatenate(blocks, axis=1), _block_stats([b.shape for b in blocks]), reps, confidence, seed
        )
        for j, (name, block) in enumerate(zip(names, blocks)):
            half = t_half_width(block, confidence)
            entry = out[name]
            iqm_low, iqm_high, iqm_widened = _union(entry["iqm"], float(cis[0, j]), float(cis[1, j]), half)
            low, high, widened = _union(
                entry["mean"], float(cis[0, len(names) + j]), float(cis[1, len(names) + j]), half
            )
            entry.update(
                iqm_ci_low=iqm_low,
                iqm_ci_high=iqm_high,
                iqm_widened=iqm_widened,
                ci_low=low,
                ci_high=high,
                widened=widened,
            )
    return out


def probability_of_improvement(
    groups: Mapping[str, np.ndarray],
    reps: int = REPS,
    confidence: float = CONFIDENCE,
    seed: int = SEED,
) -> list[dict]:
    """P(X > Y) with a stratified-bootstrap CI for every ordered pair of groups.

    ``groups`` are runs × tasks matrices over the same tasks, oriented so that higher is better (negate losses and
    forgetting first). Returns ``[{"x", "y", "p", "ci_low", "ci_high", "n_x", "n_y"}]``; the groups are resampled
    independently (rliable's ``StratifiedIndependentBootstrap``), all pairs from the same resamples.

    The interval is the bootstrap's percentile interval, not widened: with few seeds it has the limitation that
    ``estimates`` corrects for its means, it cannot reach past what resampling those few runs gives (two groups
    of 3 seeds that never overlap get [1, 1], though 3 against 3 is weak evidence). Read it with ``n_x``/``n_y``.
    """
    from rliable import metrics as rlm

    names = list(groups)
    mats = [np.asarray(groups[name], dtype=np.float64) for name in names]
    if len({m.shape[1] for m in mats}) > 1:
        raise ValueError("probability of improvement needs every group scored on the same tasks")
    pairs = [(i, j) for i in range(len(names)) for j in range(len(names)) if i != j]
    if not pairs:
        return []

    starts = np.cumsum([0] + [m.shape[0] for m in mats])[:-1]
    counts = np.array([m.shape[0] for m in mats], dtype=np.float64)
    left, right = (np.array(side) for side in zip(*pairs))

    def func(*scores):
        # every run against every run, task by task (as ``improvement``), summed within each pair of groups
        runs = np.concatenate(scores, axis=0)
        wins = (runs[:, None, :] > runs[None, :, :]) + 0.5 * (runs[:, None, :] == runs[None, :, :])
        totals = np.add.reduceat(np.add.reduceat(wins.mean(axis=2), starts, axis=0), starts, axis=1)
        return (totals / np.outer(counts, counts))[left, right]

    cis = _intervals(mats, func, reps, confidence, seed)
    return [
        {
            "x": names[i],
            "y": names[j],
            "p": float(rlm.probability_of_improvement(mats[i], mats[j])),
            "ci_low": float(cis[0, k]),
            "ci_high": float(cis[1, k]),
            "n_x": int(mats[i].shape[0]),
            "n_y": int(mats[j].shape[0]),
        }
        for k, (i, j) in enumerate(pairs)
    ]


def fmt_interval(value, low=None, high=None, n: int | None = None, digits: int = 3) -> str:
    """``0.500 [0.300, 0.700] n=3``; a value alone with one seed (``0.500 n=1``); ``–`` without one."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–" if not n else f"– n={n}"
    text = f"{value:.{digits}f}"
    if low is not None and high is not None:
        text += f" [{low:.{digits}f}, {high:.{digits}f}]"
    return text + (f" n={n}" if n is not None else "")


def fmt_stats(stats: dict | None, kind: str = "mean", digits: int = 3) -> str:
    """An ``estimates`` entry as text: ``kind`` is ``"mean"`` or ``"iqm"``."""
    if not stats:
        return "–"
    prefix = "" if kind == "mean" else "iqm_"
    return fmt_interval(
        stats.get(kind), stats.get(f"{prefix}ci_low"), stats.get(f"{prefix}ci_high"), stats["n"], digits
    )
