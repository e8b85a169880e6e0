"""BabyAI with text missions: observations are members of a Dict of standard spaces (Text mission),
seeded resets repeat, nothing is printed, and the BabyAI bot solves every level of babyai4."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import pytest
from gymnasium import spaces
from omegaconf import OmegaConf

from envs.babyai import MISSION_MAX_LENGTH, BabyAIBotExpert, TextMissionWrapper, make_babyai
from envs.experts import NoisyExpert
from retain.errors import ConfigError

pytest.importorskip("minigrid")

SEQUENCE = OmegaConf.load(Path(__file__).resolve().parents[1] / "configs/sequence/babyai4.yaml")
LEVELS = [task.env.id for task in SEQUENCE.tasks]
THRESHOLD = {task.env.id: task.env.success_threshold for task in SEQUENCE.tasks}


def run_episode(env: gym.Env, expert, seed: int) -> tuple[float, int]:
    """One episode of ``expert`` from ``reset(seed=seed)``: its return and length; every observation is in the space."""
    obs, info = env.reset(seed=seed)
    expert.reset(env, obs, info)
    ret, steps, done = 0.0, 0, False
    while not done:
        obs, reward, terminated, truncated, info = env.step(expert.act(obs, info))
        assert env.observation_space.contains(obs)
        ret, steps, done = ret + float(reward), steps + 1, terminated or truncated
    return ret, steps


def test_babyai4_lists_the_four_levels_in_order():
    assert LEVELS == ["BabyAI-GoToRedBall-v0", "BabyAI-GoToLocal-v0", "BabyAI-PickupLoc-v0", "BabyAI-PutNextLocal-v0"]
    # BabyAI's success reward is 1 - 0.9 * steps / max_steps >= 0.1, failure gives 0
    assert all(0 < threshold < 0.1 for threshold in THRESHOLD.values())


@pytest.mark.parametrize("level", LEVELS)
def test_observations_are_members_of_a_dict_with_a_text_mission(level):
    env = make_babyai(level)
    space = env.observation_space
    assert isinstance(space, spaces.Dict) and set(space.spaces) == {"image", "direction", "mission"}
    assert space["image"] == spaces.Box(0, 255, (7, 7, 3), "uint8") and space["direction"] == spaces.Discrete(4)
    assert isinstance(space["mission"], spaces.Text) and space["mission"].max_length == MISSION_MAX_LENGTH
    for seed in range(20):
        obs, _ = env.reset(seed=seed)
        assert space.contains(obs)
        assert obs["mission"] and obs["mission"] == env.unwrapped.mission


def test_the_longest_babyai_missions_fit():
    longest = 0
    for level in ("BabyAI-BossLevel-v0", "BabyAI-MiniBossLevel-v0", "BabyAI-PutNextS7N4-v0"):
        env = make_babyai(level)
        for seed in range(100):
            obs, _ = env.reset(seed=seed)
            assert env.observation_space.contains(obs)
            longest = max(longest, len(obs["mission"]))
    assert 100 < longest <= MISSION_MAX_LENGTH


def test_a_mission_outside_the_space_fails_loudly():
    env = TextMissionWrapper(gym.make(LEVELS[0]), max_length=5)
    with pytest.raises(ValueError, match="not in Text"):
        env.reset(seed=0)


def test_envs_without_a_mission_are_refused():
    with pytest.raises(ConfigError, match="no image/direction/mission"):
        TextMissionWrapper(gym.make("CartPole-v1"))


@pytest.mark.parametrize("level", LEVELS)
def test_a_seeded_reset_repeats_mission_and_image(level):
    env, other = make_babyai(level), make_babyai(level)
    first, _ = env.reset(seed=7)
    again, _ = env.reset(seed=7)
    fresh, _ = other.reset(seed=7)
    for obs in (again, fresh):
        assert obs["mission"] == first["mission"] and obs["direction"] == first["direction"]
        assert (obs["image"] == first["image"]).all()


class _Chatty(gym.Wrapper):
    """Prints what BabyAI's level generator prints on a rejected layout, and one line of its own."""

    def reset(self, **kwargs):
        print("Sampling rejected: unreachable object")
        print("a line that is not BabyAI's")
        return super().reset(**kwargs)


def test_reset_drops_only_the_level_generators_notes(capsys):
    env = TextMissionWrapper(_Chatty(gym.make(LEVELS[0])))
    env.reset(seed=0)
    assert capsys.readouterr().out == "a line that is not BabyAI's\n"


@pytest.mark.parametrize("level", LEVELS)
def test_the_bot_solves_every_level_silently(level, capsys):
    env, bot = make_babyai(level), BabyAIBotExpert()
    results = [run_episode(env, bot, seed) for seed in range(100)]
    success = [ret >= THRESHOLD[level] for ret, _ in results]
    assert sum(success) / len(success) >= 0.99, f"{level}: {sum(success)}/100"
    assert all(ret == 0 for (ret, _), ok in zip(results, success) if not ok)  # failures score exactly 0
    assert bot.name == "babyai_bot" and bot.failures == 0
    assert capsys.readouterr().out == ""  # the generator rejects layouts in a few of 100 resets


def test_the_bot_recovers_from_noisy_actions():
    # ε-random actions: the bot reads the action actually taken off the grid and undoes or re-plans;
    # assuming its own action was taken instead drops PutNextLocal to ~0.8 at ε = 0.1.
    env = make_babyai("BabyAI-PutNextLocal-v0")
    expert = NoisyExpert(BabyAIBotExpert(), env.action_space, epsilon=0.1, seed=0)
    assert expert.name == "babyai_bot+eps0.1"
    success = [run_episode(env, expert, seed)[0] > 0 for seed in range(100)]
    assert sum(success) >= 95


def test_act_before_reset_says_what_to_do():
    with pytest.raises(RuntimeError, match="before reset"):
        BabyAIBotExpert().act({}, {})
