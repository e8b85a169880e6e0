"""Datasets for offline learners: ``load_transitions`` on a collected Minari dataset and on D4RL files,
``dataset_path``, ``sequence_dataset_id``, and Minari's own ``recover_environment`` on retain's datasets."""

from __future__ import annotations

import json
import os

import gymnasium as gym
import h5py
import minari
import numpy as np
import pytest

from envs.collect import dataset_id_for, run_collect
from envs.d4rl import REF_SCORES, write_d4rl
from envs.datasets import dataset_info, dataset_path, load_dataset, sequence_dataset_id
from envs.registry import make_env
from envs.spec import EnvSpec
from envs.transitions import Transitions, load_transitions
from retain.config import load_config
from retain.errors import DatasetError

ID = "retain/pointmass/expert-v0"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """RETAIN_DATA with one point-mass dataset (3 episodes of 100 steps), collected once for this module."""
    root = tmp_path_factory.mktemp("data")
    old = {k: os.environ.get(k) for k in ("RETAIN_DATA", "MINARI_DATASETS_PATH")}
    os.environ["RETAIN_DATA"] = os.environ["MINARI_DATASETS_PATH"] = str(root)
    run_collect(
        load_config(
            "collect",
            [f"run_dir={root.parent / 'run'}", "progress=false", "episodes=3", "workers=1", "dataset.ref_episodes=1"],
        )
    )
    yield root
    for key, value in old.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _assert_shifted(t: Transitions) -> None:
    """Inside every episode next_observations[i] == observations[i + 1]; episodes tile the rows."""
    ends = np.append(t.episode_starts[1:], len(t)) - 1
    inside = np.setdiff1d(np.arange(len(t)), ends)
    np.testing.assert_array_equal(t.next_observations[inside], t.observations[inside + 1])
    assert t.episode_starts[0] == 0 and np.all(np.diff(t.episode_starts) > 0)
    assert t.episode_lengths.sum() == len(t) == len(t.actions) == len(t.terminals) == len(t.timeouts)


# --- Minari datasets written by retain collect -------------------------------------------------------


def test_minari_dataset_as_transitions(data_root):
    from envs import datasets

    assert datasets.load_transitions is load_transitions and datasets.Transitions is Transitions  # both homes
    t = load_transitions(ID)
    assert isinstance(t, Transitions) and t.format == "minari" and t.dataset_id == ID
    assert t.observations.shape == (300, 4) and t.actions.shape == (300, 2) and t.rewards.shape == (300,)
    assert t.rewards.dtype == np.float32 and t.terminals.dtype == bool and t.episode_starts.dtype == np.int64
    np.testing.assert_array_equal(t.episode_starts, [0, 100, 200])
    _assert_shifted(t)
    # rows are Minari's episodes, concatenated in order
    dataset = load_dataset(ID)
    for e, episode in enumerate(dataset.iterate_episodes()):
        rows = slice(t.episode_starts[e], t.episode_starts[e] + len(episode.rewards))
        np.testing.assert_array_equal(t.observations[rows], episode.observations[:-1])
        np.testing.assert_array_equal(t.next_observations[rows], episode.observations[1:])
        np.testing.assert_array_equal(t.actions[rows], episode.actions)
        np.testing.assert_allclose(t.rewards[rows], episode.rewards, rtol=1e-6)
        np.testing.assert_array_equal(t.timeouts[rows], episode.truncations)
    np.testing.assert_allclose(t.episode_returns().mean(), dataset_info(ID)["return"]["mean"], rtol=1e-5)
    assert t.timeouts[[99, 199, 299]].all() and t.timeouts.sum() == 3 and not t.terminals.any()
    assert t.infos["success"].shape == (300,) and t.infos["success"].any()
    assert t.observation_space == dataset.observation_space and t.action_space == dataset.action_space
    assert t.env_spec == json.loads((data_root / ID / "retain.json").read_text())["env_spec"]
    assert t.ref_min_score < t.ref_max_score and t.normalized_score(t.ref_max_score) == pytest.approx(1.0)
    assert t.source == (data_root / ID).resolve()
    # the directory, its data/ folder and Minari's main_data.hdf5 name the same dataset
    for other in (data_root / ID, data_root / ID / "data", data_root / ID / "data" / "main_data.hdf5"):
        again = load_transitions(str(other))
        assert again.source == t.source and np.array_equal(again.observations, t.observations)
    # the env spec rebuilds the task
    env = make_env(EnvSpec(**t.env_spec), monitor=False)()
    assert env.observation_space == t.observation_space and env.action_space == t.action_space


def test_recover_environment_with_minari(data_root):
    """Minari's own API rebuilds retain's env (through envs.registry:env_from_spec) and it replays the data."""
    dataset = minari.load_dataset(ID)
    assert dataset.env_spec.entry_point == "envs.registry:env_from_spec"
    seed = next(iter(dataset.storage.get_episode_metadata([0])))["seed"]
    episode = dataset[0]
    for eval_env in (False, True):
        env = dataset.recover_environment(eval_env=eval_env)
        assert env.observation_space == dataset.observation_space and env.action_space == dataset.action_space
        obs, _ = env.reset(seed=seed)
        np.testing.assert_array_equal(obs, episode.observations[0])
        for k, action in enumerate(episode.actions):
            obs, reward, terminated, truncated, _ = env.step(action)
            np.testing.assert_allclose(obs, episode.observations[k + 1], rtol=1e-6, atol=1e-6)
            assert reward == pytest.approx(episode.rewards[k])
        assert truncated and not terminated  # the episode limit (100) travels with the spec
        env.close()


def test_dataset_path_never_raises(data_root, tmp_path):
    assert dataset_path(ID) == (data_root / ID).resolve()
    assert dataset_path(str(data_root / ID / "data")) == (data_root / ID).resolve()
    assert dataset_path("retain/pointmass/medium-v0") is None  # a valid id, not collected
    for bad in ("", "no id", "../../etc-v0", str(tmp_path / "missing.hdf5"), str(tmp_path)):
        assert dataset_path(bad) is None, bad
    f = write_d4rl(tmp_path / "x.hdf5", np.zeros((2, 1)), np.zeros((2, 1)), np.zeros(2), [0, 1], [0, 0])
    assert dataset_path(str(f)) == f.resolve()


def test_malformed_minari_dataset_is_one_line(data_root, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(data_root / ID, broken)
    with h5py.File(broken / "data" / "main_data.hdf5", "r+") as f:
        obs = f["episode_1"]["observations"][()]
        del f["episode_1"]["observations"]
        f["episode_1"]["observations"] = np.full_like(obs, np.nan)
    with pytest.raises(DatasetError) as error:
        load_transitions(str(broken))
    assert "\n" not in str(error.value) and "NaN" in str(error.value) and "episode_1" in str(error.value)
    with pytest.raises(DatasetError, match="not found"):
        load_transitions("retain/nothing/here-v0")


# --- D4RL files ------------------------------------------------------------------------------------


def _d4rl_fields(n: int = 10):
    """Three episodes: rows 0-3 end at a terminal, 4-7 at a timeout, 8-9 run off the end of the file."""
    rng = np.random.default_rng(0)
    return {
        "observations": rng.normal(size=(n, 3)).astype(np.float32),
        "actions": rng.uniform(-1, 1, size=(n, 2)).astype(np.float32),
        "rewards": np.arange(n, dtype=np.float32),
        "terminals": np.isin(np.arange(n), [3]),
        "timeouts": np.isin(np.arange(n), [7]),
    }


def test_d4rl_file_as_transitions(tmp_path):
    fields = _d4rl_fields()
    path = write_d4rl(
        tmp_path / "hopper-medium-v2.hdf5", **fields, infos={"qpos": np.arange(10.0)}, metadata={"algorithm": "SAC"}
    )
    t = load_transitions(str(path))
    assert t.format == "d4rl" and t.env_spec is None and t.source == path.resolve()
    # rows 7 (timeout) and 9 (end of file) have no known next observation: dropped, as d4rl's qlearning_dataset
    kept = [0, 1, 2, 3, 4, 5, 6, 8]
    np.testing.assert_array_equal(t.observations, fields["observations"][kept])
    np.testing.assert_array_equal(t.actions, fields["actions"][kept])
    np.testing.assert_array_equal(t.rewards, fields["rewards"][kept])
    np.testing.assert_array_equal(t.infos["qpos"], np.asarray(kept, dtype=float))
    np.testing.assert_array_equal(t.episode_starts, [0, 4, 7])
    _assert_shifted(t)
    np.testing.assert_array_equal(t.next_observations[3], fields["observations"][3])  # terminal: itself
    np.testing.assert_array_equal(t.terminals, np.isin(np.arange(8), [3]))
    np.testing.assert_array_equal(t.timeouts, np.isin(np.arange(8), [6, 7]))  # each cut episode ends in a timeout
    assert (t.ref_min_score, t.ref_max_score) == REF_SCORES["hopper"]  # from the file name
    assert t.observation_space == gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
    assert t.action_space == gym.spaces.Box(-1.0, 1.0, (2,), np.float32)


def test_d4rl_file_with_next_observations_keeps_every_row(tmp_path):
    fields = _d4rl_fields()
    next_obs = fields["observations"] + 100
    meta = {"ref_min_score": -5.0, "ref_max_score": 5.0, "name": "walker2d-expert-v2"}
    path = write_d4rl(tmp_path / "data.h5", **fields, next_observations=next_obs, metadata=meta)
    t = load_transitions(str(path))
    assert len(t) == 10 and t.dataset_id == "walker2d-expert-v2"
    np.testing.assert_array_equal(t.next_observations, next_obs)
    np.testing.assert_array_equal(t.episode_starts, [0, 4, 8])
    assert (t.ref_min_score, t.ref_max_score) == (-5.0, 5.0)  # the file's own scores beat the family table


def test_malformed_d4rl_file_is_one_line(tmp_path):
    path = tmp_path / "bad.hdf5"
    with h5py.File(path, "w") as f:
        for key, value in _d4rl_fields().items():
            if key != "actions":
                f[key] = value
    with pytest.raises(DatasetError) as error:
        load_transitions(str(path))
    assert "\n" not in str(error.value) and "'actions' is missing" in str(error.value)
    with pytest.raises(DatasetError, match="does not exist"):
        load_transitions(str(tmp_path / "missing.hdf5"))


# --- dataset ids -----------------------------------------------------------------------------------


def test_sequence_dataset_id_is_what_collect_writes():
    assert sequence_dataset_id("retain", "cw10", "hammer", "expert") == "retain/cw10/hammer/expert-v0"
    assert sequence_dataset_id("retain", None, "pointmass", "medium") == "retain/pointmass/medium-v0"
    for bad in (("retain", "cw10", "a/b", "expert"), ("retain", "", "hammer", "expert"), ("re tain", None, "x", "y")):
        with pytest.raises(DatasetError):
            sequence_dataset_id(*bad)
    cfg = load_config("collect", ["sequence=cw10", "dataset.quality=medium", "run_dir=unused"])
    assert dataset_id_for(cfg, "hammer") == sequence_dataset_id("retain", "cw10", "hammer", "medium")
    cfg = load_config("collect", ["run_dir=unused"])
    assert dataset_id_for(cfg, "pointmass") == sequence_dataset_id("retain", None, "pointmass", "expert")
