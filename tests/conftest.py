"""Shared test setup: one torch thread (two threads on a busy 2-core machine slow small nets 15–50x),
no progress bars, and helpers to run the `retain` CLI in a subprocess like a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)
os.environ["RETAIN_NO_PROGRESS"] = "1"
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("WANDB_SILENT", "true")

ROOT = Path(__file__).resolve().parents[1]
RETAIN = str(Path(sys.executable).parent / "retain")

# A few seconds per run: 2 PPO iterations per task, one checkpoint in the middle of each task.
TINY = ["sequence.steps_per_task=2048", "chunks_per_task=2", "progress=false"]


def run_cli(*args: str, cwd: str | Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([RETAIN, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture
def cli(tmp_path):
    """Run `retain ...` from a scratch working directory (the CLI must work from anywhere)."""

    def run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
        return run_cli(*args, cwd=tmp_path, timeout=timeout)

    return run


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    """stderr lines that are not warnings printed by libraries."""
    return [ln for ln in proc.stderr.splitlines() if ln.strip() and "Warning" not in ln and not ln.startswith("  ")]


def sigkill_after_checkpoint(args: list[str], run_dir: Path, min_step: int, timeout: float = 300) -> int:
    """Start ``retain <args> run_dir=<run_dir>`` and SIGKILL it once a checkpoint at ``min_step`` or later
    exists; returns the process's return code (``-SIGKILL`` when it was killed)."""
    import json
    import signal
    import time

    proc = subprocess.Popen(
        [RETAIN, *args, f"run_dir={run_dir}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        pointer = run_dir / "checkpoints" / "latest.json"
        if pointer.exists() and json.loads(pointer.read_text())["step"] >= min_step:
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    return proc.wait()


def collect_pointmass(root: Path, episodes: int, ref_episodes: int) -> Path:
    """``root`` as RETAIN_DATA holding the point mass datasets `retain collect sequence=pointmass4` writes."""
    from envs.collect import run_collect
    from retain.config import load_config

    overrides = [
        "sequence=pointmass4",
        f"episodes={episodes}",
        f"dataset.ref_episodes={ref_episodes}",
        "workers=1",
        "progress=false",
        f"run_dir={root / 'collect'}",
    ]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RETAIN_DATA", str(root))
        run_collect(load_config("collect", overrides))
    return root
