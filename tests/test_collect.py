"""`retain collect` and the Minari datasets it writes: determinism across workers, metadata,
reference scores, noise knobs, action-free export, each expert family, and malformed datasets."""

import shutil

import h5py
import minari
import numpy as np
import pytest

from envs.collect import run_collect
from envs.datasets import data_root, dataset_info, list_datasets, load_dataset
from envs.transitions import load_transitions
from retain.config import load_config
from retain.errors import DatasetError
from tests.conftest import error_lines


@pytest.fixture(autouse=True)
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("RETAIN_DATA", str(tmp_path / "data"))
    return tmp_path / "data"


def collect(tmp_path, name, *overrides):
    return run_collect(
        load_config("collect", [f"run_dir={tmp_path / name}", "progress=false", "dataset.ref_episodes=2", *overrides])
    )


def test_point_mass_dataset_reads_back_with_metadata(tmp_path):
    summary = collect(tmp_path, "a", "episodes=6", "workers=1")
    info = dataset_info("retain/pointmass/expert-v0")
    assert info["episodes"] == 6 and info["steps"] == 600 and info["success_rate"] == 1.0
    assert info["expert"] == "pd:pointmass" and info["env_spec"]["id"] == "retain/PointMass-v0"
    assert info["ref_min_score"] < info["ref_max_score"]
    assert summary["datasets"]["pointmass"]["id"] == "retain/pointmass/expert-v0"
    # Minari itself reads it, and normalizes scores with the reference scores retain stored
    import os

    os.environ["MINARI_DATASETS_PATH"] = str(data_root())
    dataset = minari.load_dataset("retain/pointmass/expert-v0")
    assert dataset.total_episodes == 6 and minari.get_normalized_score(
        dataset, np.array(info["ref_max_score"])
    ) == pytest.approx(1.0)
    assert [d["id"] for d in list_datasets()] == ["retain/pointmass/expert-v0"]


def test_datasets_do_not_depend_on_the_number_of_workers(tmp_path):
    collect(tmp_path, "one", "episodes=5", "workers=1", "dataset.quality=one", "expert.sigma=0.3", "expert.epsilon=0.1")
    collect(tmp_path, "two", "episodes=5", "workers=2", "dataset.quality=two", "expert.sigma=0.3", "expert.epsilon=0.1")
    a, b = load_dataset("retain/pointmass/one-v0"), load_dataset("retain/pointmass/two-v0")
    for ea, eb in zip(a.iterate_episodes(), b.iterate_episodes(), strict=True):
        np.testing.assert_array_equal(ea.observations, eb.observations)
        np.testing.assert_array_equal(ea.actions, eb.actions)


def test_noise_knobs_change_the_data(tmp_path):
    collect(tmp_path, "clean", "episodes=2", "workers=1")
    collect(tmp_path, "noisy", "episodes=2", "workers=1", "expert.sigma=0.5", "dataset.quality=noisy")
    collect(tmp_path, "random", "episodes=2", "workers=1", "expert.epsilon=1.0", "dataset.quality=random")
    clean, noisy, rand = (load_dataset(f"retain/pointmass/{q}-v0") for q in ("expert", "noisy", "random"))
    assert not np.allclose(clean[0].actions, noisy[0].actions)
    assert np.all(np.abs(noisy[0].actions) <= 1.0)
    assert dataset_info("retain/pointmass/noisy-v0")["expert"] == "pd:pointmass+sigma0.5"
    assert (
        dataset_info("retain/pointmass/random-v0")["success_rate"]
        < 0.5
        < dataset_info("retain/pointmass/expert-v0")["success_rate"]
    )


def test_pixel_task_list_with_action_free_export(tmp_path):
    summary = collect(
        tmp_path, "px", "sequence=pointmass4_pixels", "episodes=2", "workers=2", "dataset.action_free=true"
    )
    assert sorted(summary["datasets"]) == ["goal0", "goal2", "goal4", "goal6"]
    dataset = load_dataset("retain/pointmass4_pixels/goal2/expert-v0")
    assert dataset[0].observations.shape == (101, 64, 64, 3) and dataset[0].observations.dtype == np.uint8
    with h5py.File(data_root() / "retain/pointmass4_pixels/goal2/expert-v0/observations_only.hdf5") as f:
        assert f["observations"].shape == (202, 64, 64, 3) and list(f["episode_starts"][()]) == [0, 101]
        assert "actions" not in f


def test_metaworld_scripted_expert(tmp_path, monkeypatch):
    collect(tmp_path, "mw", "env=metaworld_reach", "episodes=2", "workers=1")
    info = dataset_info("retain/reach/expert-v0")
    assert info["success_rate"] == 1.0 and info["expert"] == "metaworld:reach-v3" and info["steps"] == 400
    # Minari's own API rebuilds the Meta-World task (env_name, goal variant, episode limit) from the dataset
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(data_root()))
    dataset = minari.load_dataset("retain/reach/expert-v0")
    env = dataset.recover_environment(eval_env=True)
    assert env.observation_space == dataset.observation_space and env.action_space == dataset.action_space
    seed = next(iter(dataset.storage.get_episode_metadata([0])))["seed"]
    obs, _ = env.reset(seed=seed)
    episode = dataset[0]
    np.testing.assert_allclose(obs, episode.observations[0], atol=1e-6)
    for action in episode.actions[:5]:
        obs, *_ = env.step(action)
    np.testing.assert_allclose(obs, episode.observations[5], atol=1e-5)
    env.close()


def test_sb3_expert_is_trained_then_rolled_out(tmp_path):
    summary = collect(
        tmp_path, "sb3", "env=cartpole", "expert.kind=sb3", "expert.sb3.steps=2048", "episodes=2", "workers=1"
    )
    assert summary["datasets"]["cartpole"]["expert"] == "sb3:PPO:2048"
    assert (tmp_path / "sb3" / "experts" / "cartpole" / "policy.safetensors").exists()
    # a trained expert is reused by path
    collect(
        tmp_path,
        "again",
        "env=cartpole",
        "expert.kind=sb3",
        f"expert.sb3.path={tmp_path / 'sb3' / 'experts' / 'cartpole'}",
        "episodes=1",
        "workers=1",
        "dataset.quality=again",
    )
    assert dataset_info("retain/cartpole/again-v0")["episodes"] == 1


def test_cli_data_info_and_errors(tmp_path, cli, data_dir):
    env = {"RETAIN_DATA": str(data_dir)}
    collect(tmp_path, "a", "episodes=2", "workers=1")
    import os
    import subprocess

    from tests.conftest import RETAIN

    def run(*args):
        return subprocess.run([RETAIN, *args], capture_output=True, text=True, env={**os.environ, **env}, cwd=tmp_path)

    shown = run("data", "info", "retain/pointmass/expert-v0")
    assert shown.returncode == 0 and "episodes" in shown.stdout and "pd:pointmass" in shown.stdout
    assert "retain/pointmass/expert-v0" in run("data", "list").stdout
    missing = run("data", "info", "retain/nothing/here-v0")
    assert missing.returncode == 2 and "not found" in error_lines(missing)[0]
    again = run("collect", "episodes=2", "run_dir=again", "progress=false")
    assert (
        again.returncode == 2
        and "already exists" in error_lines(again)[0]
        and "overwrite=true" in error_lines(again)[0]
    )
    assert not (tmp_path / "again").exists()


@pytest.fixture
def dataset_path(tmp_path):
    collect(tmp_path, "base", "episodes=3", "workers=1")
    return data_root() / "retain/pointmass/expert-v0"


def _edit_episode(path, edit):
    with h5py.File(path / "data" / "main_data.hdf5", "r+") as f:
        edit(f["episode_1"])


def _replace(group, name, data):
    del group[name]
    group.create_dataset(name, data=data)


MALFORMED = {
    "missing data folder": lambda p: shutil.rmtree(p / "data"),
    "missing metadata": lambda p: (p / "data" / "metadata.json").unlink(),
    "corrupt metadata": lambda p: (p / "data" / "metadata.json").write_text("{"),
    "truncated hdf5": lambda p: (p / "data" / "main_data.hdf5").write_bytes(
        (p / "data" / "main_data.hdf5").read_bytes()[:2000]
    ),
    "missing actions": lambda p: _edit_episode(p, lambda g: g.__delitem__("actions")),
    "length mismatch": lambda p: _edit_episode(p, lambda g: _replace(g, "actions", g["actions"][()][:-5])),
    "nan observations": lambda p: _edit_episode(
        p, lambda g: _replace(g, "observations", np.full_like(g["observations"][()], np.nan))
    ),
    "inf rewards": lambda p: _edit_episode(p, lambda g: _replace(g, "rewards", np.full_like(g["rewards"][()], np.inf))),
    "string rewards": lambda p: _edit_episode(
        p, lambda g: _replace(g, "rewards", np.array([b"x"] * len(g["rewards"][()])))
    ),
    "terminations too short": lambda p: _edit_episode(
        p, lambda g: _replace(g, "terminations", g["terminations"][()][:3])
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_datasets_get_one_clear_error(dataset_path, case):
    MALFORMED[case](dataset_path)
    with pytest.raises(DatasetError) as error:
        load_dataset("retain/pointmass/expert-v0")
    message = str(error.value)
    assert "\n" not in message and ("retain/pointmass/expert-v0" in message or str(dataset_path) in message), message


def test_metaworld_task_list_in_two_workers(tmp_path):
    summary = collect(
        tmp_path, "cw", "sequence=cw10", "episodes=2", "workers=2", "max_episode_steps=60", "dataset.ref_episodes=1"
    )
    assert len(summary["datasets"]) == 10
    info = dataset_info("retain/cw10/hammer/expert-v0")
    assert (
        info["steps"] == 120 and info["env_spec"]["max_episode_steps"] == 60 and info["expert"] == "metaworld:hammer-v3"
    )


def test_babyai_missions_are_kept_as_text(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(data_root()))
    collect(tmp_path, "baby", "sequence=babyai4", "episodes=3", "workers=1")
    dataset = load_dataset("retain/babyai4/put_next_local/expert-v0")
    episode = dataset[0]
    missions = episode.observations["mission"]
    assert (
        isinstance(missions[0], str) and missions[0].startswith("put the") and len(missions) == len(episode.actions) + 1
    )
    assert episode.observations["image"].shape[1:] == (7, 7, 3)
    info = dataset_info("retain/babyai4/put_next_local/expert-v0")
    assert info["success_rate"] == 1.0 and info["expert"] == "babyai_bot"
    # as flat transitions: a dict of arrays, missions as str arrays, next observations shifted inside episodes
    t = load_transitions("retain/babyai4/put_next_local/expert-v0")
    n = info["steps"]
    assert t.observations["image"].shape == (n, 7, 7, 3) and t.observations["direction"].shape == (n,)
    assert t.observations["mission"].dtype.kind == "U" and t.observations["mission"][0] == missions[0]
    assert t.actions.shape == (n,) and len(t.episode_starts) == 3 and t.terminals.sum() == 3
    last = np.append(t.episode_starts[1:], n) - 1
    inside = np.setdiff1d(np.arange(n), last)
    for key in ("image", "direction", "mission"):
        np.testing.assert_array_equal(t.next_observations[key][inside], t.observations[key][inside + 1])
    assert t.observation_space == dataset.observation_space and t.env_spec["id"].startswith("BabyAI-")
    env = minari.load_dataset("retain/babyai4/put_next_local/expert-v0").recover_environment()
    assert env.observation_space == dataset.observation_space and isinstance(env.reset(seed=0)[0]["mission"], str)


def test_random_expert_and_info_by_path(tmp_path):
    collect(tmp_path, "rand", "expert.kind=random", "dataset.quality=random", "episodes=2", "workers=1")
    path = data_root() / "retain/pointmass/random-v0"
    info = dataset_info(str(path))  # a directory works as well as an id
    assert info["expert"] == "random" and info["episodes"] == 2
