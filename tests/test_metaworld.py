"""Continual World on Meta-World v3: the cw10 config runs end to end with SAC on a tiny budget."""

import json

import pytest
import torch

from finetune.sequence import run_sequence
from retain.checkpoint import load_checkpoint
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


@pytest.mark.slow  # ~1 min; the two-task SAC runs below cover Meta-World with SAC in `make test`
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


def _two_task_cw_run(run_dir, method: list[str]) -> dict:
    cfg = load_config("sequence", ["sequence=cw4", f"run_dir={run_dir}", *method, *CW_TINY])
    cfg.sequence.tasks = cfg.sequence.tasks[:2]  # hammer -> push-wall
    run_sequence(cfg)
    return {int(p.name.split("_")[1]): load_checkpoint(p) for p in (run_dir / "checkpoints").glob("step_*")}


@pytest.mark.parametrize(
    "method",
    [
        ["method=ewc", "method.batches=2", "method.batch_size=16", "method.critic=true"],
        ["method=packnet", "method.retrain_steps=4"],
        ["method=agem", "method.memory_per_task=64", "method.batch_size=16"],
    ],
    ids=lambda m: m[0].split("=")[1],
)
def test_sac_learns_two_meta_world_tasks_with_a_continual_method(method, tmp_path):
    """SAC on hammer -> push-wall: the method acts on the actor through SB3's optimizer hooks, SB3 unmodified."""
    checkpoints = _two_task_cw_run(tmp_path, method)
    (first, _, _, _), (last, state, _, _) = checkpoints[100], checkpoints[200]
    assert json.loads((tmp_path / "summary.json").read_text())["method"] == method[0].split("=")[1]
    kept = state["method"]
    if "ewc" in method[0]:  # the actor's Gaussian Fisher (floored) and, with critic=true, the critics' (∂Q)²
        importance = kept["omega"]
        actor = {n: v for n, v in importance.items() if n.startswith("actor.")}
        critic = {n: v for n, v in importance.items() if n.startswith("critic.")}
        assert actor and critic and set(actor) | set(critic) == set(importance)
        assert all((v >= 0.999e-5).all() for v in actor.values())  # the Fisher floor
        assert all(v.max() > 1e-5 for v in critic.values() if v.dim() >= 2)  # Q's own gradients, not the floor
        assert not any(n.startswith("critic_target.") for n in importance)
    elif "packnet" in method[0]:  # task 0's actor weights are bit-identical after task 1 trained
        for name, owner in kept["owner"].items():
            assert name.startswith("actor.")
            if owner.dim() >= 2:
                frozen = owner == 0
                assert frozen.any() and (owner == 1).any()
                assert torch.equal(last[name][frozen], first[name][frozen]), name
        assert not torch.equal(last["critic.qf0.0.weight"], first["critic.qf0.0.weight"])  # the critic learns on
    else:  # A-GEM: task 0's memory, and task 1's gradient steps projected against it
        assert len(kept["memories"]) == 1 and len(kept["memories"][0]["actions"]) == 64
        assert kept["calls"] > 0


def test_ending_episodes_at_success_keeps_the_success_rate_and_shortens_them():
    """eval.end_at_success: the scripted expert's success rate on faucet-close is the same, in fewer steps."""
    import dataclasses

    import numpy as np

    from envs.evaluation import evaluate
    from envs.metaworld_experts import MetaWorldExpert
    from envs.spec import EnvSpec

    expert = MetaWorldExpert("faucet-close-v3")
    spec = EnvSpec(id="Meta-World/MT1", kwargs={"env_name": "faucet-close-v3"}, max_episode_steps=200)
    full, short = (
        evaluate(lambda obs: np.stack([expert.act(o, {}) for o in obs]), s, 4, 7, n_envs=4)
        for s in (spec, dataclasses.replace(spec, end_at_success=True))
    )
    assert full.successes.mean() == short.successes.mean() == 1.0
    assert (full.lengths == 200).all() and (short.lengths < 200).all()
