"""Tracking backends: metrics.jsonl always; TensorBoard and wandb (offline) when chosen."""

import json

import pytest

from retain.tracking import LoggerConfig, Tracker, read_metrics


def test_jsonl_records_steps_and_prefixes(tmp_path):
    tracker = Tracker(tmp_path)
    tracker.log({"train/loss": 1.5, "eval/a/success": 1}, step=10)
    offset = tracker.offset()
    tracker.log({"perf/fps": float("nan")}, step=20)
    tracker.close()
    records = read_metrics(tmp_path)
    assert records == [{"step": 10, "train/loss": 1.5, "eval/a/success": 1.0}, {"step": 20, "perf/fps": None}]
    with pytest.raises(ValueError, match="prefixes"):
        Tracker(tmp_path / "x").log({"loss": 1.0}, 0)
    # resuming truncates what was logged after the checkpoint's offset
    Tracker(tmp_path, resume_offset=offset).close()
    assert read_metrics(tmp_path) == records[:1]


def test_tensorboard_writes_event_files(tmp_path):
    tracker = Tracker(tmp_path, LoggerConfig(tensorboard=True))
    tracker.log({"train/loss": 0.5}, step=1)
    tracker.close()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_wandb_runs_offline_into_the_run_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    tracker = Tracker(tmp_path, LoggerConfig(wandb=True), config={"seed": 0}, run_name="t")
    tracker.log({"train/loss": 0.5}, step=1)
    tracker.close()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert runs and json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])["train/loss"] == 0.5
