"""A task mixture as one env: every episode is an episode of one task, drawn at reset.

Joint training on several tasks (the ``multitask`` reference) for learners that train on envs, such as
SB3's: the agent sees the same spaces as on a single task (the tasks of a sequence share them), and a
vectorized env of mixtures gives every sub-env its own draw. ``reset(seed=...)`` seeds the draw, so a
seeded run is reproducible.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np

from envs.registry import make_env
from envs.spec import EnvSpec


class TaskMixtureEnv(gym.Env):
    """Episodes of ``envs[k]`` with k uniform at each reset; ``info["task_index"]`` says which."""

    def __init__(self, envs: list[gym.Env]):
        if not envs:
            raise ValueError("a task mixture needs at least one env")
        self.envs = envs
        self.observation_space = envs[0].observation_space
        self.action_space = envs[0].action_space
        self.metadata = envs[0].metadata
        self.render_mode = getattr(envs[0], "render_mode", None)
        self._rng = np.random.default_rng()
        self._active = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self._active = int(self._rng.integers(len(self.envs)))
        # each sub-env is seeded from the mixture's stream, so the whole episode sequence follows `seed`
        obs, info = self.envs[self._active].reset(seed=int(self._rng.integers(2**31)), options=options)
        return obs, {**info, "task_index": self._active}

    def step(self, action):
        obs, reward, terminated, truncated, info = self.envs[self._active].step(action)
        return obs, reward, terminated, truncated, {**info, "task_index": self._active}

    def render(self):
        return self.envs[self._active].render()

    def close(self) -> None:
        for env in self.envs:
            env.close()


def make_mixture_env(specs: list[EnvSpec], monitor: bool = True) -> Callable[[], gym.Env]:
    """A thunk building the mixture of ``specs`` (one env: just that env), in SB3's Monitor for episode stats."""
    if len(specs) == 1:
        return make_env(specs[0], monitor=monitor)

    def thunk() -> gym.Env:
        env = TaskMixtureEnv([make_env(spec, monitor=False)() for spec in specs])
        if monitor:
            from stable_baselines3.common.monitor import Monitor

            env = Monitor(env, info_keywords=())
        return env

    return thunk
