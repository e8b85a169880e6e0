"""D4RL-layout HDF5 files (envs/d4rl.py): exact round trips, d4rl's qlearning_dataset, episode
boundaries, normalized scores, and one clear DatasetError (file and field named) per malformed file."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from envs.d4rl import (
    REF_SCORES,
    episodes,
    normalized_score,
    qlearning_dataset,
    read_d4rl,
    ref_scores,
    write_d4rl,
)
from retain.errors import DatasetError, UserError

N, OBS_DIM, ACT_DIM = 6, 3, 2


def _fields(n: int = N) -> dict[str, np.ndarray]:
    """A valid dataset: two episodes, the first ends at a terminal (row 2), the second at a timeout (row 4)."""
    return {
        "observations": np.arange(n * OBS_DIM, dtype=np.float32).reshape(n, OBS_DIM),
        "actions": np.linspace(-1, 1, n * ACT_DIM, dtype=np.float32).reshape(n, ACT_DIM),
        "rewards": np.arange(n, dtype=np.float32) / 2,
        "terminals": np.array([0, 0, 1, 0, 0, 0][:n], dtype=bool),
        "timeouts": np.array([0, 0, 0, 0, 1, 0][:n], dtype=bool),
    }


def _raw_file(path: Path, **overrides: object) -> Path:
    """A file written with h5py directly (so it can break the layout); an override of None drops the field."""
    fields = {**_fields(), **overrides}
    with h5py.File(path, "w") as f:
        for key, value in fields.items():
            if value is not None:
                f[key] = value
    return path


# --- writing and reading -------------------------------------------------------------------------


def test_round_trip_is_exact(tmp_path):
    fields = _fields()
    next_obs = fields["observations"] + 100
    infos = {"qpos": np.random.default_rng(0).normal(size=(N, 4)), "goal": np.arange(N, dtype=np.int32)}
    weight = np.ones((2, 3), dtype=np.float32)
    metadata = {"algorithm": "SAC", "quality": "medium", "iteration": 5, "lr": 3e-4, "policy/fc0/weight": weight}
    path = write_d4rl(
        tmp_path / "sub" / "data.hdf5", **fields, next_observations=next_obs, infos=infos, metadata=metadata
    )

    data = read_d4rl(path)
    expected = {**fields, "next_observations": next_obs, **{f"infos/{k}": v for k, v in infos.items()}}
    assert set(data) == set(expected) | {f"metadata/{k}" for k in metadata}
    for key, value in expected.items():
        assert data[key].dtype == value.dtype, key
        np.testing.assert_array_equal(data[key], value, err_msg=key)
    assert data["metadata/algorithm"] == "SAC" and data["metadata/quality"] == "medium"
    assert data["metadata/iteration"] == 5 and isinstance(data["metadata/iteration"], int)
    assert data["metadata/lr"] == 3e-4
    np.testing.assert_array_equal(data["metadata/policy/fc0/weight"], weight)
    assert [p.name for p in path.parent.iterdir()] == ["data.hdf5"]  # no temp file left behind


def test_write_stores_the_d4rl_dtypes(tmp_path):
    fields = _fields()
    fields = {
        **fields,
        "observations": fields["observations"].astype(np.float64),
        "terminals": fields["terminals"].astype(int),
    }
    with h5py.File(write_d4rl(tmp_path / "d.hdf5", **fields), "r") as f:
        assert {k: f[k].dtype for k in f} == {
            "observations": np.float32,
            "actions": np.float32,
            "rewards": np.float32,
            "terminals": bool,
            "timeouts": bool,
        }


@pytest.mark.parametrize("flag_dtype", [np.float32, np.float64, np.int64, np.uint8])
def test_read_accepts_0_1_flags(tmp_path, flag_dtype):
    fields = _fields()
    path = _raw_file(
        tmp_path / "d.hdf5",
        terminals=fields["terminals"].astype(flag_dtype),
        timeouts=fields["timeouts"].astype(flag_dtype),
    )
    data = read_d4rl(path)
    assert data["terminals"].dtype == bool and data["timeouts"].dtype == bool
    np.testing.assert_array_equal(data["terminals"], fields["terminals"])
    np.testing.assert_array_equal(data["timeouts"], fields["timeouts"])


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"actions": np.zeros((N - 1, ACT_DIM))}, "actions"),
        ({"rewards": np.zeros((N, 1))}, "rewards"),
        ({"observations": np.full((N, OBS_DIM), np.nan)}, "observations"),
        ({"terminals": np.full(N, 2)}, "terminals"),
        ({"next_observations": np.zeros((N, OBS_DIM + 1))}, "next_observations"),
        ({"infos": {"qpos": np.zeros(N - 1)}}, "infos/qpos"),
        ({"infos": {"qpos": np.array(["a"] * N)}}, "infos/qpos"),
        ({"metadata": {"policy": "sac", "policy/fc0/weight": np.ones(2)}}, "metadata/policy"),
        ({"metadata": {"policy": None}}, "metadata/policy"),
    ],
)
def test_write_refuses_bad_fields_before_writing(tmp_path, override, field):
    path = tmp_path / "d.hdf5"
    with pytest.raises(ValueError, match=field):
        write_d4rl(path, **{**_fields(), **override})
    assert list(tmp_path.iterdir()) == []


def test_a_crash_while_writing_keeps_the_old_file(tmp_path, monkeypatch):
    path = write_d4rl(tmp_path / "d.hdf5", **_fields())
    before = path.read_bytes()

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(h5py.Group, "create_dataset", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        write_d4rl(path, **_fields(), metadata={"algorithm": "new"})
    assert path.read_bytes() == before
    assert list(tmp_path.iterdir()) == [path]


# --- malformed files -----------------------------------------------------------------------------


def _truncated(path: Path) -> Path:
    write_d4rl(path, **_fields())
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


MALFORMED = {
    # case: (make the file at the path, words the message must hold besides the path)
    "missing file": (lambda p: p, ["does not exist"]),
    "directory": (lambda p: p.mkdir() or p, ["not a file"]),
    "truncated": (_truncated, ["truncated"]),
    "not hdf5": (lambda p: p.write_text("observations,actions\n1,2\n") and p, ["not a readable HDF5 file"]),
    "missing actions": (lambda p: _raw_file(p, actions=None), ["'actions'", "missing"]),
    "missing timeouts": (lambda p: _raw_file(p, timeouts=None), ["'timeouts'", "missing"]),
    "length mismatch": (lambda p: _raw_file(p, rewards=np.zeros(N - 1, np.float32)), ["'rewards'", "5 rows", "6"]),
    "nan observation": (
        lambda p: _raw_file(p, observations=np.where(np.eye(N, OBS_DIM) > 0, np.nan, 1.0)),
        ["'observations'", "non-finite", "nan"],
    ),
    "inf reward": (lambda p: _raw_file(p, rewards=np.array([0, 0, 0, np.inf, 0, 0])), ["'rewards'", "index 3", "inf"]),
    "string actions": (lambda p: _raw_file(p, actions=np.full((N, ACT_DIM), b"0.5")), ["'actions'", "dtype"]),
    "vlen string actions": (
        lambda p: _raw_file(p, actions=np.array(["a"] * N, dtype=h5py.string_dtype())),
        ["'actions'", "dtype"],
    ),
    "1-D observations": (
        lambda p: _raw_file(p, observations=np.zeros(N, np.float32)),
        ["'observations'", "shape (6,)"],
    ),
    "2-D rewards": (lambda p: _raw_file(p, rewards=np.zeros((N, 1), np.float32)), ["'rewards'", "shape (6, 1)"]),
    "terminal 2": (lambda p: _raw_file(p, terminals=np.array([0, 0, 2, 0, 0, 0])), ["'terminals'", "2", "index 2"]),
    "timeout 0.5": (lambda p: _raw_file(p, timeouts=np.full(N, 0.5)), ["'timeouts'", "0.5"]),
    "empty": (
        lambda p: _raw_file(p, **{k: v[:0] for k, v in _fields().items()}),
        ["'observations'", "empty"],
    ),
    "next_observations shape": (
        lambda p: _raw_file(p, next_observations=np.zeros((N, OBS_DIM + 1), np.float32)),
        ["'next_observations'", "shape"],
    ),
    "infos length": (lambda p: _raw_file(p, **{"infos/qpos": np.zeros(N + 1)}), ["'infos/qpos'", "7 rows"]),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_file_raises_one_clear_dataset_error(tmp_path, case):
    make, words = MALFORMED[case]
    path = make(tmp_path / "data.hdf5")
    with pytest.raises(DatasetError) as info:
        read_d4rl(path)
    message = str(info.value)
    assert str(path) in message
    for word in words:
        assert word.lower() in message.lower(), (word, message)
    assert "\n" not in message and info.value.fix  # one line, with what to do about it
    assert isinstance(info.value, UserError)  # so the CLI prints it as one line


# --- qlearning_dataset and episodes ---------------------------------------------------------------


def test_qlearning_dataset_by_hand():
    data = _fields()
    obs = data["observations"]
    # rows 0..4 (the last row has no next observation); row 4 is a timeout, so it is dropped
    q = qlearning_dataset(data)
    np.testing.assert_array_equal(q["observations"], obs[[0, 1, 2, 3]])
    np.testing.assert_array_equal(q["next_observations"], obs[[1, 2, 3, 4]])
    np.testing.assert_array_equal(q["actions"], data["actions"][[0, 1, 2, 3]])
    np.testing.assert_array_equal(q["rewards"], [0.0, 0.5, 1.0, 1.5])
    np.testing.assert_array_equal(q["terminals"], [False, False, True, False])  # the terminal row is kept

    q = qlearning_dataset(data, terminate_on_end=True)  # keeps the timeout row, its flag stays False (as d4rl)
    np.testing.assert_array_equal(q["observations"], obs[:5])
    np.testing.assert_array_equal(q["next_observations"], obs[1:6])
    np.testing.assert_array_equal(q["terminals"], [False, False, True, False, False])

    q = qlearning_dataset({**data, "next_observations": obs + 100})  # the file's next observations win
    np.testing.assert_array_equal(q["next_observations"], obs[[0, 1, 2, 3]] + 100)
    assert {k: v.dtype for k, v in q.items()} == {
        "observations": np.float32,
        "actions": np.float32,
        "next_observations": np.float32,
        "rewards": np.float32,
        "terminals": bool,
    }


def _d4rl_loop(dataset: dict, terminate_on_end: bool) -> dict:
    """d4rl.qlearning_dataset's loop for datasets with timeouts, written out as d4rl runs it."""
    out: dict[str, list] = {k: [] for k in ("observations", "actions", "next_observations", "rewards", "terminals")}
    for i in range(len(dataset["rewards"]) - 1):
        if (not terminate_on_end) and dataset["timeouts"][i]:
            continue
        out["observations"].append(dataset["observations"][i].astype(np.float32))
        out["next_observations"].append(dataset["observations"][i + 1].astype(np.float32))
        out["actions"].append(dataset["actions"][i].astype(np.float32))
        out["rewards"].append(dataset["rewards"][i].astype(np.float32))
        out["terminals"].append(bool(dataset["terminals"][i]))
    return {k: np.array(v) for k, v in out.items()}


@pytest.mark.parametrize("terminate_on_end", [False, True])
def test_qlearning_dataset_matches_d4rl_on_random_data(terminate_on_end):
    rng = np.random.default_rng(1)
    n = 500
    data = {
        "observations": rng.normal(size=(n, 4)),
        "actions": rng.normal(size=(n, 2)),
        "rewards": rng.normal(size=n),
        "terminals": rng.random(n) < 0.05,
        "timeouts": rng.random(n) < 0.05,
    }
    ours, theirs = qlearning_dataset(data, terminate_on_end), _d4rl_loop(data, terminate_on_end)
    assert set(ours) == set(theirs)
    for key in theirs:
        assert ours[key].dtype == theirs[key].dtype, key
        np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)


def test_episodes():
    data = _fields()
    assert episodes(data) == [slice(0, 3), slice(3, 5), slice(5, 6)]  # the last, partial episode included
    data["timeouts"][-1] = True
    assert episodes(data) == [slice(0, 3), slice(3, 5), slice(5, 6)]  # no empty episode after the last end
    assert episodes({"terminals": np.zeros(4, bool), "timeouts": np.zeros(4, bool)}) == [slice(0, 4)]
    assert episodes({"terminals": np.zeros(0, bool), "timeouts": np.zeros(0, bool)}) == []
    returns = [float(data["rewards"][s].sum()) for s in episodes(data)]
    assert returns == [1.5, 3.5, 2.5]


# --- normalized scores ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "family"),
    [
        ("hopper-medium-v2", "hopper"),
        ("halfcheetah-expert-v2", "halfcheetah"),
        ("walker2d-medium-replay-v2", "walker2d"),
        ("ant-random-v0", "ant"),
        ("Hopper-v5", "hopper"),
        ("HalfCheetah-v4", "halfcheetah"),
        ("Walker2d-v5", "walker2d"),
        ("Ant-v4", "ant"),
    ],
)
def test_ref_scores_parse_names(name, family):
    assert ref_scores(name) == REF_SCORES[family]


@pytest.mark.parametrize("name", ["antmaze-umaze-v2", "bullet-hopper-medium-v0", "pen-human-v1", "CartPole-v1", ""])
def test_ref_scores_unknown_family_lists_the_known_ones(name):
    with pytest.raises(ValueError, match="known families: ant, halfcheetah, hopper, walker2d"):
        ref_scores(name)


def test_normalized_score_known_values():
    assert normalized_score("hopper-medium-v2", 3234.3) == pytest.approx(100.0)
    assert normalized_score("hopper-medium-v2", -20.272305) == pytest.approx(0.0)
    assert normalized_score("Hopper-v5", (3234.3 - 20.272305) / 2) == pytest.approx(50.0)
    assert normalized_score("halfcheetah-expert-v2", 12135.0) == pytest.approx(100.0)
    assert normalized_score("walker2d-random-v2", 1.629008) == pytest.approx(0.0)
    # d4rl.get_normalized_score("ant-medium-v2", 3000) * 100
    assert normalized_score("ant-medium-v2", 3000.0) == pytest.approx(100 * (3000 + 325.6) / (3879.7 + 325.6))
    np.testing.assert_allclose(normalized_score("ant-medium-v2", np.array([-325.6, 3879.7])), [0.0, 100.0])
