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


def test_evaluation_is_a_function_of_its_seeds():
    """Meta-World draws a goal variant at every reset from the previous episode's generator; retain seeds the
    draw from the reset seed, so evaluating one policy twice in the same (reused) envs gives the same scores,
    and the envs of one evaluation get different variants."""
    import numpy as np

    from envs.evaluation import eval_vec_env, evaluate
    from envs.spec import EnvSpec

    spec = EnvSpec(id="Meta-World/MT1", kwargs={"env_name": "faucet-close-v3"}, max_episode_steps=60)
    venv = eval_vec_env(spec, 3, 3)
    weights = np.random.default_rng(0).normal(size=(39, 4)) * 0.3
    runs = [evaluate(lambda obs: np.tanh(obs @ weights), spec, 3, 123, venv=venv).returns for _ in range(2)]
    venv.close()
    assert np.array_equal(runs[0], runs[1]) and len(set(runs[0].round(6))) > 1
