"""Tracking backends: metrics.jsonl always; TensorBoard and wandb (offline) when chosen, each read back with
its own reader and compared with what was logged."""

import hashlib
import json
import struct
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from retain.tracking import LoggerConfig, Tracker, read_metrics

# Values exact in float32 (TensorBoard stores float32), a step with no entry for some tags, and a NaN that
# metrics.jsonl records as null and the other backends leave out.
LOGGED = [
    (1, {"train/loss": 1.5, "eval/a/success": 0.0}),
    (2, {"train/loss": 0.75, "perf/fps": float("nan")}),
    (5, {"train/loss": 0.375, "cl/forgetting": -0.25}),
]
SERIES = {"train/loss": [(1, 1.5), (2, 0.75), (5, 0.375)], "eval/a/success": [(1, 0.0)], "cl/forgetting": [(5, -0.25)]}


def _log_all(tracker: Tracker) -> None:
    with tracker:
        for step, metrics in LOGGED:
            tracker.log(metrics, step)


def _series(rows: list[dict], step_key: str = "step") -> dict[str, list[tuple[int, float]]]:
    """Each tag's (step, value) pairs from logged rows, in order; nulls and wandb's own keys (``_*``) left out."""
    out: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        for key, value in row.items():
            if key != step_key and not key.startswith("_") and value is not None:
                out.setdefault(key, []).append((row[step_key], value))
    return out


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


def test_tensorboard_scalars_read_back_equal_what_was_logged(tmp_path):
    _log_all(Tracker(tmp_path, LoggerConfig(tensorboard=True)))
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    scalars = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    assert scalars == SERIES
    records = read_metrics(tmp_path)
    assert _series(records) == SERIES and records[1]["perf/fps"] is None


def _wandb_records(run_file: Path) -> list:
    """The protobuf records of a run's ``.wandb`` transaction log (the file ``wandb sync`` uploads): a LevelDB-style
    log of 32 KiB blocks after a 7-byte ``:W&B`` header, each record in chunks of (crc32, length, type) + bytes."""
    from wandb.proto.wandb_internal_pb2 import Record

    data, block = run_file.read_bytes(), 32768
    assert data[:4] == b":W&B", f"{run_file} is not a wandb transaction log"
    records, pending, pos = [], b"", 7
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's last few bytes are padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            records.append(Record.FromString(pending))
            pending = b""
    return records


def test_wandb_offline_run_holds_the_logged_history(tmp_path):
    import wandb

    _log_all(Tracker(tmp_path, LoggerConfig(wandb=True), config={"seed": 0}, run_name="t"))
    # Offline, finish() can return before wandb-core has written the log (seen: only its 7-byte header);
    # teardown waits for it, as the end of the process does.
    wandb.teardown()
    # The id comes from the run directory, so a resumed run continues the same wandb run.
    run_id = hashlib.sha1(str(tmp_path.resolve()).encode()).hexdigest()[:16]
    (run_file,) = (tmp_path / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb")
    records = _wandb_records(run_file)
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert run.run_id == run_id and run.display_name == "t" and run.project == "retain" and config["seed"] == 0
    history = [
        {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]
    assert [row["_step"] for row in history] == [step for step, _ in LOGGED]
    assert _series(history, "_step") == SERIES
    assert _series(read_metrics(tmp_path)) == SERIES
