"""`retain sequence` end to end: the run-directory contract, determinism, forgetting, and exact
resumption after SIGKILL."""

import json
import signal
import subprocess

import pytest
import yaml

from finetune.sequence import run_sequence
from retain.config import load_config
from retain.errors import CheckpointError, UserError
from retain.metrics import METRIC_KEYS
from retain.runner import Schedule, task_plan
from tests.conftest import RETAIN, TINY, error_lines, sigkill_after_checkpoint


def run(tmp_path, name, *overrides):
    cfg = load_config("sequence", [*TINY, f"run_dir={tmp_path / name}", *overrides])
    return run_sequence(cfg), tmp_path / name


def eval_records(run_dir):
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [
        {k: v for k, v in r.items() if k == "step" or k.startswith("eval/") and not k.endswith("seconds")}
        for r in lines
        if any(k.startswith("eval/") for k in r)
    ]


def test_run_directory_matches_the_contract(tmp_path):
    summary, run_dir = run(tmp_path, "a")
    for name in (
        "config.yaml",
        "metrics.jsonl",
        "summary.json",
        "results.json",
        "report.md",
        "results_heatmap.png",
        "curves.png",
    ):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "checkpoints" / "latest.json").is_file()
    results = json.loads((run_dir / "results.json").read_text())
    T = 3
    assert results["tasks"] == ["goal_bottom_right", "goal_top_right", "goal_bottom_left"]
    assert len(results["matrix"]) == T and all(len(row) == T for row in results["matrix"])
    assert len(results["initial"]) == T and results["higher_is_better"] is True and results["metric"] == "success"
    assert set(results["metrics"]) == {*METRIC_KEYS, "per_task"}
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["run_dir"] == str(run_dir)  # resolved, no ${now:}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        assert isinstance(record.pop("step"), int)
        assert all(k.startswith(("train/", "eval/", "cl/", "perf/")) for k in record), record
    logged = "".join((run_dir / "metrics.jsonl").read_text().splitlines())
    assert (
        "eval/goal_top_right/success" in logged
        and "cl/forgetting" in logged
        and "perf/train_steps_per_second" in logged
    )
    assert summary["steps"] == 3 * 2048 and summary["method"] == "finetune"


def test_same_seed_same_results_other_seed_may_differ(tmp_path):
    _, a = run(tmp_path, "a")
    _, b = run(tmp_path, "b")
    assert (
        json.loads((a / "results.json").read_text())["matrix"] == json.loads((b / "results.json").read_text())["matrix"]
    )
    assert eval_records(a) == eval_records(b)


def test_finetune_forgets_the_conflicting_default_sequence(tmp_path):
    summary, _ = run(tmp_path, "ft", "sequence.steps_per_task=30720", "chunks_per_task=1", "eval.during=none")
    assert summary["forgetting"] > 0.3, summary  # the first task is learnt, then overwritten


def test_reset_neither_forgets_nor_transfers(tmp_path, monkeypatch):
    from finetune.sb3_learner import Sb3Learner

    evaluated = []
    evaluate = Sb3Learner.evaluate
    monkeypatch.setattr(
        Sb3Learner, "evaluate", lambda self, tasks, w: evaluated.extend(tasks) or evaluate(self, tasks, w)
    )
    summary, run_dir = run(
        tmp_path, "reset", "method=reset", "sequence.steps_per_task=10240", "chunks_per_task=1", "eval.during=none"
    )
    results = json.loads((run_dir / "results.json").read_text())
    R = results["matrix"]
    assert summary["forgetting"] == 0.0 and summary["forward_transfer"] == 0.0
    assert R[2][0] == R[0][0] and R[2][1] == R[1][1]  # each task keeps its own model
    # a finished task's model (and a fresh one) is scored once, then its score is reused: the 3 fresh models
    # before the sequence; task 0's end; then per task its start (the model just finished, the fresh current one)
    # and its end (the current one): 3 + 1 + 2 + 1 + 2 + 1, where scoring every task every time takes 18
    assert evaluated == [0, 1, 2, 0, 0, 1, 1, 1, 2, 2]


def test_sb3_chunks_are_whole_iterations():
    def ends(budget, granularity, chunks):
        return [b.end for b in task_plan(budget, granularity, Schedule(chunks_per_task=chunks))]

    assert ends(10_000, 1024, 3) == [4096, 7168, 10240]
    assert ends(100, 1024, 10) == [1024]
    assert ends(2048, 1024, 10) == [1024, 2048]
    # a period that is no multiple of the rollout fires at the first chunk end past each of its multiples
    dense = task_plan(20480, 2048, Schedule(dense_every=1000, dense_until_fraction=0.5, chunks_per_task=2))
    assert [b.end for b in dense if b.evaluate] == [2048, 4096, 6144, 8192, 10240, 20480]
    assert [b.end for b in task_plan(1000, 7, Schedule(every=100))][:3] == [105, 203, 301]


def test_resume_with_a_changed_config_is_refused(tmp_path):
    _, run_dir = run(tmp_path, "a")
    with pytest.raises(UserError, match="differs"):
        run(tmp_path, "a", "resume=true", "seed=3")


def test_a_damaged_latest_checkpoint_resumes_from_the_previous_one(tmp_path, capsys):
    _, run_dir = run(tmp_path, "a")
    before = json.loads((run_dir / "results.json").read_text())
    checkpoints = run_dir / "checkpoints"
    latest = json.loads((checkpoints / "latest.json").read_text())["path"]
    (checkpoints / latest / "state.pt").write_bytes(b"truncated")
    run(tmp_path, "a", "resume=true")  # the last chunk again, from the intact checkpoint before it
    assert "resuming from the intact checkpoint" in capsys.readouterr().err
    after = json.loads((run_dir / "results.json").read_text())
    assert after["matrix"] == before["matrix"] and after["initial"] == before["initial"]
    for folder in checkpoints.glob("step_*"):  # every checkpoint damaged: one clear error
        (folder / "weights.safetensors").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="no intact checkpoint"):
        run(tmp_path, "a", "resume=true")


def test_sigkill_then_resume_gives_the_uninterrupted_results(tmp_path):
    budget = ["sequence.steps_per_task=20480", "chunks_per_task=10", "progress=false"]
    reference = tmp_path / "reference"
    ref = subprocess.run(
        [RETAIN, "sequence", *budget, f"run_dir={reference}"], capture_output=True, text=True, timeout=600
    )
    assert ref.returncode == 0, ref.stderr[-2000:]

    killed = tmp_path / "killed"
    # kill once a checkpoint exists in the middle of the second task
    returncode = sigkill_after_checkpoint(["sequence", *budget], killed, min_step=20480 + 4096)
    assert returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (killed / "results.json").exists()

    resumed = subprocess.run(
        [RETAIN, "sequence", *budget, f"run_dir={killed}", "resume=true"], capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, error_lines(resumed)
    a = json.loads((reference / "results.json").read_text())
    b = json.loads((killed / "results.json").read_text())
    assert a["matrix"] == b["matrix"] and a["initial"] == b["initial"]
    assert eval_records(reference) == eval_records(killed)  # curves too: nothing logged twice or lost


def test_parallel_task_evaluation_gives_the_same_results(tmp_path):
    _, a = run(tmp_path, "serial", "method=reset")
    _, b = run(tmp_path, "parallel", "method=reset", "eval.workers=2")
    assert (
        json.loads((a / "results.json").read_text())["matrix"] == json.loads((b / "results.json").read_text())["matrix"]
    )
    assert eval_records(a) == eval_records(b)


def test_normalized_return_needs_reference_scores(tmp_path):
    with pytest.raises(UserError, match="reference scores"):
        run(tmp_path, "n", "sequence.metric=normalized_return")
    summary, run_dir = run(
        tmp_path,
        "ok",
        "sequence=single",
        "env=cartpole",
        "sequence.metric=normalized_return",
        "env.ref_min_score=0.0",
        "env.ref_max_score=500.0",
        "sequence.eval_episodes=2",
    )
    results = json.loads((run_dir / "results.json").read_text())
    assert results["metric"] == "normalized_return" and 0.0 <= results["matrix"][0][0] <= 100.0
