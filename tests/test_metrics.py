"""Continual metrics against matrices computed by hand."""

import math

import numpy as np
import pytest

from retain.metrics import (
    METRIC_KEYS,
    aggregate_seeds,
    auc_forward_transfer,
    bootstrap_ci,
    continual_metrics,
    stability_gap,
)

# R[i, j]: score on task j after training on task i.
R = [[0.9, 0.1, 0.0],
     [0.95, 0.8, 0.2],
     [0.3, 0.6, 0.7]]  # fmt: skip
INITIAL = [0.0, 0.05, 0.1]


def test_keys_are_exactly_the_contract():
    m = continual_metrics(R, INITIAL)
    assert set(m) == {*METRIC_KEYS, "per_task"}


def test_success_matrix_by_hand():
    m = continual_metrics(R, INITIAL)
    assert m["average"] == pytest.approx((0.3 + 0.6 + 0.7) / 3)
    assert m["plasticity"] == pytest.approx((0.9 + 0.8 + 0.7) / 3)
    assert m["forgetting"] == pytest.approx(((0.9 - 0.3) + (0.8 - 0.6)) / 2)
    # task 0 peaked at 0.95 after task 1: max forgetting counts from the peak
    assert m["max_forgetting"] == pytest.approx(((0.95 - 0.3) + (0.8 - 0.6)) / 2)
    assert m["backward_transfer"] == pytest.approx(-m["forgetting"])
    assert m["forward_transfer"] == pytest.approx(((0.1 - 0.05) + (0.2 - 0.1)) / 2)
    assert m["per_task"]["forgetting"][:2] == pytest.approx([0.6, 0.2])
    assert m["per_task"]["forgetting"][2] is None


def test_losses_are_oriented_so_positive_forgetting_means_worse():
    L = [[1.0, 3.0], [2.0, 1.5]]  # loss on task 0 rose from 1.0 to 2.0 while learning task 1
    m = continual_metrics(L, initial=[4.0, 3.5], higher_is_better=False)
    assert m["average"] == pytest.approx(1.75)
    assert m["plasticity"] == pytest.approx(1.25)
    assert m["forgetting"] == pytest.approx(1.0)
    assert m["max_forgetting"] == pytest.approx(1.0)
    assert m["backward_transfer"] == pytest.approx(-1.0)
    assert m["forward_transfer"] == pytest.approx(0.5)  # loss 3.0 < initial 3.5: positive transfer


def test_max_forgetting_of_losses_counts_from_the_lowest_loss():
    L = [[2.0, 9.0, 9.0], [1.0, 9.0, 9.0], [3.0, 9.0, 9.0]]
    assert continual_metrics(L, higher_is_better=False)["per_task"]["max_forgetting"][0] == pytest.approx(2.0)


def test_single_task_has_no_forgetting_or_transfer():
    m = continual_metrics([[0.7]], initial=[0.1])
    assert m["average"] == m["plasticity"] == pytest.approx(0.7)
    assert m["forgetting"] is None and m["max_forgetting"] is None and m["forward_transfer"] is None


def test_forward_transfer_needs_initial():
    assert continual_metrics(R)["forward_transfer"] is None


@pytest.mark.parametrize(
    "matrix, initial, message",
    [
        ([[1.0, 2.0]], None, "square"),
        ([[1.0, math.nan], [0.0, 1.0]], None, "NaN"),
        (np.zeros((0, 0)), None, "empty"),
        ([[1.0, 0.0], [0.0, 1.0]], [0.0], "one value per task"),
        ([[1.0, 0.0], [0.0, 1.0]], [0.0, math.inf], "NaN or inf"),
    ],
)
def test_bad_inputs_get_clear_errors(matrix, initial, message):
    with pytest.raises(ValueError, match=message):
        continual_metrics(matrix, initial)


def test_auc_forward_transfer_by_hand():
    # AUC 0.75 vs reference 0.25: (0.75 - 0.25) / (1 - 0.25)
    assert auc_forward_transfer([[0.5, 1.0]], [[0.0, 0.5]]) == pytest.approx(0.5 / 0.75)
    assert auc_forward_transfer([[0.0, 0.0], [0.5, 0.5]], [[0.5, 0.5], [0.5, 0.5]]) == pytest.approx((-1.0 + 0.0) / 2)


def test_auc_forward_transfer_skips_saturated_references_and_checks_ranges():
    assert auc_forward_transfer([[1.0]], [[1.0]]) is None
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        auc_forward_transfer([[3.0]], [[0.0]])
    with pytest.raises(ValueError, match="one reference curve per task"):
        auc_forward_transfer([[1.0]], [])


def test_bootstrap_ci_brackets_the_mean_and_collapses_for_constants():
    values = [0.1, 0.4, 0.35, 0.8, 0.5]
    low, high = bootstrap_ci(values)
    assert low < np.mean(values) < high
    assert bootstrap_ci([0.3, 0.3, 0.3]) == pytest.approx((0.3, 0.3))


def test_aggregate_seeds():
    per_seed = [continual_metrics(R, INITIAL), continual_metrics(np.asarray(R) * 0.5, INITIAL)]
    agg = aggregate_seeds(per_seed)
    assert agg["average"]["n"] == 2
    assert agg["average"]["mean"] == pytest.approx(0.75 * (0.3 + 0.6 + 0.7) / 3)
    assert agg["average"]["ci_low"] <= agg["average"]["mean"] <= agg["average"]["ci_high"]
    with pytest.raises(ValueError):
        aggregate_seeds([])


def test_stability_gap_of_a_loss_that_rises_then_recovers():
    # validation loss 2.0 at the stage start; re-warming pushes it up to 2.5 at step 20, back below 2.0 at 40
    gap = stability_gap([10, 20, 30, 40, 50], [2.3, 2.5, 2.1, 1.9, 1.8], start=2.0, higher_is_better=False)
    assert gap == {"depth": pytest.approx(0.5), "worst_step": 20, "recovery_step": 40, "end": pytest.approx(-0.2)}


def test_stability_gap_without_recovery_and_without_a_gap():
    assert stability_gap([5, 10], [0.6, 0.7], start=0.8)["recovery_step"] is None  # success rate fell, stayed low
    assert stability_gap([5, 10], [0.6, 0.7], start=0.8)["depth"] == pytest.approx(0.2)
    assert stability_gap([5, 10], [1.9, 1.5], start=2.0, higher_is_better=False) == {
        "depth": 0.0,
        "worst_step": None,
        "recovery_step": None,
        "end": pytest.approx(-0.5),
    }
    assert stability_gap([], [], start=1.0)["depth"] == 0.0
