"""The env registry: every family builds through one make_env(spec), with clear errors."""

import ctypes
import functools
import os

import numpy as np
import pytest

from envs.registry import _choose_gl_backend, check_env_spec, make_env
from envs.spec import EnvSpec
from retain.errors import ConfigError


def test_dmc_is_flattened_and_padded_to_a_shared_space():
    spaces = []
    for task in ("walker-walk", "cartpole-swingup", "finger-spin"):
        env = make_env(EnvSpec(id=f"dm_control/{task}-v0", pad_obs_to=24, pad_action_to=6))()
        obs, _ = env.reset(seed=0)
        assert obs.shape == (24,) and obs.dtype == np.float32 and env.observation_space.contains(obs)
        env.step(env.action_space.sample())  # 6-d actions work on a 1-d cartpole
        spaces.append((env.observation_space, env.action_space))
        env.close()
    assert spaces[0] == spaces[1] == spaces[2]


def test_padding_smaller_than_the_env_is_a_clear_error():
    with pytest.raises(ConfigError, match="pad_obs_to=3"):
        make_env(EnvSpec(id="dm_control/walker-walk-v0", pad_obs_to=3))()


def test_metaworld_state_env():
    env = make_env(EnvSpec(id="Meta-World/MT1", kwargs={"env_name": "reach-v3"}, max_episode_steps=200))()
    obs, _ = env.reset(seed=0)
    assert obs.shape == (39,) and env.action_space.shape == (4,)
    _, _, _, _, info = env.step(env.action_space.sample())
    assert "success" in info
    env.close()


# What MuJoCo's EGL backend raises when it cannot render headless here (mujoco/egl/__init__.py, egl_ext.py): an
# EGL without devices (no GPU and no Mesa software device) or without the device extensions.
NO_EGL_DEVICE = (
    "Cannot initialize a EGL device display",
    "eglQueryDevicesEXT is not available",
    "eglGetPlatformDisplayEXT is not available",
)


def _loadable(library: str) -> bool:
    """Whether PyOpenGL can load lib<library>: it tries lib<library>.so, then .so.9 down to .so.0."""
    for name in [f"lib{library}.so", *(f"lib{library}.so.{i}" for i in range(9, -1, -1))]:
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            pass
    return False


@functools.cache
def _no_offscreen_gl() -> str | None:
    """Why MuJoCo cannot render offscreen on this machine, or None when it can.

    Only a missing GL library or an EGL without a device counts; any other error is raised, so that a broken
    setup fails the tests instead of skipping them.
    """
    _choose_gl_backend()  # the backend make_env uses: MUJOCO_GL as set (tests default it to egl), else by device
    backend = os.environ["MUJOCO_GL"]
    library, package = {"egl": ("EGL", "libegl1"), "osmesa": ("OSMesa", "libosmesa6")}.get(backend, (None, None))
    # PyOpenGL does not raise for a missing library: it fails later with an AttributeError on None.
    if library and not _loadable(library):
        return f"MUJOCO_GL={backend}, but lib{library}.so is not installed (Debian: apt-get install {package})"
    if backend == "egl":
        try:
            from mujoco.egl import GLContext

            GLContext(64, 64).free()
        except ImportError as e:
            if not str(e).startswith(NO_EGL_DEVICE):
                raise
            return f"MUJOCO_GL=egl, but EGL has no device to render on ({e}); MUJOCO_GL=osmesa renders on the CPU"
    return None


@pytest.mark.parametrize("size", [64, 84])
def test_metaworld_pixels(size):
    reason = _no_offscreen_gl()
    if reason:
        pytest.skip(reason)
    env = make_env(EnvSpec(id="Meta-World/MT1", kwargs={"env_name": "reach-v3"}, pixels=size))()
    obs, _ = env.reset(seed=0)
    assert obs.shape == (size, size, 3) and obs.dtype == np.uint8 and obs.std() > 0
    obs, *_ = env.step(env.action_space.sample())
    assert env.observation_space.contains(obs) and obs.std() > 0
    env.close()


@pytest.mark.parametrize(
    "spec, words",
    [
        (EnvSpec(id="NoSuchEnv-v0"), "unknown env id"),
        (EnvSpec(id="Meta-World/MT1", kwargs={"env_name": "hammer-v2"}), "env_name=hammer-v3"),
        (EnvSpec(id="Meta-World/MT1", kwargs={"env_name": "flying-v3"}), "unknown Meta-World task"),
        (EnvSpec(id="Meta-World/MT1"), "needs kwargs.env_name"),
        (EnvSpec(id="CartPole-v1", pixels=100), "pixels=64"),
    ],
)
def test_bad_specs(spec, words):
    with pytest.raises(ConfigError, match=words):
        check_env_spec(spec)
