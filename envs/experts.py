"""Experts that act in one (non-vectorized) env, and the data-quality knobs applied on top of them.

An expert sees the env once per episode (``reset``), so experts that need hidden state (the point
mass's goal, BabyAI's grid) read it there; ``act`` maps one observation to one action. Experts
that draw random numbers also have ``seed_episode(seed)``, called before each episode.
``NoisyExpert`` adds Gaussian action noise σ (continuous actions, clipped to the action space) and
ε-random mixing, so that expert / medium / random mixes (as D4RL) can be collected.
"""

from __future__ import annotations

import json
from pathlib import Path
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

    def seed_episode(self, seed: int) -> None:
        self.action_space.seed(seed)

    def act(self, obs: Any, info: dict) -> Any:
        return self.action_space.sample()


class NoisyExpert:
    """An expert with Gaussian action noise ``sigma`` and ε-random actions (probability ``epsilon``)."""

    def __init__(
        self, expert: Expert, action_space: gym.Space, sigma: float = 0.0, epsilon: float = 0.0, seed: int = 0
    ):
        if sigma < 0 or not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"need sigma >= 0 and 0 <= epsilon <= 1, got sigma={sigma}, epsilon={epsilon}")
        if sigma > 0 and not isinstance(action_space, gym.spaces.Box):
            raise ValueError(
                f"action noise sigma={sigma} needs continuous (Box) actions, not {action_space}; use epsilon for discrete actions"
            )
        self.expert, self.action_space, self.sigma, self.epsilon = expert, action_space, sigma, epsilon
        self.name = expert.name + (f"+sigma{sigma:g}" if sigma else "") + (f"+eps{epsilon:g}" if epsilon else "")
        self.rng = np.random.default_rng(seed)
        self.action_space.seed(seed)

    def reset(self, env: gym.Env, obs: Any, info: dict) -> None:
        self.expert.reset(env, obs, info)

    def seed_episode(self, seed: int) -> None:
        """Draw this episode's noise from its own seed, so data never depends on which worker ran it."""
        self.rng = np.random.default_rng(seed)
        self.action_space.seed(seed)
        if hasattr(self.expert, "seed_episode"):
            self.expert.seed_episode(seed)

    def act(self, obs: Any, info: dict) -> Any:
        action = self.expert.act(obs, info)  # always queried, so the expert's own state stays in step
        if self.epsilon and self.rng.random() < self.epsilon:
            return self.action_space.sample()
        if self.sigma:
            low, high = self.action_space.low, self.action_space.high
            action = np.clip(
                np.asarray(action, dtype=np.float64) + self.sigma * self.rng.standard_normal(np.shape(action)),
                low,
                high,
            )
            return action.astype(self.action_space.dtype)
        return action


class Sb3Expert:
    """A trained SB3 policy acting greedily; rebuilt from safetensors weights + JSON (no pickle)."""

    def __init__(self, path: str | Path, observation_space: gym.Space, action_space: gym.Space):
        from safetensors.torch import load_file

        path = Path(path)
        meta = json.loads((path / "expert.json").read_text())
        policy_class = sb3_algorithm(meta["algo"]).policy_aliases[meta["policy"]]
        self.policy = policy_class(
            observation_space, action_space, lr_schedule=lambda _: 0.0, **_policy_kwargs(meta["policy_kwargs"])
        )
        self.policy.load_state_dict(load_file(path / "policy.safetensors"))
        self.policy.set_training_mode(False)
        self.name = f"sb3:{meta['algo']}:{meta['steps']}"

    def reset(self, env: gym.Env, obs: Any, info: dict) -> None:
        pass

    def act(self, obs: Any, info: dict) -> Any:
        action, _ = self.policy.predict(obs, deterministic=True)
        return action


def sb3_algorithm(name: str):
    """The SB3 algorithm class called ``name``."""
    from stable_baselines3 import A2C, DQN, PPO, SAC, TD3

    algorithms = {"PPO": PPO, "A2C": A2C, "DQN": DQN, "SAC": SAC, "TD3": TD3}
    if name not in algorithms:
        raise ValueError(f"unknown SB3 algorithm {name!r}; use one of {', '.join(algorithms)}")
    return algorithms[name]


def _policy_kwargs(kwargs: dict) -> dict:
    import torch

    kwargs = dict(kwargs)
    if isinstance(kwargs.get("activation_fn"), str):
        kwargs["activation_fn"] = getattr(torch.nn, kwargs["activation_fn"])
    return kwargs


def train_sb3_expert(
    env_thunk,
    out: str | Path,
    algo: str,
    steps: int,
    seed: int,
    hyperparams: dict,
    policy_kwargs: dict,
    n_envs: int = 8,
) -> Path:
    """Train an SB3 agent on one task and save its policy as ``policy.safetensors`` + ``expert.json``."""
    from safetensors.torch import save_file
    from stable_baselines3.common.vec_env import DummyVecEnv

    out = Path(out)
    venv = DummyVecEnv([env_thunk] * n_envs)
    model = sb3_algorithm(algo)(
        "MlpPolicy",
        venv,
        seed=seed,
        device="cpu",
        verbose=0,
        policy_kwargs=_policy_kwargs(policy_kwargs),
        **hyperparams,
    )
    model.learn(steps)
    venv.close()
    out.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.detach().contiguous().clone() for k, v in model.policy.state_dict().items()}, out / "policy.safetensors"
    )
    (out / "expert.json").write_text(
        json.dumps({"algo": algo, "policy": "MlpPolicy", "policy_kwargs": policy_kwargs, "steps": steps, "seed": seed})
    )
    return out


def expert_kind(env_id: str) -> str:
    """The scripted expert a family comes with (``sb3`` trains one for anything else)."""
    if env_id.startswith("Meta-World/"):
        return "metaworld"
    if env_id.startswith("BabyAI-"):
        return "babyai_bot"
    if env_id.startswith("retain/PointMass"):
        return "pd"
    return "sb3"


def make_expert(
    kind: str,
    env_id: str,
    env_kwargs: dict,
    observation_space: gym.Space,
    action_space: gym.Space,
    seed: int,
    sb3_path: str | None = None,
) -> Expert:
    """Build the expert ``kind`` (auto | metaworld | babyai_bot | pd | sb3 | random) for one task."""
    kind = expert_kind(env_id) if kind == "auto" else kind
    if kind == "random":
        return RandomExpert(action_space, seed)
    if kind == "metaworld":
        from envs.metaworld_experts import MetaWorldExpert

        return MetaWorldExpert(env_kwargs["env_name"])
    if kind == "babyai_bot":
        from envs.babyai import BabyAIBotExpert

        return BabyAIBotExpert()
    if kind == "pd":
        from envs.pointmass import PDExpert

        return PDExpert(seed=seed)
    if kind == "sb3":
        if not sb3_path:
            raise ValueError(
                "an sb3 expert needs a trained policy (expert.sb3.path) or training steps (expert.sb3.steps)"
            )
        return Sb3Expert(sb3_path, observation_space, action_space)
    raise ValueError(f"unknown expert kind {kind!r}; use auto, metaworld, babyai_bot, pd, sb3 or random")
