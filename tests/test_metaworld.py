"""Continual World on Meta-World v3: the cw10 config runs end to end with SAC on a tiny budget."""

import json

import pytest

from finetune.sequence import run_sequence
from retain.config import load_config

CW_TINY = [
    "sequence.steps_per_task=100",
    "chunks_per_task=1",
    "eval.during=none",
    "sequence.eval_episodes=1",
    "progress=false",
    "agent.hyperparams.learning_starts=50",
    "agent.hyperparams.train_freq=25",
    "agent.hyperparams.gradient_steps=2",
    "agent.hyperparams.buffer_size=1000",
]


def test_cw10_smoke(tmp_path):
    summary = run_sequence(load_config("sequence", ["sequence=cw10", f"run_dir={tmp_path}", *CW_TINY]))
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["tasks"][0] == "hammer" and len(results["matrix"]) == 10
    assert summary["agent"] == "SAC" and summary["steps"] == 10 * 100


@pytest.mark.slow
def test_cw20_smoke(tmp_path):
    run_sequence(load_config("sequence", ["sequence=cw20", f"run_dir={tmp_path}", *CW_TINY]))
    assert len(json.loads((tmp_path / "results.json").read_text())["matrix"]) == 20
