"""Build environments by id: any gymnasium id, and Meta-World v3 tasks through ``Meta-World/MT1``.

``make_env(spec, seed)`` returns a thunk (as CleanRL and SB3 expect); ``check_env_spec`` fails
early, with one clear line, on ids that do not exist.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import gymnasium as gym

from envs.spec import EnvSpec
from retain.errors import ConfigError

METAWORLD_IDS = ("Meta-World/MT1",)


def _register_family(env_id: str) -> None:
    """Import the package that registers ``env_id``'s family with gymnasium, only when asked for."""
    if env_id.startswith("Meta-World/"):
        try:
            import metaworld  # noqa: F401  (registers Meta-World/* ids)
        except ImportError as e:
            raise ConfigError(f"env {env_id} needs the metaworld package", "pip install 'metaworld>=3'") from e
    elif env_id.startswith(("MiniGrid-", "BabyAI-")):
        try:
            import minigrid  # noqa: F401
        except ImportError as e:
            raise ConfigError(f"env {env_id} needs the minigrid package", "pip install minigrid") from e


def _check_metaworld_name(spec: EnvSpec) -> None:
    name = spec.kwargs.get("env_name")
    if not name:
        raise ConfigError(
            f"{spec.id} needs kwargs.env_name (a Meta-World v3 task such as hammer-v3)",
            "set env.kwargs.env_name=<task>-v3",
        )
    old = re.fullmatch(r"(.+)-v[12]", str(name))
    if old:
        raise ConfigError(
            f"Meta-World task {name!r} is a v1/v2 name; this Meta-World serves v3 tasks",
            f"use env_name={old.group(1)}-v3",
        )
    import metaworld

    if name not in metaworld.ALL_V3_ENVIRONMENTS:
        raise ConfigError(
            f"unknown Meta-World task {name!r}", "pick one of metaworld.ALL_V3_ENVIRONMENTS, e.g. hammer-v3"
        )


def check_env_spec(spec: EnvSpec) -> None:
    """Raise ``ConfigError`` if ``spec.id`` is not a registered environment."""
    _register_family(spec.id)
    try:
        gym.spec(spec.id)
    except gym.error.Error as e:
        hint = str(e).split("\n")[0]
        raise ConfigError(
            f"unknown env id {spec.id!r} ({hint})",
            "use a registered gymnasium id, e.g. CartPole-v1, or Meta-World/MT1 with kwargs.env_name=<task>-v3",
        ) from e
    if spec.id in METAWORLD_IDS:
        _check_metaworld_name(spec)


def make_env(spec: EnvSpec, monitor: bool = True) -> Callable[[], gym.Env]:
    """A thunk that builds the environment of ``spec`` (wrapped in SB3's Monitor for episode stats).

    Episodes are seeded through ``reset(seed=...)`` by the caller. Meta-World's ``seed`` kwarg picks
    the task's goal variant instead, so it is part of the task: fixed to ``kwargs.seed`` (default 0)
    rather than drawn anew for every env.
    """

    def thunk() -> gym.Env:
        _register_family(spec.id)
        kwargs = dict(spec.kwargs)
        if spec.id in METAWORLD_IDS:
            kwargs.setdefault("seed", 0)
        if spec.max_episode_steps is not None:
            kwargs["max_episode_steps"] = spec.max_episode_steps
        env = gym.make(spec.id, **kwargs)
        if monitor:
            from stable_baselines3.common.monitor import Monitor

            env = Monitor(env, info_keywords=())
        return env

    return thunk
