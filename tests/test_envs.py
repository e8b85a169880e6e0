"""The env registry: every family builds through one make_env(spec), with clear errors."""

import numpy as np
import pytest

from envs.registry import check_env_spec, make_env
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


def _can_render() -> bool:
    try:
        env = make_env(EnvSpec(id="Meta-World/MT1", kwargs={"env_name": "reach-v3"}, pixels=64))()
        env.reset(seed=0)
        env.close()
        return True
    except Exception:  # no EGL device and no OSMesa library: nothing to render with here
        return False


@pytest.mark.parametrize("size", [64, 84])
def test_metaworld_pixels(size):
    if not _can_render():
        pytest.skip("no MuJoCo GL backend (EGL needs a GPU; install libosmesa6 for OSMesa)")
    env = make_env(EnvSpec(id="Meta-World/MT1", kwargs={"env_name": "reach-v3"}, pixels=size))()
    obs, _ = env.reset(seed=0)
    assert obs.shape == (size, size, 3) and obs.dtype == np.uint8 and obs.std() > 0
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
