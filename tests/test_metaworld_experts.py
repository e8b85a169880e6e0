"""Meta-World's scripted experts: every CW10 and MT40 task has one, the splits partition MT50, the
experts solve quick CW10 tasks, noise stays in the action space, and bad task names fail clearly."""

from __future__ import annotations

import gymnasium as gym
import metaworld
import numpy as np
import pytest

from envs.experts import NoisyExpert
from envs.metaworld_experts import CW10, MT40_PRETRAIN, MetaWorldExpert, metaworld_task_names

# gymnasium's passive checker flags Meta-World's observation bounds; that is Meta-World's business, not ours.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:gymnasium.utils.passive_env_checker")

# The quickest CW10 tasks for the expert (first success after ~40-70 steps, always within 200).
QUICK_CW10 = ["handle-press-side-v3", "faucet-close-v3", "window-close-v3"]


def make(task: str, max_steps: int = 200) -> gym.Env:
    return gym.make("Meta-World/MT1", env_name=task, seed=0, max_episode_steps=max_steps)


def test_splits_partition_mt50():
    mt50 = metaworld_task_names()
    assert len(mt50) == len(set(mt50)) == 50
    assert len(CW10) == len(set(CW10)) == 10 and len(MT40_PRETRAIN) == len(set(MT40_PRETRAIN)) == 40
    assert set(CW10).isdisjoint(MT40_PRETRAIN)
    assert set(CW10) | set(MT40_PRETRAIN) == set(mt50) == set(metaworld.ALL_V3_ENVIRONMENTS)
    assert list(MT40_PRETRAIN) == [t for t in mt50 if t not in CW10]  # Meta-World's order


@pytest.mark.parametrize("task", [*CW10, *MT40_PRETRAIN])
def test_every_task_has_an_expert(task):
    expert = MetaWorldExpert(task)
    assert expert.name == f"metaworld:{task}"
    assert not vars(expert.policy)  # stateless, which is why reset does nothing


@pytest.mark.parametrize("task", QUICK_CW10)
def test_expert_solves_quick_cw10_tasks(task):
    env, expert = make(task), MetaWorldExpert(task)
    for episode in range(3):
        obs, info = env.reset(seed=episode)
        expert.reset(env, obs, info)
        success = False
        for _ in range(200):
            obs, _, terminated, truncated, info = env.step(expert.act(obs, info))
            success = bool(info["success"])
            if success or terminated or truncated:
                break
        assert success, f"{task} episode {episode} did not succeed within 200 steps"
    env.close()


@pytest.mark.filterwarnings("ignore:Constant")  # the raw policy below warns when it overshoots
def test_actions_are_float32_in_bounds_with_and_without_noise():
    task = "hammer-v3"
    env, expert = make(task), MetaWorldExpert(task)
    noisy = NoisyExpert(expert, env.action_space, sigma=1.0, seed=0)
    assert noisy.name == "metaworld:hammer-v3+sigma1"
    obs, info = env.reset(seed=0)
    noisy.reset(env, obs, info)
    raw_exceeds = False
    for _ in range(30):
        raw = np.asarray(expert.policy.get_action(obs))
        raw_exceeds |= bool(np.abs(raw).max() > 1)
        clean, action = expert.act(obs, info), noisy.act(obs, info)
        for a in (clean, action):
            assert a.shape == (4,) and a.dtype == np.float32 and np.all(a >= -1) and np.all(a <= 1)
        obs, _, _, _, info = env.step(action)
    assert raw_exceeds  # the raw policy overshoots, so the clipping above was exercised
    env.close()


def test_act_rejects_observations_that_are_not_39_d():
    with pytest.raises(ValueError, match="39-d"):
        MetaWorldExpert("hammer-v3").act(np.zeros(49), {})


@pytest.mark.parametrize(
    "task, hint",
    [("hammer-v2", "use hammer-v3"), ("no-such-task-v3", "metaworld_task_names"), ("hammer", "hammer-v3")],
)
def test_unknown_task_raises_value_error_with_the_fix(task, hint):
    with pytest.raises(ValueError, match=task) as err:
        MetaWorldExpert(task)
    assert hint in str(err.value)
