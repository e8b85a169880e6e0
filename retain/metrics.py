"""Continual-learning metrics over a results matrix, shared by RL tasks and text domains.

``R[i, j]`` is the score on task j after training on task i; ``initial[j]`` the score before the
sequence starts. With ``higher_is_better=False`` (losses, perplexity) every difference is oriented
so that positive forgetting means worse. Definitions follow Continual World (Wołczyk et al. 2021),
Chaudhry et al. 2018 (max forgetting) and Lopez-Paz & Ranzato 2017 (backward/forward transfer).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

METRIC_KEYS = ("average", "plasticity", "forgetting", "max_forgetting", "backward_transfer", "forward_transfer")


def _as_matrix(R) -> np.ndarray:
    R = np.asarray(R, dtype=np.float64)
    if R.ndim != 2 or R.shape[0] != R.shape[1]:
        raise ValueError(f"results matrix must be square T×T, got shape {R.shape}")
    if R.shape[0] < 1:
        raise ValueError("results matrix is empty: a sequence needs at least one task")
    if not np.all(np.isfinite(R)):
        raise ValueError("results matrix holds NaN or inf: every task must be evaluated after every task")
    return R


def _as_initial(initial, T: int) -> np.ndarray | None:
    if initial is None:
        return None
    initial = np.asarray(initial, dtype=np.float64)
    if initial.shape != (T,):
        raise ValueError(f"initial scores must have one value per task ({T}), got shape {initial.shape}")
    if not np.all(np.isfinite(initial)):
        raise ValueError("initial scores hold NaN or inf")
    return initial


def continual_metrics(R, initial=None, higher_is_better: bool = True) -> dict:
    """All continual metrics of one run. Keys are ``METRIC_KEYS`` plus ``per_task``.

    Metrics that need at least two tasks (forgetting, transfer) are None for T=1; forward
    transfer is None without ``initial``.
    """
    R = _as_matrix(R)
    T = R.shape[0]
    initial = _as_initial(initial, T)
    sign = 1.0 if higher_is_better else -1.0
    last = R[T - 1]
    diag = np.diag(R)

    # Per task: how much worse the final score is than right after learning it (positive = forgot).
    forgetting_j = sign * (diag - last)
    # Worst drop from the best score seen between learning the task and the end (Chaudhry et al.).
    best = np.max if higher_is_better else np.min
    max_forgetting_j = np.array([sign * (best(R[j : T - 1, j]) - last[j]) for j in range(T - 1)])
    forward_j = None
    if initial is not None and T > 1:
        forward_j = [None] + [float(sign * (R[j - 1, j] - initial[j])) for j in range(1, T)]

    def mean_or_none(values):
        return float(np.mean(values)) if len(values) else None

    return {
        "average": float(last.mean()),
        "plasticity": float(diag.mean()),
        "forgetting": mean_or_none(forgetting_j[: T - 1]),
        "max_forgetting": mean_or_none(max_forgetting_j),
        "backward_transfer": mean_or_none(-forgetting_j[: T - 1]),
        "forward_transfer": mean_or_none([f for f in forward_j if f is not None]) if forward_j else None,
        "per_task": {
            "final": last.tolist(),
            "just_after": diag.tolist(),
            "forgetting": [float(f) for f in forgetting_j[: T - 1]] + [None],
            "max_forgetting": [float(f) for f in max_forgetting_j] + [None],
            "forward_transfer": forward_j,
        },
    }


def _auc(curve) -> float:
    curve = np.asarray(curve, dtype=np.float64)
    if curve.ndim != 1 or curve.size == 0:
        raise ValueError("a learning curve must be a non-empty 1-D sequence of scores")
    return float(curve.mean())


def auc_forward_transfer(
    curves: Sequence[Sequence[float]], reference_curves: Sequence[Sequence[float]]
) -> float | None:
    """Continual World's forward transfer: mean_j (AUC_j − AUC_ref_j) / (1 − AUC_ref_j).

    ``curves[j]`` are task j's scores (in [0, 1], e.g. success) over its own training window in
    the continual run; ``reference_curves[j]`` the same for a model trained on task j alone.
    AUC is the mean of the curve. A task whose reference already reaches AUC 1 is skipped (the
    ratio is undefined); None when every task is skipped.
    """
    if len(curves) != len(reference_curves) or not len(curves):
        raise ValueError(
            f"need one reference curve per task: got {len(curves)} curves, {len(reference_curves)} references"
        )
    values = []
    for curve, ref in zip(curves, reference_curves):
        auc, auc_ref = _auc(curve), _auc(ref)
        if not (0.0 <= auc <= 1.0 and 0.0 <= auc_ref <= 1.0):
            raise ValueError("AUC forward transfer needs scores in [0, 1] (success rates)")
        if auc_ref < 1.0:
            values.append((auc - auc_ref) / (1.0 - auc_ref))
    return float(np.mean(values)) if values else None


def stability_gap(steps: Sequence[int], scores: Sequence[float], start: float, higher_is_better: bool = True) -> dict:
    """The stability gap of one task over one stage (De Lange et al. 2023; Guo et al. 2024 for LLM CPT).

    ``start`` is the score when the stage begins; ``steps``/``scores`` the evaluations during the stage
    (steps counted from the stage's start). Returns ``depth`` (how much worse than ``start`` the worst
    evaluation is; 0 when none is worse), ``worst_step``, ``recovery_step``: the first evaluation after
    the worst one that is back at ``start`` or better (None when the stage ends first, or there is no gap),
    ``end``: how much worse than ``start`` the last evaluation is (< depth: a partial recovery), ``regained``:
    how much of the depth was made up by the last evaluation (depth − max(end, 0)) and ``share_regained``:
    regained / depth (1: back at the start value or better; None without a gap). Every figure is against the
    one baseline ``start``. Recovery is only as fine-grained as the evaluation grid, which is why the trainer
    evaluates densely early.
    """
    sign = 1.0 if higher_is_better else -1.0
    worse = [sign * (start - s) for s in scores]  # > 0: worse than at the start
    end = float(worse[-1]) if worse else 0.0
    if not worse or max(worse) <= 0:
        none = {"worst_step": None, "recovery_step": None, "share_regained": None}
        return {"depth": 0.0, **none, "end": end, "regained": 0.0}
    worst = int(np.argmax(worse))
    recovery = next((int(steps[k]) for k in range(worst + 1, len(worse)) if worse[k] <= 0), None)
    depth = float(worse[worst])
    regained = depth - max(end, 0.0)
    return {
        "depth": depth,
        "worst_step": int(steps[worst]),
        "recovery_step": recovery,
        "end": end,
        "regained": regained,
        "share_regained": regained / depth,
    }


def retention_metrics(rows, initial=None, higher_is_better: bool = True) -> dict:
    """How an extra evaluation set (e.g. the pretraining tasks, L2M's retention) fared over the sequence.

    ``rows`` is T×K: row i the K scores after task i; ``initial`` the K scores before the sequence. Returns
    ``average`` (mean final score), ``initial_average``, ``forgetting`` = mean_k (initial_k − final_k) and
    ``max_forgetting`` = mean_k max_i (initial_k − rows[i][k]) — oriented so positive means worse, None
    without ``initial`` — and ``per_task`` lists. The same differences ``continual_metrics`` takes, measured
    against the start of the sequence because these tasks are never trained in it.
    """
    rows = np.asarray(rows, dtype=np.float64)
    if rows.ndim != 2 or rows.shape[0] < 1:
        raise ValueError(f"retention needs a T×K matrix with T >= 1, got shape {rows.shape}")
    sign = 1.0 if higher_is_better else -1.0
    final = rows[-1]
    out = {
        "average": float(final.mean()),
        "initial_average": None,
        "forgetting": None,
        "max_forgetting": None,
        "per_task": {"final": final.tolist(), "initial": None, "forgetting": None},
    }
    if initial is not None:
        initial = _as_initial(initial, rows.shape[1])
        drop = sign * (initial - final)
        worst = np.max(sign * (initial[None, :] - rows), axis=0)
        out.update(
            initial_average=float(initial.mean()), forgetting=float(drop.mean()), max_forgetting=float(worst.mean())
        )
        out["per_task"].update(initial=initial.tolist(), forgetting=drop.tolist())
    return out
