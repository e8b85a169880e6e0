"""D4RL-layout HDF5 datasets, read and written without the ``d4rl`` package.

``d4rl`` needs gym 0.24 and mujoco-py and does not import on a modern stack, so retain supports D4RL
by its file format and its normalized scores. A D4RL file holds, at the top level, one row per
transition:

    observations       (N, obs_dim) float32
    actions            (N, act_dim) float32
    rewards            (N,)         float32
    terminals          (N,)         bool     the episode ended in a terminal state
    timeouts           (N,)         bool     the episode was cut by a time limit
    next_observations  (N, obs_dim) float32  optional
    infos/<name>       (N, ...)              optional, e.g. infos/qpos
    metadata/<name>    scalar, string or array, optional, e.g. metadata/algorithm

``read_d4rl`` returns these as one flat dict keyed by the HDF5 path ("infos/qpos", "metadata/algorithm"),
as ``d4rl``'s ``get_dataset`` does. ``qlearning_dataset`` and ``episodes`` take that dict;
``normalized_score`` puts returns on D4RL's 0 (random) to 100 (expert) scale.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from retain.errors import DatasetError
from retain.io import atomic_path

# field -> (rank, kind): "float" fields are stored as float32 and must be finite, "bool" fields are flags.
LAYOUT: dict[str, tuple[int, str]] = {
    "observations": (2, "float"),
    "actions": (2, "float"),
    "rewards": (1, "float"),
    "terminals": (1, "bool"),
    "timeouts": (1, "bool"),
    "next_observations": (2, "float"),
}
REQUIRED = ("observations", "actions", "rewards", "terminals", "timeouts")


class _FieldError(ValueError):
    """One field breaks the layout; ``read_d4rl`` turns it into a DatasetError naming the file."""

    def __init__(self, field: str, problem: str, fix: str):
        self.field, self.problem, self.fix = field, problem, fix
        super().__init__(f"{field} {problem} — {fix}")


def _coerce(field: str, value: Any) -> np.ndarray:
    """``value`` as the layout stores ``field`` (float32 or bool), or _FieldError if it cannot be."""
    rank, kind = LAYOUT[field]
    want = "float32 numbers" if kind == "float" else "bool (or 0/1)"
    arr = np.asarray(value)
    if arr.dtype.kind not in "biuf":
        raise _FieldError(field, f"has dtype {arr.dtype}, not numbers", f"store {field} as {want}")
    if arr.ndim != rank:
        shape = "(N, dim)" if rank == 2 else "(N,)"
        raise _FieldError(field, f"has shape {arr.shape}, not {shape}", f"store {field} as a {rank}-D array {shape}")
    if kind == "bool":
        # Some D4RL files store flags as 0/1 floats or ints; anything else is not a flag.
        if arr.dtype.kind != "b":
            bad = np.flatnonzero((arr != 0) & (arr != 1))
            if bad.size:
                i = int(bad[0])
                raise _FieldError(field, f"holds {arr[i].item()!r} at index {i}", f"store {field} as {want}")
        return arr.astype(bool)
    out = arr.astype(np.float32, copy=False)
    bad = ~np.isfinite(out)
    if bad.any():
        first = tuple(int(j) for j in np.argwhere(bad)[0])
        where = first[0] if len(first) == 1 else first
        count = int(bad.sum())
        raise _FieldError(
            field,
            f"holds {count} non-finite value{'s' * (count > 1)} (NaN or inf), the first {arr[first].item()!r} at index {where}",
            "drop or repair those transitions before training on them",
        )
    return out


def _validate(fields: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The layout fields checked and converted, ``infos/*`` length-checked, other keys as given.

    Raises _FieldError for the first problem: a required field missing, a wrong dtype, rank or value,
    an empty dataset, or a field whose length is not that of ``observations``.
    """
    for field in REQUIRED:
        if field not in fields:
            raise _FieldError(
                field, "is missing", f"a D4RL file holds the datasets {', '.join(REQUIRED)} (write_d4rl writes them)"
            )
    out = {k: _coerce(k, v) if k in LAYOUT else v for k, v in fields.items()}
    n = len(out["observations"])
    if n == 0:
        raise _FieldError("observations", "has 0 rows: the dataset is empty", "write at least one transition")
    for key, value in out.items():
        if key not in LAYOUT and not key.startswith("infos/"):
            continue
        rows = np.shape(value)[0] if np.ndim(value) else None
        if rows != n:
            raise _FieldError(
                key,
                f"has {rows if rows is not None else 'no'} rows but observations has {n}",
                "store one row per transition in every dataset",
            )
    if "next_observations" in out and out["next_observations"].shape != out["observations"].shape:
        raise _FieldError(
            "next_observations",
            f"has shape {out['next_observations'].shape} but observations has {out['observations'].shape}",
            "store next_observations with the shape of observations",
        )
    return out


def write_d4rl(
    path: str | Path,
    observations: Any,
    actions: Any,
    rewards: Any,
    terminals: Any,
    timeouts: Any,
    next_observations: Any = None,
    infos: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write a D4RL-layout HDF5 file at ``path`` that ``read_d4rl`` (and ``d4rl``) reads back.

    Data fields are stored as float32 / bool. ``infos`` values are arrays with one row per transition,
    stored as given; ``metadata`` values are strings, numbers or numeric arrays (a name with ``/``,
    e.g. ``policy/fc0/weight``, makes nested groups as in D4RL's files). Everything is checked before
    anything is written (ValueError naming the field); the file is written to a temporary file in the
    same directory and renamed over ``path``, so a crash never leaves a half-written file.
    Returns ``path``.
    """
    path = Path(path)
    fields: dict[str, Any] = dict(
        observations=observations, actions=actions, rewards=rewards, terminals=terminals, timeouts=timeouts
    )
    if next_observations is not None:
        fields["next_observations"] = next_observations
    for name, value in (infos or {}).items():
        arr = np.asarray(value)
        if arr.dtype.kind not in "biuf":
            raise ValueError(f"infos/{name} has dtype {arr.dtype}; store numbers or bools")
        fields[f"infos/{name}"] = arr
    data = _validate(fields)
    for name, value in (metadata or {}).items():
        if not isinstance(value, str | bytes):
            value = np.asarray(value)
            if value.dtype.kind not in "biuf":
                raise ValueError(f"metadata/{name} has dtype {value.dtype}; store a string, a number or numbers")
        data[f"metadata/{name}"] = value
    # HDF5 cannot hold "metadata/policy" as a value and as the group of "metadata/policy/fc0/weight".
    groups = {key.rsplit("/", i)[0] for key in data for i in range(1, key.count("/") + 1)}
    if clash := sorted(groups & set(data)):
        raise ValueError(f"{clash[0]} is both a value and a group of other names; rename one of them")

    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        for key, value in data.items():
            f.create_dataset(key, data=value)
    return path


def _plain(value: Any) -> Any:
    """A metadata value as it was written: h5py returns strings as bytes and scalars as numpy scalars."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_d4rl(path: str | Path) -> dict[str, Any]:
    """Read and check a D4RL-layout HDF5 file.

    Returns a flat dict keyed by HDF5 path: the layout fields as float32 / bool arrays (0/1 flags are
    converted to bool), ``infos/<name>`` arrays as stored, ``metadata/<name>`` as str, Python scalars or
    arrays, and any other dataset as stored. Raises DatasetError naming the file and the field when the
    file is missing, not HDF5, truncated or corrupt, lacks a required field, or a field has the wrong
    dtype, rank, length or values (non-finite numbers, flags other than 0/1), or holds no transitions.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"D4RL file {path} does not exist or is not a file", "check the path")
    raw: dict[str, Any] = {}
    field = None
    try:
        with h5py.File(path, "r") as f:
            names: list[str] = []
            f.visit(names.append)  # every group and dataset, nested ones included, as d4rl's get_keys
            for field in names:
                if isinstance(f[field], h5py.Dataset):
                    raw[field] = f[field][()]
    except (OSError, RuntimeError) as e:
        where = f" (reading '{field}')" if field else ""
        raise DatasetError(
            f"{path} is not a readable HDF5 file{where}: {e}",
            "it is truncated, corrupt or not HDF5 (an interrupted download or copy?); download or write it again",
        ) from e

    try:
        data = _validate({k: v for k, v in raw.items() if not k.startswith("metadata/")})
    except _FieldError as e:
        raise DatasetError(f"{path}: '{e.field}' {e.problem}", e.fix) from None
    data.update({k: _plain(v) for k, v in raw.items() if k.startswith("metadata/")})
    return data


def qlearning_dataset(data: Mapping[str, Any], terminate_on_end: bool = False) -> dict[str, np.ndarray]:
    """Transitions (s, a, r, s', terminal) as ``d4rl.qlearning_dataset`` builds them from ``data``.

    Like d4rl, row i for i < N-1 becomes a transition with next observation ``observations[i+1]``;
    the last row is dropped, and so is every row with ``timeouts[i]`` (its next observation belongs
    to the next episode) unless ``terminate_on_end``. As in d4rl, ``terminals`` stays the stored flag
    even for kept timeout rows. One difference: when ``data`` has ``next_observations`` they are used
    (the same rows are kept). Returns observations, actions, next_observations, rewards (float32) and
    terminals (bool).
    """
    if "timeouts" not in data:
        raise ValueError("qlearning_dataset needs 'timeouts' (read_d4rl always returns them)")
    n = len(data["rewards"])
    rows = np.arange(max(n - 1, 0))
    if not terminate_on_end:
        rows = rows[~np.asarray(data["timeouts"], dtype=bool)[rows]]
    observations = np.asarray(data["observations"], dtype=np.float32)
    if "next_observations" in data:
        next_observations = np.asarray(data["next_observations"], dtype=np.float32)[rows]
    else:
        next_observations = observations[rows + 1]
    return {
        "observations": observations[rows],
        "actions": np.asarray(data["actions"], dtype=np.float32)[rows],
        "next_observations": next_observations,
        "rewards": np.asarray(data["rewards"], dtype=np.float32)[rows],
        "terminals": np.asarray(data["terminals"], dtype=bool)[rows],
    }


def episodes(data: Mapping[str, Any]) -> list[slice]:
    """The rows of each episode, in order: an episode ends at a terminal or a timeout, and rows after
    the last end form a final (partial) episode. E.g. per-episode returns:
    ``[data["rewards"][s].sum() for s in episodes(data)]``."""
    done = np.asarray(data["terminals"], dtype=bool) | np.asarray(data["timeouts"], dtype=bool)
    ends = (np.flatnonzero(done) + 1).tolist()
    if len(done) and (not ends or ends[-1] != len(done)):
        ends.append(len(done))
    return [slice(start, end) for start, end in zip([0, *ends[:-1]], ends)]


# D4RL's reference returns (random policy, expert policy) per MuJoCo locomotion family, the same for
# every dataset of the family and for -v0, -v1, -v2 (d4rl/infos.py: REF_MIN_SCORE, REF_MAX_SCORE).
REF_SCORES: dict[str, tuple[float, float]] = {
    "hopper": (-20.272305, 3234.3),
    "halfcheetah": (-280.178953, 12135.0),
    "walker2d": (1.629008, 4592.3),
    "ant": (-325.6, 3879.7),
}


def ref_scores(env_name: str) -> tuple[float, float]:
    """D4RL's (min, max) reference returns for a dataset name or gym id of a known family.

    The family is the name's first word, case-insensitive: "hopper-medium-v2", "walker2d-medium-replay-v2",
    "ant-random-v0", "Hopper-v5" and "HalfCheetah-v4" all work; "antmaze-umaze-v2" or "bullet-hopper-v0"
    (other reference scores) raise ValueError listing the known families.
    """
    family = re.split(r"[-_/]", env_name.strip().lower(), maxsplit=1)[0]
    if family not in REF_SCORES:
        raise ValueError(
            f"no D4RL reference scores for {env_name!r} (family {family!r}); known families: {', '.join(sorted(REF_SCORES))}"
        )
    return REF_SCORES[family]


def normalized_score(env_name: str, score: float | np.ndarray) -> float | np.ndarray:
    """``100 * (score - min) / (max - min)`` with D4RL's reference returns: 0 is random, 100 is expert.

    This is the ×100 scale that papers report; ``d4rl.get_normalized_score`` returns the fraction
    (divide by 100 to get it). Works on a single return or an array of returns.
    """
    low, high = ref_scores(env_name)
    return 100.0 * (score - low) / (high - low)
