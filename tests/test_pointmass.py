"""The multi-goal point mass: spaces, hidden goal, determinism, registration, bad kwargs, and its PD expert."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from envs.pointmass import GOALS, MAX_EPISODE_STEPS, PIXELS_ID, STATE_ID, PDExpert, PointMassEnv, register


def rollout(env: gym.Env, expert: PDExpert, seed: int) -> tuple[bool, bool, list[np.ndarray]]:
    """One episode: (success at any step, success at the last step, the actions taken)."""
    obs, info = env.reset(seed=seed)
    expert.reset(env, obs, info)
    any_success, actions, done = info["success"], [], False
    while not done:
        action = expert.act(obs, info)
        actions.append(action)
        obs, _, terminated, truncated, info = env.step(action)
        any_success, done = any_success or info["success"], terminated or truncated
    return any_success, info["success"], actions


@pytest.mark.parametrize("obs_type", ["state", "pixels"])
def test_spaces_and_dtypes(obs_type):
    env = PointMassEnv(obs_type=obs_type, image_size=84, render_mode="rgb_array")
    obs, info = env.reset(seed=0)
    shape, dtype = ((4,), np.float32) if obs_type == "state" else ((84, 84, 3), np.uint8)
    assert env.observation_space.shape == obs.shape == shape and obs.dtype == env.observation_space.dtype == dtype
    assert env.action_space == gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    assert env.observation_space.contains(obs) and not terminated and not truncated
    assert reward == pytest.approx(-np.linalg.norm(env.pos - GOALS[0])) and isinstance(info["success"], bool)
    frame = env.render()
    assert frame.shape == (84, 84, 3) and frame.dtype == np.uint8 and len(np.unique(frame.reshape(-1, 3), axis=0)) > 1


def test_goal_is_not_in_the_observation():
    for obs_type in ("state", "pixels"):
        a, b = PointMassEnv(goal_index=1, obs_type=obs_type), PointMassEnv(goal=(-0.3, 0.5), obs_type=obs_type)
        obs_a, info_a = a.reset(seed=7)
        obs_b, info_b = b.reset(seed=7)
        np.testing.assert_array_equal(obs_a, obs_b)
        for _ in range(5):  # the same actions keep the observations equal: the goal only changes reward and info
            action = a.action_space.sample()
            np.testing.assert_array_equal(a.step(action)[0], b.step(action)[0])
        assert not np.array_equal(info_a["goal"], info_b["goal"])


def test_deterministic_given_the_seed():
    def trajectory(seed: int) -> np.ndarray:
        env = PointMassEnv(goal_index=2)
        observations = [env.reset(seed=seed)[0]]
        actions = np.random.default_rng(0).uniform(-1, 1, size=(30, 2))
        observations += [env.step(action)[0] for action in actions]
        return np.stack(observations)

    np.testing.assert_array_equal(trajectory(3), trajectory(3))
    assert not np.array_equal(trajectory(3)[0], trajectory(4)[0])


def test_walls_keep_the_mass_in_the_box():
    env = PointMassEnv()
    env.reset(seed=0)
    for _ in range(40):
        obs, *_ = env.step(np.array([1.0, -1.0], dtype=np.float32))
    np.testing.assert_array_equal(obs, [1.0, -1.0, 0.0, 0.0])


@pytest.mark.parametrize("env_id", [STATE_ID, PIXELS_ID])
def test_pd_expert_reaches_every_goal(env_id):
    register()
    rates = []
    for goal_index in (0, 3, 5):
        env = gym.make(env_id, goal_index=goal_index)
        expert = PDExpert()
        results = [rollout(env, expert, seed)[:2] for seed in range(20)]
        rates.append(np.mean(results, axis=0))
    any_step, last_step = np.min(rates, axis=0)
    assert any_step >= 0.95 and last_step >= 0.95, rates


def test_noisy_pd_expert_mostly_succeeds_within_bounds():
    register()
    env = gym.make(STATE_ID, goal_index=6)
    expert = PDExpert(sigma=0.5, seed=1)
    results = [rollout(env, expert, seed) for seed in range(20)]
    assert np.mean([any_success for any_success, _, _ in results]) >= 0.9
    actions = np.concatenate([actions for _, _, actions in results])
    assert actions.dtype == np.float32 and np.all(np.abs(actions) <= 1.0) and np.std(actions) > 0.1
    same = [rollout(env, PDExpert(sigma=0.5, seed=1), 0)[2] for _ in range(2)]
    np.testing.assert_array_equal(same[0], same[1])  # the expert's noise is seeded too


def test_register_is_idempotent():
    register()
    register()
    env = gym.make(STATE_ID, goal_index=3)
    env.reset(seed=0)
    np.testing.assert_array_equal(env.unwrapped.goal, GOALS[3])
    assert env.spec.max_episode_steps == MAX_EPISODE_STEPS
    assert gym.make(PIXELS_ID).observation_space.shape == (64, 64, 3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"goal_index": 8}, "goal_index=8 is out of range"),
        ({"goal_index": -1}, "goal_index=-1 is out of range"),
        ({"obs_type": "rgb"}, "unknown obs_type 'rgb'"),
        ({"goal": (2.0, 0.0)}, "is not a point of the box"),
        ({"goal": (0.1, 0.2), "goal_index": 1}, "either goal or goal_index"),
        ({"image_size": 32}, "image_size=32"),
    ],
)
def test_bad_kwargs_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PointMassEnv(**kwargs)
