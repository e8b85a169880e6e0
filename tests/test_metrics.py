"""Continual metrics against matrices computed by hand."""

import math

import numpy as np
import pytest
from rliable import library as rly
from rliable import metrics as rlm

from retain import aggregate
from retain.metrics import METRIC_KEYS, auc_forward_transfer, continual_metrics, stability_gap

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


def test_iqm_of_known_numbers_and_as_rliable_computes_it():
    # 8 scores: the middle 4 (3, 4, 5, 6) are kept, the outlier 100 is not
    scores = np.array([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 100.0]])
    assert aggregate.iqm(scores) == pytest.approx(4.5) == rlm.aggregate_iqm(scores)
    assert aggregate.estimates({"g": scores})["g"]["iqm"] == pytest.approx(4.5)
    assert aggregate.estimates({"g": scores})["g"]["mean"] == pytest.approx(128 / 8)
    rng = np.random.default_rng(0)
    for shape in [(3, 5), (4, 7), (5, 1), (10, 3)]:
        s = rng.random(shape)
        assert aggregate.iqm(s) == pytest.approx(rlm.aggregate_iqm(s))
        assert aggregate.iqm(s, axis=0) == pytest.approx([rlm.aggregate_iqm(s[:, [j]]) for j in range(shape[1])])


def test_improvement_is_rliables_probability_of_improvement_ties_included():
    rng = np.random.default_rng(1)
    for nx, ny, tasks in [(3, 3, 4), (2, 5, 1), (4, 3, 3)]:
        x = rng.integers(0, 3, (nx, tasks)).astype(float)  # small integers: many ties
        y = rng.integers(0, 3, (ny, tasks)).astype(float)
        assert aggregate.improvement(x, y) == pytest.approx(rlm.probability_of_improvement(x, y))
        assert aggregate.improvement(x, x) == pytest.approx(0.5) == rlm.probability_of_improvement(x, x)


# Three seeds that differ task by task but have the same mean over tasks (0.5 each): a percentile bootstrap of
# the seeds' means can only give [0.5, 0.5]; the stratified bootstrap resamples the seeds within every task.
ANTI = np.array([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5]])


def test_estimates_are_rliables_stratified_bootstrap_not_clamped_to_the_seeds_means():
    est = aggregate.estimates({"g": ANTI})["g"]
    assert est["n"] == 3 and est["tasks"] == 4 and est["mean"] == pytest.approx(0.5)
    assert est["ci_low"] < 0.45 and est["ci_high"] > 0.55  # wider than [min, max] of the seeds' means
    np.random.seed(aggregate.SEED)  # rliable draws from numpy's global RNG
    point, cis = rly.get_interval_estimates(
        {"g": ANTI},
        lambda s: np.array([rlm.aggregate_iqm(s), rlm.aggregate_mean(s)]),
        reps=aggregate.REPS,
        confidence_interval_size=aggregate.CONFIDENCE,
    )
    assert [est["iqm"], est["mean"]] == pytest.approx(point["g"])
    assert [est["iqm_ci_low"], est["ci_low"]] == pytest.approx(cis["g"][0])
    assert [est["iqm_ci_high"], est["ci_high"]] == pytest.approx(cis["g"][1])
    assert not est["widened"] and not est["iqm_widened"]  # equal seeds' means: Student's t adds nothing


def test_few_seeds_get_at_least_students_t_interval_of_their_means():
    # 3 seeds, 1 task: a percentile bootstrap cannot leave [0.1, 0.3]; t(0.975, 2) · 0.1 / √3 = 0.2484
    est = aggregate.estimates({"g": np.array([[0.1], [0.2], [0.3]])})["g"]
    assert aggregate.t_half_width(np.array([[0.1], [0.2], [0.3]])) == pytest.approx(4.302653 * 0.1 / math.sqrt(3))
    assert [est["ci_low"], est["ci_high"]] == pytest.approx([0.2 - 0.24841, 0.2 + 0.24841], abs=1e-5)
    assert [est["iqm_ci_low"], est["iqm_ci_high"]] == pytest.approx([0.2 - 0.24841, 0.2 + 0.24841], abs=1e-5)
    assert est["ci_low"] < 0.1 and est["ci_high"] > 0.3 and est["widened"] and est["iqm_widened"]


def test_seeds_better_on_every_task_widen_the_stratified_bootstrap():
    # a seed's offset is shared by all its tasks: resampling every task on its own averages it away (an interval
    # ~√tasks too narrow); the seeds' means keep it
    offsets = np.array([0.0, 0.1, 0.2, 0.3, 0.4])
    scores = offsets[:, None] + np.array([0.1, 0.3, 0.5, 0.7])[None, :]
    est = aggregate.estimates({"g": scores})["g"]
    half = aggregate.t_half_width(scores)
    assert est["widened"] and [est["ci_low"], est["ci_high"]] == pytest.approx([est["mean"] - half, est["mean"] + half])


def test_many_seeds_keep_about_the_bootstraps_interval():
    # 50 seeds: the bootstrap and Student's t are both about ±1.96 s/√n; widening changes the interval by a few %
    scores = np.random.default_rng(3).normal(0.5, 0.1, (50, 1))
    est = aggregate.estimates({"g": scores})["g"]
    np.random.seed(aggregate.SEED)
    _, cis = rly.get_interval_estimates({"g": scores}, rlm.aggregate_mean, reps=aggregate.REPS)
    low, high = cis["g"].ravel()
    assert est["ci_low"] <= low and est["ci_high"] >= high
    assert est["ci_high"] - est["ci_low"] < 1.1 * (high - low)
    assert aggregate.t_half_width(scores) == pytest.approx(1.96 * scores.std(ddof=1) / math.sqrt(50), rel=0.05)


def test_estimates_batch_matrices_deterministically_and_leave_the_global_rng_alone():
    matrices = {"a": ANTI, "b": ANTI[:, :1], "c": ANTI[:2], "one": ANTI[:1], "none": np.zeros((0, 0))}
    np.random.seed(123)
    before = np.random.random()
    np.random.seed(123)
    first = aggregate.estimates(matrices)
    assert np.random.random() == before
    assert aggregate.estimates(matrices) == first
    # batched with others, a matrix's interval is the one of its own call up to the random draws
    alone = aggregate.estimates({"a": ANTI})["a"]
    assert first["a"]["ci_low"] == pytest.approx(alone["ci_low"], abs=0.05)
    assert first["a"]["iqm_ci_high"] == pytest.approx(alone["iqm_ci_high"], abs=0.05)
    # one task, seeds 1, 0, 0.5: the bootstrap stays within [0, 1]; Student's t gives 0.5 ± 4.303 · 0.5 / √3
    assert [first["b"]["ci_low"], first["b"]["ci_high"]] == pytest.approx([0.5 - 1.2421, 0.5 + 1.2421], abs=1e-4)
    assert first["b"]["widened"] and not first["a"]["widened"]
    one = first["one"]  # one seed: a value, no interval
    assert one["n"] == 1 and one["mean"] == 0.5 and one["ci_low"] is None and one["iqm_ci_high"] is None
    assert one["widened"] is None and one["iqm_widened"] is None
    assert first["none"]["n"] == 0 and first["none"]["mean"] is None
    assert aggregate.fmt_stats(first["one"]) == "0.500 n=1"
    assert aggregate.fmt_stats(first["a"], "iqm").endswith(" n=3") and " [" in aggregate.fmt_stats(first["a"])


def test_score_matrix_leaves_out_runs_without_a_value():
    assert aggregate.score_matrix([[0.1, 0.2], None, [0.3, None], [0.5, 0.6]]).tolist() == [[0.1, 0.2], [0.5, 0.6]]
    assert aggregate.score_matrix([0.4, None, 0.7]).tolist() == [[0.4], [0.7]]
    assert aggregate.score_matrix([None]).size == 0
    with pytest.raises(ValueError, match="same number of task scores"):
        aggregate.score_matrix([[0.1, 0.2], [0.3]])


def test_probability_of_improvement_of_a_clearly_better_group_and_as_rliable_bootstraps_it():
    rng = np.random.default_rng(2)
    good, bad = 0.8 + 0.1 * rng.random((3, 4)), 0.2 + 0.1 * rng.random((3, 4))
    pairs = {(p["x"], p["y"]): p for p in aggregate.probability_of_improvement({"good": good, "bad": bad})}
    assert pairs["good", "bad"]["p"] == 1.0 and pairs["good", "bad"]["ci_low"] == 1.0
    assert pairs["bad", "good"]["p"] == 0.0 and pairs["bad", "good"]["n_x"] == 3
    close = good[::-1] + 0.05 * rng.standard_normal((3, 4))  # overlapping: an interval around 0.5
    ours = aggregate.probability_of_improvement({"x": close, "y": good}, reps=300)[0]
    np.random.seed(aggregate.SEED)
    point, cis = rly.get_interval_estimates({"xy": (close, good)}, rlm.probability_of_improvement, reps=300)
    assert ours["p"] == pytest.approx(point["xy"]) and [ours["ci_low"], ours["ci_high"]] == pytest.approx(
        cis["xy"].ravel()
    )
    assert ours["ci_low"] < ours["p"] < ours["ci_high"]
    with pytest.raises(ValueError, match="same tasks"):
        aggregate.probability_of_improvement({"x": good, "y": bad[:, :2]})


def test_stability_gap_of_a_loss_that_rises_then_recovers():
    # validation loss 2.0 at the stage start; re-warming pushes it up to 2.5 at step 20, back below 2.0 at 40
    gap = stability_gap([10, 20, 30, 40, 50], [2.3, 2.5, 2.1, 1.9, 1.8], start=2.0, higher_is_better=False)
    assert gap == {
        "depth": pytest.approx(0.5),
        "worst_step": 20,
        "recovery_step": 40,
        "end": pytest.approx(-0.2),
        "regained": pytest.approx(0.5),
        "share_regained": pytest.approx(1.0),
    }


def test_stability_gap_without_recovery_and_without_a_gap():
    assert stability_gap([5, 10], [0.6, 0.7], start=0.8)["recovery_step"] is None  # success rate fell, stayed low
    assert stability_gap([5, 10], [0.6, 0.7], start=0.8)["depth"] == pytest.approx(0.2)
    # worst 0.2 below the start, 0.1 below at the end: half of the depth regained, against the same baseline
    assert stability_gap([5, 10], [0.6, 0.7], start=0.8)["share_regained"] == pytest.approx(0.5)
    assert stability_gap([5, 10], [1.9, 1.5], start=2.0, higher_is_better=False) == {
        "depth": 0.0,
        "worst_step": None,
        "recovery_step": None,
        "share_regained": None,
        "end": pytest.approx(-0.5),
        "regained": 0.0,
    }
    assert stability_gap([], [], start=1.0)["depth"] == 0.0
