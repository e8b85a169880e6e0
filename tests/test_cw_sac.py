"""Continual World's SAC networks in SB3 (agent=sac_cw): its layers, and heads chosen by the task id."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3.common.vec_env import DummyVecEnv

from agents.sb3 import AgentConfig, build_model
from envs.registry import OneHotTask
from retain.config import load_config
from retain.errors import ConfigError

TASKS = 3


def _sac(task_id=True, **policy_kwargs) -> torch.nn.Module:
    cfg = load_config("sequence", ["agent=sac_cw"]).agent
    agent = AgentConfig(
        algo="SAC",
        policy=cfg.policy,
        task_id=task_id,
        n_envs=1,
        hyperparams={"buffer_size": 10, "learning_starts": 0},
        policy_kwargs={**cfg.policy_kwargs, "net_arch": [32, 32, 32, 32], **policy_kwargs},
    )
    make = (lambda: OneHotTask(gym.make("Pendulum-v1"), 1, TASKS)) if task_id else (lambda: gym.make("Pendulum-v1"))
    return build_model(agent, DummyVecEnv([make]), seed=0, device="cpu", num_tasks=TASKS)


def _obs(task: int, n: int = 5) -> torch.Tensor:
    obs = torch.randn(n, 3 + TASKS)
    obs[:, 3:] = 0
    obs[:, 3 + task] = 1
    return obs


def test_layers_are_continual_worlds():
    policy = _sac().policy
    body = policy.actor.latent_pi
    assert [type(m).__name__ for m in body] == ["Linear", "LayerNorm", "Tanh"] + ["Linear", "LeakyReLU"] * 3
    assert body[0].in_features == 3  # the one-hot id is hidden from the body
    assert policy.actor.mu.out_features == TASKS * 1 and policy.actor.log_std.out_features == TASKS
    for q_net in policy.critic.q_networks:
        assert isinstance(q_net[1], torch.nn.LayerNorm) and q_net[0].in_features == 3 + 1
        assert q_net[-1].out_features == TASKS


def test_each_task_acts_and_is_valued_through_its_own_head_only():
    policy = _sac().policy
    obs, actions = _obs(2), torch.rand(5, 1)
    before = policy.actor.get_action_dist_params(obs)[0], policy.critic(obs, actions)[0]
    with torch.no_grad():  # every head but task 2's changes
        policy.actor.mu.weight[:2] += 1.0
        policy.critic.qf0[-1].weight[:2] += 1.0
    after = policy.actor.get_action_dist_params(obs)[0], policy.critic(obs, actions)[0]
    assert torch.equal(before[0], after[0]) and torch.equal(before[1], after[1])
    other = policy.actor.get_action_dist_params(_obs(0))[0]
    with torch.no_grad():
        policy.actor.mu.weight[0] += 1.0
    assert not torch.equal(other, policy.actor.get_action_dist_params(_obs(0))[0])


def test_a_single_head_and_a_visible_id_are_options():
    policy = _sac(multihead=False, hide_task_id=False).policy
    assert policy.actor.latent_pi[0].in_features == 3 + TASKS and policy.actor.mu.out_features == 1


def test_multihead_without_a_task_id_is_a_config_error():
    with pytest.raises(ConfigError, match="task id"):
        _sac(task_id=False)


def test_one_hot_task_extends_observations():
    env = OneHotTask(gym.make("Pendulum-v1"), 1, TASKS)
    obs, _ = env.reset(seed=0)
    assert env.observation_space.shape == (6,) and np.array_equal(obs[3:], [0, 1, 0])
    assert env.observation_space.contains(obs)


def test_methods_leave_the_per_task_heads_alone():
    policy = _sac().policy
    heads = policy.head_parameters()
    assert "actor.mu.weight" in heads and "actor.log_std.bias" in heads and "critic.qf1.9.weight" in heads
    assert not any(n.startswith(("actor.latent_pi.", "critic.qf0.0.")) for n in heads)
    assert _sac(multihead=False).policy.head_parameters() == []
