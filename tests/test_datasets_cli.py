"""Through the real CLI: `retain data info` on D4RL-layout files, and `retain collect` checking every value
and path of its config before any work starts (one line on stderr, exit 2, no run directory)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from envs.collect import run_collect
from envs.d4rl import REF_SCORES, write_d4rl
from retain.config import load_config
from retain.errors import ConfigError, DatasetError, UserError
from tests.conftest import error_lines


def _d4rl(path, n: int = 10, **kwargs):
    """Three episodes (terminal at row 3, timeout at row 7, a partial one), success in the first only."""
    rng = np.random.default_rng(1)
    return write_d4rl(
        path,
        observations=rng.normal(size=(n, 5)),
        actions=rng.uniform(-1, 1, size=(n, 3)),
        rewards=np.ones(n),
        terminals=np.isin(np.arange(n), [3]),
        timeouts=np.isin(np.arange(n), [7]),
        infos={"success": np.isin(np.arange(n), [3])},
        **kwargs,
    )


def test_data_info_reads_d4rl_files(cli, tmp_path):
    _d4rl(tmp_path / "halfcheetah-medium-v2.hdf5", metadata={"algorithm": "SAC", "iteration": 3})
    shown = cli("data", "info", "halfcheetah-medium-v2.hdf5")
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    assert "d4rl" in text and "SAC" in text and "Box(-inf, inf, (5,), float32)" in text, text
    # returns 4, 4, 2 (the partial episode), lengths the same; 1 success in 3 episodes
    assert "3.333 ± 0.943 (min 2.000, max 4.000)" in text and "3.3 (min 2, max 4)" in text and "0.333" in text, text
    low, high = REF_SCORES["halfcheetah"]
    assert f"min {low}, max {high}" in text, text

    as_json = json.loads(cli("data", "info", "halfcheetah-medium-v2.hdf5", "--json").stdout)
    assert as_json["format"] == "d4rl" and as_json["episodes"] == 3 and as_json["steps"] == 10
    assert as_json["return"] == {"mean": 10 / 3, "std": pytest.approx(np.std([4, 4, 2])), "min": 2.0, "max": 4.0}
    assert as_json["episode_length"] == {"mean": 10 / 3, "min": 2, "max": 4}
    assert as_json["success_rate"] == pytest.approx(1 / 3)
    assert as_json["action_space"] == "Box(-1.0, 1.0, (3,), float32)" and as_json["expert"] == "SAC"
    assert (as_json["ref_min_score"], as_json["ref_max_score"]) == (low, high)
    assert as_json["metadata"] == {"algorithm": "SAC", "iteration": 3}

    # a .h5 file without a known family or success flags: no reference scores, success "–"
    write_d4rl(tmp_path / "mine.h5", np.zeros((4, 2)), np.zeros((4, 1)), np.zeros(4), [0, 0, 0, 1], [0, 0, 0, 0])
    plain = json.loads(cli("data", "info", "mine.h5", "--json").stdout)
    assert plain["ref_min_score"] is None and plain["success_rate"] is None and plain["episodes"] == 1
    assert "–" in cli("data", "info", "mine.h5").stdout


@pytest.mark.parametrize(
    "name, content, expected",
    [
        ("truncated.hdf5", None, "not a readable HDF5 file"),
        ("notes.h5", b"these are not HDF5 bytes", "not a readable HDF5 file"),
        ("missing.hdf5", False, "does not exist"),
        ("no_actions.hdf5", "no_actions", "'actions' is missing"),
    ],
)
def test_data_info_on_malformed_d4rl_files_is_one_line(cli, tmp_path, name, content, expected):
    path = tmp_path / name
    if content is None:
        full = _d4rl(tmp_path / "full.hdf5").read_bytes()
        path.write_bytes(full[: len(full) // 2])
    elif content == "no_actions":
        import h5py

        with h5py.File(path, "w") as f:
            for key in ("observations", "rewards", "terminals", "timeouts"):
                f[key] = np.zeros((3, 2)) if key == "observations" else np.zeros(3)
    elif content is not False:
        path.write_bytes(content)
    shown = cli("data", "info", name)
    lines = error_lines(shown)
    assert shown.returncode == 2 and len(lines) == 1 and "Traceback" not in shown.stderr, shown.stderr
    assert lines[0].startswith("retain: error: ") and expected in lines[0] and " — " in lines[0], lines[0]


def test_collect_rejects_a_missing_sb3_expert_before_any_work(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("RETAIN_DATA", str(tmp_path / "data"))
    shown = cli("collect", "expert.kind=sb3", "expert.sb3.path=/missing", "run_dir=out", "progress=false")
    bad = cli("collect", "expert.epsilon=1.5", "run_dir=out2", "progress=false")
    for proc, expected in ((shown, "expert.sb3.path=/missing does not exist"), (bad, "expert.epsilon=1.5")):
        lines = error_lines(proc)
        assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert expected in lines[0] and " — " in lines[0], lines[0]
    assert not (tmp_path / "out").exists() and not (tmp_path / "out2").exists()
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").rglob("metadata.json"))


def _sb3_folder(path, policy: bytes | None = b"", meta: dict | str | None = None):
    path.mkdir()
    if policy is not None:
        if policy == b"":
            import torch
            from safetensors.torch import save_file

            save_file({"x": torch.zeros(1)}, path / "policy.safetensors")  # a valid file of the wrong policy
        else:
            (path / "policy.safetensors").write_bytes(policy)
    if meta is not None:
        text = meta if isinstance(meta, str) else json.dumps(meta)
        (path / "expert.json").write_text(text)
    return path


META = {"algo": "PPO", "policy": "MlpPolicy", "policy_kwargs": {}, "steps": 1, "seed": 0}


@pytest.mark.parametrize(
    "overrides, error, expected",
    [
        (["episodes=0"], ConfigError, "episodes=0"),
        (["workers=0"], ConfigError, "workers=0"),
        (["expert.sigma=-0.1"], ConfigError, "expert.sigma=-0.1"),
        (["expert.epsilon=-0.5"], ConfigError, "expert.epsilon=-0.5"),
        (["dataset.ref_episodes=0"], ConfigError, "dataset.ref_episodes=0"),
        (["max_episode_steps=0"], ConfigError, "max_episode_steps=0"),
        (["expert.kind=oracle"], ConfigError, "unknown expert.kind='oracle'"),
        (["expert.kind=metaworld"], ConfigError, "drives Meta-World/MT1 tasks only"),
        (["expert.kind=sb3", "expert.sb3.algo=XYZ"], ConfigError, "unknown expert.sb3.algo='XYZ'"),
        (["expert.kind=sb3", "expert.sb3.steps=0"], ConfigError, "expert.sb3.steps=0"),
        (["env=cartpole", "expert.kind=random", "expert.sigma=0.2"], ConfigError, "needs continuous actions"),
        (["sequence=babyai4", "dataset.action_free=true"], ConfigError, "dict observations"),
        (["dataset.quality=a b"], DatasetError, "cannot be part of a dataset id"),
        (["expert.kind=sb3", "expert.sb3.path={tmp}/nothing"], ConfigError, "does not exist"),
        (["expert.kind=sb3", "expert.sb3.path={tmp}/file.txt"], ConfigError, "is a file, not a folder"),
        (["expert.kind=sb3", "expert.sb3.path={tmp}/no_json"], ConfigError, "holds no expert.json"),
        (["expert.kind=sb3", "expert.sb3.path={tmp}/no_policy"], ConfigError, "holds no policy.safetensors"),
        (["expert.kind=sb3", "expert.sb3.path={tmp}/bad_json"], ConfigError, "expert.json is not valid JSON"),
        (["expert.kind=sb3", "expert.sb3.path={tmp}/short_json"], ConfigError, "expert.json lacks policy_kwargs"),
        (["expert.kind=sb3", "expert.sb3.path={tmp}/wrong_policy"], ConfigError, "does not load as an expert"),
        (["expert.kind=sb3", "expert.sb3.path={tmp}/corrupt_policy"], ConfigError, "does not load as an expert"),
    ],
)
def test_collect_checks_its_config_before_the_run_directory(tmp_path, monkeypatch, overrides, error, expected):
    monkeypatch.setenv("RETAIN_DATA", str(tmp_path / "data"))
    (tmp_path / "file.txt").write_text("x")
    _sb3_folder(tmp_path / "no_json")
    _sb3_folder(tmp_path / "no_policy", policy=None, meta=META)
    _sb3_folder(tmp_path / "bad_json", meta="{")
    _sb3_folder(tmp_path / "short_json", meta={"algo": "PPO", "policy": "MlpPolicy", "steps": 1})
    _sb3_folder(tmp_path / "wrong_policy", meta=META)
    _sb3_folder(tmp_path / "corrupt_policy", policy=b"not safetensors", meta=META)
    run_dir = tmp_path / "run"
    cfg = load_config("collect", [f"run_dir={run_dir}", "progress=false", *(o.format(tmp=tmp_path) for o in overrides)])
    with pytest.raises(error) as raised:
        run_collect(cfg)
    assert isinstance(raised.value, UserError) and raised.value.fix
    assert expected in str(raised.value) and "\n" not in str(raised.value), str(raised.value)
    assert not run_dir.exists() and not (tmp_path / "data" / "retain").exists()


def test_collect_refuses_an_existing_dataset_before_collecting(tmp_path, monkeypatch):
    monkeypatch.setenv("RETAIN_DATA", str(tmp_path / "data"))
    args = ["progress=false", "episodes=1", "workers=1", "dataset.ref_episodes=1", "env.max_episode_steps=5"]
    run_collect(load_config("collect", [f"run_dir={tmp_path / 'a'}", *args]))
    with pytest.raises(DatasetError, match="already exists.*overwrite=true"):
        run_collect(load_config("collect", [f"run_dir={tmp_path / 'b'}", *args]))
    assert not (tmp_path / "b").exists()
    run_collect(load_config("collect", [f"run_dir={tmp_path / 'c'}", "dataset.overwrite=true", *args]))
