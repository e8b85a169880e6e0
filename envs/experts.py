"""Experts that act in one (non-vectorized) env, and the data-quality knobs applied on top of them.

An expert sees the env once per episode (``reset``), so experts that need hidden state (the point
mass's goal, BabyAI's grid) read it there; ``act`` maps one observation to one action.
``NoisyExpert`` adds Gaussian action noise σ (continuous actions, clipped to the action space) and
ε-random mixing, so that expert / medium / random mixes (as D4RL) can be collected.
"""

from __future__ import annotations

from typing import Any, Protocol

import gymnasium as gym
import numpy as np


class Expert(Protocol):
    name: str
    """identity recorded in dataset metadata, e.g. metaworld:hammer-v3 or pd:pointmass"""

    def reset(self, env: gym.Env, obs: Any, info: dict) -> None:
        """Called after every ``env.reset``; ``env`` is the env the expert acts in."""

    def act(self, obs: Any, info: dict) -> Any:
        """One action for one observation."""


class RandomExpert:
    """Uniform random actions (D4RL's 'random' quality)."""

    def __init__(self, action_space: gym.Space, seed: int = 0):
        self.name = "random"
        self.action_space = action_space
        self.action_space.seed(seed)

    def reset(self, env: gym.Env, obs: Any, info: dict) -> None:
        pass

    def act(self, obs: Any, info: dict) -> Any:
        return self.action_space.sample()


class NoisyExpert:
    """An expert with Gaussian action noise ``sigma`` and ε-random actions (probability ``epsilon``)."""

    def __init__(self, expert: Expert, action_space: gym.Space, sigma: float = 0.0, epsilon: float = 0.0, seed: int = 0):
        if sigma < 0 or not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"need sigma >= 0 and 0 <= epsilon <= 1, got sigma={sigma}, epsilon={epsilon}")
        if sigma > 0 and not isinstance(action_space, gym.spaces.Box):
            raise ValueError(f"action noise sigma={sigma} needs continuous (Box) actions, not {action_space}; use epsilon for discrete actions")
        self.expert, self.action_space, self.sigma, self.epsilon = expert, action_space, sigma, epsilon
        self.name = expert.name + (f"+sigma{sigma:g}" if sigma else "") + (f"+eps{epsilon:g}" if epsilon else "")
        self.rng = np.random.default_rng(seed)
        self.action_space.seed(seed)

    def reset(self, env: gym.Env, obs: Any, info: dict) -> None:
        self.expert.reset(env, obs, info)

    def act(self, obs: Any, info: dict) -> Any:
        action = self.expert.act(obs, info)  # always queried, so the expert's own state stays in step
        if self.epsilon and self.rng.random() < self.epsilon:
            return self.action_space.sample()
        if self.sigma:
            low, high = self.action_space.low, self.action_space.high
            action = np.clip(np.asarray(action, dtype=np.float64) + self.sigma * self.rng.standard_normal(np.shape(action)), low, high)
            return action.astype(self.action_space.dtype)
        return action
