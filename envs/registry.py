"""Build environments by id, one ``make_env(spec)`` for every family:

- any gymnasium id (``CartPole-v1``, ``FrozenLake-v1``, MiniGrid ids);
- Meta-World v3 tasks: ``Meta-World/MT1`` with ``kwargs.env_name=<task>-v3`` (39-d state, 4-d
  actions, ``info["success"]``), or 64/84-px pixels with ``pixels: 64``;
- BabyAI levels (``BabyAI-*``) with the mission as ``spaces.Text`` next to the image grid;
- DMControl through shimmy (``dm_control/<domain>-<task>-v0``), observations flattened;
- the multi-goal point mass (``retain/PointMass-v0``, ``retain/PointMassPixels-v0``).

``make_env`` returns a thunk (as CleanRL and SB3 expect); ``check_env_spec`` fails early, with one
clear line, on ids that do not exist.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import re
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np

from envs.spec import EnvSpec
from retain.errors import ConfigError

METAWORLD_IDS = ("Meta-World/MT1",)


# Families whose ids exist only once a package is imported: (id prefix, module, pip requirement).
FAMILY_MODULES = (
    ("Meta-World/", "metaworld", "metaworld>=3"),
    ("MiniGrid-", "minigrid", "minigrid"),
    ("BabyAI-", "minigrid", "minigrid"),
    ("dm_control/", "shimmy", "shimmy[dm-control]"),
)


def _register_family(env_id: str) -> None:
    """Import what registers ``env_id``'s family with gymnasium, only when that family is asked for."""
    if env_id.startswith("retain/"):
        from envs import pointmass

        pointmass.register()
        return
    for prefix, module, requirement in FAMILY_MODULES:
        if env_id.startswith(prefix):
            if module == "shimmy":
                _choose_gl_backend()  # dm_control picks its GL backend at import
            try:
                importlib.import_module(module)
            except ImportError as e:
                raise ConfigError(f"env {env_id} needs the {module} package", f"pip install '{requirement}'") from e


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
    if spec.pixels not in (None, 64, 84):
        raise ConfigError(
            f"env.pixels={spec.pixels} is not supported", "use pixels=64 or pixels=84 (or null for state)"
        )


def _choose_gl_backend() -> None:
    # MuJoCo renders offscreen through EGL on GPU machines; CPU machines fall back to OSMesa.
    if "MUJOCO_GL" not in os.environ:
        os.environ["MUJOCO_GL"] = "egl" if os.path.exists("/dev/dri") or os.path.exists("/dev/nvidia0") else "osmesa"


class SeededTaskVariant(gym.Wrapper):
    """Make ``reset(seed=s)`` pick Meta-World's goal variant from ``s``.

    Meta-World's MT1 env draws one of the task's 50 goal variants at every reset (``RandomTaskSelectWrapper``)
    from the env's generator *before* the reset's seed reaches it, so the variant an episode gets depends on
    the episodes before it: evaluating the same policy twice with the same seeds gave different scores, and a
    collected dataset depended on which worker rolled which episode. Seeding that generator first makes an
    episode a function of its seed. Unseeded resets (training) keep drawing variants at random.
    """

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if seed is not None:
            self.unwrapped.np_random = np.random.default_rng(seed)
        return self.env.reset(seed=seed, options=options)


class PixelObservation(gym.ObservationWrapper):
    """Replace the observation by the rendered frame (uint8, size×size×3); ``state`` keeps the env's own
    observation behind it (experts that act on states, such as Meta-World's scripted ones, read it)."""

    def __init__(self, env: gym.Env, size: int):
        super().__init__(env)
        self.observation_space = gym.spaces.Box(0, 255, (size, size, 3), np.uint8)
        self.state = None

    def observation(self, observation):
        self.state = observation
        return np.ascontiguousarray(self.env.render(), dtype=np.uint8)


class PadObservation(gym.ObservationWrapper):
    """Zero-pad a flat observation to ``size`` dims, so tasks of one sequence share a space (as L2M does for DMC)."""

    def __init__(self, env: gym.Env, size: int):
        super().__init__(env)
        n = env.observation_space.shape[0]
        if size < n:
            raise ConfigError(f"pad_obs_to={size} is smaller than the observation ({n} dims)", f"use pad_obs_to>={n}")
        low = np.concatenate([env.observation_space.low, np.full(size - n, -np.inf)]).astype(np.float32)
        high = np.concatenate([env.observation_space.high, np.full(size - n, np.inf)]).astype(np.float32)
        self.observation_space = gym.spaces.Box(low, high, dtype=np.float32)
        self._pad = size - n

    def observation(self, observation):
        return np.concatenate([np.asarray(observation, np.float32), np.zeros(self._pad, np.float32)])


class PadAction(gym.ActionWrapper):
    """Accept ``size``-dim actions in [-1, 1] and pass the env only the dims it has (the rest are ignored)."""

    def __init__(self, env: gym.Env, size: int):
        super().__init__(env)
        n = env.action_space.shape[0]
        if size < n:
            raise ConfigError(f"pad_action_to={size} is smaller than the action ({n} dims)", f"use pad_action_to>={n}")
        self._n = n
        self.action_space = gym.spaces.Box(-1.0, 1.0, (size,), np.float32)

    def action(self, action):
        return np.asarray(action, dtype=self.env.action_space.dtype)[: self._n]


def _make_raw(spec: EnvSpec) -> gym.Env:
    kwargs = dict(spec.kwargs)
    if spec.max_episode_steps is not None:
        kwargs["max_episode_steps"] = spec.max_episode_steps
    if spec.id in METAWORLD_IDS:
        # Meta-World's `seed` kwarg seeds the task's 50 goal variants: part of the task, so fixed (default 0).
        kwargs.setdefault("seed", 0)
    if spec.pixels and not spec.id.startswith("retain/"):
        _choose_gl_backend()
        kwargs.update(render_mode="rgb_array", width=spec.pixels, height=spec.pixels)
    if spec.id.startswith("BabyAI-"):
        from envs.babyai import make_babyai

        return make_babyai(spec.id, **kwargs)
    env = gym.make(spec.id, **kwargs)
    if spec.id in METAWORLD_IDS:
        env = SeededTaskVariant(env)
    if spec.pixels and not spec.id.startswith("retain/"):
        env = PixelObservation(env, spec.pixels)
    if spec.id.startswith("dm_control/") and not spec.pixels:
        env = gym.wrappers.FlattenObservation(env)
        env = gym.wrappers.TransformObservation(
            env,
            lambda o: o.astype(np.float32),
            gym.spaces.Box(-np.inf, np.inf, env.observation_space.shape, np.float32),
        )
    if spec.pad_obs_to:
        env = PadObservation(env, spec.pad_obs_to)
    if spec.pad_action_to:
        env = PadAction(env, spec.pad_action_to)
    return env


class EndAtSuccess(gym.Wrapper):
    """Truncates an episode at its first success, so a success-rate evaluation steps no further than it must."""

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        if info.get("success") or info.get("is_success"):
            truncated = True
        return obs, reward, terminated, truncated, info


class OneHotTask(gym.ObservationWrapper):
    """Appends task ``index``'s one-hot id (of ``count`` tasks) to flat Box observations."""

    def __init__(self, env: gym.Env, index: int, count: int):
        super().__init__(env)
        space = env.observation_space
        if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
            raise ConfigError(
                f"a one-hot task id extends flat Box observations, not {space}", "set agent.task_id=false"
            )
        self.one_hot = np.zeros(count, dtype=space.dtype)
        self.one_hot[index] = 1
        self.observation_space = gym.spaces.Box(
            np.concatenate([space.low, np.zeros(count)]).astype(space.dtype),
            np.concatenate([space.high, np.ones(count)]).astype(space.dtype),
            dtype=space.dtype,
        )

    def observation(self, observation):
        return np.concatenate([observation, self.one_hot])


class ActionHistory(gym.Wrapper):
    """Adds ``past_actions`` to a Dict observation: the episode's last ``length`` discrete actions, oldest first,
    -1 where the episode had not yet taken one (an LM policy reads them as words)."""

    def __init__(self, env: gym.Env, length: int):
        super().__init__(env)
        space = env.observation_space
        if not isinstance(space, gym.spaces.Dict) or not isinstance(env.action_space, gym.spaces.Discrete):
            raise ConfigError(
                f"an action history needs Dict observations and discrete actions, not {space} / {env.action_space}",
                "set env.action_history only on BabyAI/MiniGrid tasks",
            )
        n = int(env.action_space.n)
        self.observation_space = gym.spaces.Dict(
            {**space.spaces, "past_actions": gym.spaces.Box(-1, n - 1, (length,), np.int64)}
        )
        self._past = np.full(length, -1, dtype=np.int64)

    def _with_past(self, obs: dict) -> dict:
        return {**obs, "past_actions": self._past.copy()}

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self._past[:] = -1
        return self._with_past(obs), info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._past = np.roll(self._past, -1)
        self._past[-1] = int(action)
        return self._with_past(obs), reward, terminated, truncated, info


def make_env(spec: EnvSpec, monitor: bool = True) -> Callable[[], gym.Env]:
    """A thunk that builds the environment of ``spec`` (wrapped in SB3's Monitor for episode stats).

    Episodes are seeded through ``reset(seed=...)`` by the caller.
    """

    def thunk() -> gym.Env:
        _register_family(spec.id)
        try:
            env = _make_raw(spec)
        except TypeError as e:  # gymnasium passes kwargs through: a wrong one surfaces as a TypeError
            raise ConfigError(
                f"env {spec.id} rejected its arguments {dict(spec.kwargs)} ({str(e).splitlines()[0]})",
                "fix env.kwargs (or the task's env kwargs) to what the env takes",
            ) from e
        if spec.frame_stack is not None and spec.frame_stack > 1:
            env = gym.wrappers.FrameStackObservation(env, spec.frame_stack, padding_type="reset")
        if spec.action_history:
            env = ActionHistory(env, spec.action_history)
        if spec.text_tokens:
            from envs.text import TextTokens

            env = TextTokens(env)
        if spec.text_bytes:
            from envs.text import TextBytes

            env = TextBytes(env)
        if spec.one_hot_task is not None:
            env = OneHotTask(env, *spec.one_hot_task)
        if spec.end_at_success:
            env = EndAtSuccess(env)
        if monitor:
            from stable_baselines3.common.monitor import Monitor

            env = Monitor(env, info_keywords=())
        return env

    return thunk


ENTRY_POINT = "envs.registry:env_from_spec"
"""The gymnasium entry point that rebuilds a retain env from its ``EnvSpec`` fields (datasets store it)."""


def env_from_spec(**fields: Any) -> gym.Env:
    """Gymnasium entry point: build the env that ``make_env(EnvSpec(**fields))`` builds (no Monitor).

    ``fields`` are ``EnvSpec``'s fields; anything else (e.g. ``render_mode`` passed to ``gym.make`` or to
    Minari's ``recover_environment``) goes into ``kwargs`` for the underlying env.
    """
    names = {f.name for f in dataclasses.fields(EnvSpec)}
    extra = {k: fields.pop(k) for k in list(fields) if k not in names}
    spec = EnvSpec(**fields)
    spec.kwargs = {**(spec.kwargs or {}), **extra}
    return make_env(spec, monitor=False)()


def gym_env_spec(spec: EnvSpec) -> gym.envs.registration.EnvSpec:
    """A gymnasium ``EnvSpec`` that rebuilds ``spec``'s env (wrappers included) through ``env_from_spec``.

    ``gym.make(gym_env_spec(spec))`` needs no registration, and the spec serializes with ``to_json``, so
    Minari stores it as a dataset's ``env_spec`` and ``MinariDataset.recover_environment()`` rebuilds the env.
    Its ``id`` is ``spec.id``; the episode limit is applied inside (``max_episode_steps`` stays None here).
    """
    fields = dataclasses.asdict(spec)
    fields["kwargs"] = dict(fields["kwargs"] or {})
    return gym.envs.registration.EnvSpec(
        id=spec.id,
        entry_point=ENTRY_POINT,
        max_episode_steps=None,
        kwargs=fields,
        disable_env_checker=True,
    )
