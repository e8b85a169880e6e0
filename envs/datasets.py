"""Trajectory datasets in Minari's format (HDF5 backend), written without jax, read with validation.

Minari's ``DataCollector`` (and ``EpisodeBuffer.add_step_data``) import jax; retain builds whole
``EpisodeBuffer``s from stacked arrays instead and hands them to ``minari.create_dataset_from_buffers``.
Datasets live under ``RETAIN_DATA`` (default ``~/.cache/retain/data``), which is set as Minari's
``MINARI_DATASETS_PATH`` while retain reads or writes. Next to Minari's files each dataset has a
``retain.json``: the env spec that rebuilds its task, the expert's identity and the data-quality knobs.
Minari's metadata holds the same env spec as a gymnasium ``EnvSpec`` (entry point
``envs.registry:env_from_spec``), so ``minari.load_dataset(id).recover_environment()`` rebuilds the env.

``dataset_info`` also reads D4RL-layout HDF5 files (``d4rl_info``); ``sequence_dataset_id`` names the
datasets ``retain collect`` writes, ``dataset_path`` finds one without raising, and ``load_transitions``
(``envs.transitions``, importable from here too) reads either kind as flat arrays for offline learning.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from envs.registry import gym_env_spec
from envs.spec import EnvSpec
from retain.errors import DatasetError
from retain.io import atomic_path, write_json_atomic
from retain.paths import data_root

SIDECAR = "retain.json"
ID_PATTERN = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*-v\d+$")


@contextlib.contextmanager
def minari_root() -> Iterator[Path]:
    """Point Minari at retain's data root for the duration of the block."""
    root = data_root()
    root.mkdir(parents=True, exist_ok=True)
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    try:
        yield root
    finally:
        if old is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


def _stack(values: list) -> Any:
    """Stack a list of per-step observations/actions into what Minari stores (dicts recurse, text stays a list)."""
    first = values[0]
    if isinstance(first, dict):
        return {key: _stack([v[key] for v in values]) for key in first}
    if isinstance(first, str):
        return list(values)
    return np.stack([np.asarray(v) for v in values])


def episode_buffer(
    episode_id: int,
    seed: int | None,
    observations: list,
    actions: list,
    rewards: list,
    terminations: list,
    truncations: list,
    infos: dict[str, list] | None = None,
):
    """One episode as a Minari ``EpisodeBuffer``: T+1 observations, T of everything else."""
    from minari.data_collector.episode_buffer import EpisodeBuffer

    if len(observations) != len(actions) + 1:
        raise ValueError(
            f"episode {episode_id}: need len(observations) == len(actions) + 1, got {len(observations)} and {len(actions)}"
        )
    return EpisodeBuffer(
        id=episode_id,
        seed=seed,
        observations=_stack(observations),
        actions=_stack(actions),
        rewards=[float(r) for r in rewards],
        terminations=[bool(t) for t in terminations],
        truncations=[bool(t) for t in truncations],
        infos={k: np.asarray(v) for k, v in (infos or {}).items()},
    )


def dataset_dir(dataset_id: str) -> Path:
    return data_root().joinpath(*dataset_id.split("/"))


def sequence_dataset_id(namespace: str, sequence: str | None, task: str, quality: str) -> str:
    """The id ``retain collect`` gives a task's dataset: ``<namespace>/<sequence>/<task>/<quality>-v0``, or
    ``<namespace>/<task>/<quality>-v0`` when ``sequence`` is None (``sequence=single``: the env on its own).

    E.g. ``sequence_dataset_id("retain", "cw10", "hammer", "expert") == "retain/cw10/hammer/expert-v0"``.
    Raises DatasetError when a part is empty or holds characters a Minari id cannot (``/``, spaces, ...).
    """
    parts = {"namespace": namespace, "task": task, "quality": quality}
    if sequence is not None:
        parts["sequence"] = sequence
    for name, value in parts.items():
        if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", value):
            raise DatasetError(
                f"dataset {name} {value!r} cannot be part of a dataset id",
                "use letters, digits, '_', '.' and '-' only (e.g. dataset.namespace=retain dataset.quality=expert)",
            )
    return "/".join([namespace, *([sequence] if sequence is not None else []), task]) + f"/{quality}-v0"


def dataset_path(id_or_path: str | Path) -> Path | None:
    """Where the dataset ``id_or_path`` is, or None when there is none; never raises.

    ``id_or_path`` is a dataset id under RETAIN_DATA (``retain/cw10/hammer/expert-v0``), a Minari dataset
    directory (the one holding ``data/``; ``data/`` itself and ``data/main_data.hdf5`` stand for it too), or a
    D4RL-layout HDF5 file. The result is the dataset directory or the file (absolute); whether its contents
    are valid is for ``load_dataset`` / ``load_transitions`` to say. A caller that gets None can print its own
    "make it with `retain collect ...`".
    """
    try:
        if not str(id_or_path).strip():
            return None
        if is_file_dataset(id_or_path):
            path = Path(id_or_path).expanduser()
            return path.resolve() if path.is_file() else None
        text = _minari_dir(id_or_path)
        path = Path(text).expanduser()
        if not path.exists():
            if not ID_PATTERN.match(text) or ".." in text.split("/"):
                return None
            path = dataset_dir(text)
        return path.resolve() if (path / "data").is_dir() else None
    except (OSError, ValueError, TypeError):
        return None


def write_dataset(
    dataset_id: str,
    buffers: list,
    *,
    observation_space: gym.Space,
    action_space: gym.Space,
    env_spec: EnvSpec,
    expert: str,
    ref_min_score: float | None = None,
    ref_max_score: float | None = None,
    extra: dict | None = None,
    description: str = "",
    overwrite: bool = False,
) -> Path:
    """Write a Minari dataset (HDF5) plus retain's sidecar; returns its directory."""
    import minari

    if not ID_PATTERN.match(dataset_id):
        raise DatasetError(
            f"dataset id {dataset_id!r} is not a Minari id", "use namespace/name-v0, e.g. retain/hammer/expert-v0"
        )
    path = dataset_dir(dataset_id)
    with minari_root():
        if path.exists():
            if not overwrite:
                raise DatasetError(
                    f"dataset {dataset_id} already exists at {path}",
                    "pass dataset.overwrite=true or choose another dataset name",
                )
            minari.delete_dataset(dataset_id)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Minari warns about missing author/permalink fields
            minari.create_dataset_from_buffers(
                dataset_id,
                buffers,
                observation_space=observation_space,
                action_space=action_space,
                algorithm_name=expert,
                author="retain",
                code_permalink="retain collect",
                description=description or f"{expert} on {env_spec.id}",
                data_format="hdf5",
                jpeg_encoding=False,
            )
    # Minari records reference scores only when it can build the env itself from a gymnasium spec;
    # retain's envs carry wrappers, so the scores go into the metadata file directly (same keys).
    # The same holds for the env spec: Minari would gym.make it to check it. retain's spec has an entry point
    # in retain (envs.registry:env_from_spec) that rebuilds the wrapped env, so recover_environment() works.
    meta_path = path / "data" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    if ref_min_score is not None and ref_max_score is not None:
        meta.update(ref_min_score=float(ref_min_score), ref_max_score=float(ref_max_score))
    try:
        gym_spec = gym_env_spec(env_spec).to_json()
    except TypeError as e:  # kwargs JSON cannot hold (Minari itself then stores no env spec either)
        warnings.warn(f"{dataset_id}: env spec not stored ({e}); recover_environment() will not work", stacklevel=2)
    else:
        meta.update(env_spec=gym_spec, eval_env_spec=gym_spec)
    write_json_atomic(meta_path, meta)
    write_json_atomic(path / SIDECAR, {"env_spec": asdict(env_spec), "expert": expert, **(extra or {})})
    return path


def _resolve(id_or_path: str) -> tuple[str | None, Path]:
    path = Path(id_or_path).expanduser()
    if path.exists():
        return None, path
    return id_or_path, dataset_dir(id_or_path)


def load_dataset(id_or_path: str, validate: bool = True):
    """Open a dataset by Minari id (under RETAIN_DATA) or by directory; malformed files get a DatasetError."""
    from minari.dataset.minari_dataset import MinariDataset

    dataset_id, path = _resolve(id_or_path)
    data_path = path / "data"
    if not data_path.is_dir():
        where = f"under RETAIN_DATA={data_root()}" if dataset_id else "there"
        raise DatasetError(
            f"dataset {id_or_path} not found {where} (no {data_path})",
            "collect it with `retain collect`, or list what exists with `retain data list`",
        )
    for name in ("main_data.hdf5", "metadata.json"):
        if not (data_path / name).is_file():
            raise DatasetError(
                f"dataset {path} is incomplete: data/{name} is missing", "collect it again with dataset.overwrite=true"
            )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dataset = MinariDataset(data_path)
    except (OSError, json.JSONDecodeError, KeyError, ValueError) as e:
        raise DatasetError(
            f"dataset {path} cannot be opened ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})",
            "its files are truncated or corrupt; collect it again",
        ) from e
    if validate:
        validate_dataset(dataset, path)
    return dataset


def _leaves(value: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for key, sub in value.items():
            yield from _leaves(sub, f"{prefix}/{key}")
    else:
        yield prefix, value


def validate_dataset(dataset, path: Path) -> None:
    """Every episode has its fields, consistent lengths, finite numbers and the dtypes of its spaces."""
    import h5py

    try:
        with h5py.File(path / "data" / "main_data.hdf5", "r") as f:
            names = list(f.keys())
            if not names:
                raise DatasetError(f"dataset {path} holds no episodes", "collect it again")
            for name in names:
                group = f[name]
                where = f"{path}/data/main_data.hdf5:{name}"
                for field in ("observations", "actions", "rewards", "terminations", "truncations"):
                    if field not in group:
                        raise DatasetError(
                            f"{where} lacks the field {field!r}",
                            "the file is not a complete Minari episode; collect it again",
                        )
                T = group["rewards"].shape[0]
                for field in ("terminations", "truncations"):
                    if group[field].shape[0] != T:
                        raise DatasetError(
                            f"{where}/{field} has {group[field].shape[0]} steps but rewards has {T}",
                            "the episode is corrupt; collect it again",
                        )
                for field, expected in (("observations", T + 1), ("actions", T)):
                    for leaf, data in _leaves(_read(group[field]), field):
                        if len(data) != expected:
                            raise DatasetError(
                                f"{where}/{leaf} has {len(data)} entries, expected {expected}",
                                "observations need T+1 entries and actions T",
                            )
                        if isinstance(data, np.ndarray) and data.dtype.kind == "f" and not np.all(np.isfinite(data)):
                            raise DatasetError(
                                f"{where}/{leaf} holds NaN or inf", "drop the episode or collect it again"
                            )
                rewards = group["rewards"][()]
                if rewards.dtype.kind not in "fiu":
                    raise DatasetError(
                        f"{where}/rewards has dtype {rewards.dtype}, expected numbers",
                        "the file was not written by a Minari writer",
                    )
                if not np.all(np.isfinite(rewards)):
                    raise DatasetError(f"{where}/rewards holds NaN or inf", "drop the episode or collect it again")
    except OSError as e:
        raise DatasetError(
            f"dataset {path}/data/main_data.hdf5 is truncated or corrupt ({e})", "collect it again"
        ) from e
    action_space = dataset.spec.action_space
    if isinstance(action_space, gym.spaces.Box):
        first = dataset[0].actions
        if np.asarray(first).dtype.kind != "f":
            raise DatasetError(
                f"dataset {path}: actions have dtype {np.asarray(first).dtype} but the action space is {action_space}",
                "the actions were stored with the wrong type; collect it again",
            )


def _read(node) -> Any:
    import h5py

    if isinstance(node, h5py.Group):
        return {key: _read(node[key]) for key in node}
    return node[()]


SUCCESS_INFOS = ("infos/success", "infos/is_success", "infos/goal_achieved")
"""Per-step success flags a D4RL file may hold (``goal_achieved``: D4RL's Adroit files); the first found counts."""


def is_file_dataset(id_or_path: str | Path) -> bool:
    """True when ``id_or_path`` names a single file (a D4RL-layout HDF5 file) rather than a Minari dataset:
    an existing file, or a path ending in ``.hdf5`` / ``.h5`` (which then does not exist: reading it says so).
    Minari's own ``<dataset>/data/main_data.hdf5`` is not one: it stands for its dataset directory."""
    path = Path(id_or_path).expanduser()
    if path.name == "main_data.hdf5" and (path.parent / "metadata.json").is_file():
        return False
    return path.is_file() or path.suffix.lower() in (".hdf5", ".h5")


def _minari_dir(id_or_path: str | Path) -> str:
    """A Minari dataset's id or directory, ``<dir>/data/main_data.hdf5`` and ``<dir>/data`` mapped to ``<dir>``."""
    path = Path(id_or_path).expanduser()
    if path.name == "main_data.hdf5" and (path.parent / "metadata.json").is_file():
        return str(path.parent.parent)
    if path.name == "data" and (path / "metadata.json").is_file():
        return str(path.parent)
    return str(id_or_path)


def _summary(returns: np.ndarray, lengths: np.ndarray, successes: np.ndarray | None) -> dict:
    return {
        "episodes": len(returns),
        "steps": int(np.sum(lengths)),
        "return": {
            "mean": float(np.mean(returns)),
            "std": float(np.std(returns)),
            "min": float(np.min(returns)),
            "max": float(np.max(returns)),
        },
        "episode_length": {"mean": float(np.mean(lengths)), "min": int(np.min(lengths)), "max": int(np.max(lengths))},
        "success_rate": float(np.mean(successes)) if successes is not None and len(successes) else None,
    }


def d4rl_metadata(data: dict) -> dict:
    """The ``metadata/*`` strings and numbers of a ``read_d4rl`` dict (arrays such as policy weights left out)."""
    out = {}
    for key, value in data.items():
        if key.startswith("metadata/") and isinstance(value, str | int | float | bool):
            out[key[len("metadata/") :]] = value
    return out


def d4rl_ref_scores(data: dict, path: str | Path) -> tuple[float | None, float | None]:
    """Reference returns of a D4RL file: ``metadata/ref_min_score`` + ``ref_max_score`` when it has both, else
    D4RL's table (``envs.d4rl.REF_SCORES``) for the family its metadata name (``name``, ``dataset_id``,
    ``env_name``, ``env``) or its file name starts with (``hopper-medium-v2.hdf5`` → hopper); else (None, None)."""
    from envs.d4rl import ref_scores

    meta = d4rl_metadata(data)
    if isinstance(meta.get("ref_min_score"), int | float) and isinstance(meta.get("ref_max_score"), int | float):
        return float(meta["ref_min_score"]), float(meta["ref_max_score"])
    names = [meta[k] for k in ("name", "dataset_id", "env_name", "env") if isinstance(meta.get(k), str)]
    for name in [*names, Path(path).stem]:
        try:
            low, high = ref_scores(name)
        except ValueError:
            continue
        return float(low), float(high)
    return None, None


def d4rl_spaces(data: dict) -> tuple[gym.spaces.Box, gym.spaces.Box]:
    """Observation and action spaces inferred from a D4RL file's shapes: observations ``Box(-inf, inf)``,
    actions ``Box(-1, 1)`` (D4RL's MuJoCo and Adroit actions), widened to the data's range if it exceeds that."""
    obs, act = data["observations"], data["actions"]
    observation_space = gym.spaces.Box(-np.inf, np.inf, obs.shape[1:], np.float32)
    low = np.minimum(-1.0, act.min(axis=0)).astype(np.float32)
    high = np.maximum(1.0, act.max(axis=0)).astype(np.float32)
    if np.all(low == -1) and np.all(high == 1):
        return observation_space, gym.spaces.Box(-1.0, 1.0, act.shape[1:], np.float32)
    return observation_space, gym.spaces.Box(low, high, dtype=np.float32)


def d4rl_success(data: dict) -> np.ndarray | None:
    """Per-row success flags (bool, (N,)) from the first of ``SUCCESS_INFOS`` the file holds, else None."""
    for key in SUCCESS_INFOS:
        if key in data:
            flags = np.asarray(data[key])
            if flags.dtype.kind not in "biuf":
                continue
            return flags.reshape(len(flags), -1).astype(bool).any(axis=1)
    return None


def d4rl_info(path: str | Path) -> dict:
    """``dataset_info`` of a D4RL-layout HDF5 file (read and checked by ``envs.d4rl.read_d4rl``).

    Episodes end at a terminal or a timeout (``envs.d4rl.episodes``); success is an episode with any
    success flag (``SUCCESS_INFOS``), else None; spaces are inferred (``d4rl_spaces``); reference scores come
    from ``d4rl_ref_scores``; the expert from ``metadata/algorithm`` (D4RL's key) or ``algorithm_name``.
    """
    from envs.d4rl import episodes, read_d4rl

    path = Path(path).expanduser()
    data = read_d4rl(path)
    starts = np.array([s.start for s in episodes(data)], dtype=np.int64)
    lengths = np.diff(np.append(starts, len(data["rewards"])))
    returns = np.add.reduceat(data["rewards"].astype(np.float64), starts)
    success = d4rl_success(data)
    meta = d4rl_metadata(data)
    observation_space, action_space = d4rl_spaces(data)
    ref_min, ref_max = d4rl_ref_scores(data, path)
    expert = next((meta[k] for k in ("algorithm", "algorithm_name", "expert", "policy") if k in meta), None)
    return {
        "id": next((meta[k] for k in ("dataset_id", "name") if isinstance(meta.get(k), str)), path.name),
        "path": str(path.resolve()),
        "format": "d4rl",
        **_summary(returns, lengths, None if success is None else np.logical_or.reduceat(success, starts)),
        "observation_space": str(observation_space),
        "action_space": str(action_space),
        "expert": None if expert is None else str(expert),
        "ref_min_score": ref_min,
        "ref_max_score": ref_max,
        "metadata": meta,
    }


def dataset_info(id_or_path: str) -> dict:
    """Episodes, steps, return and success statistics, spaces, expert and env spec of a dataset: a Minari
    dataset (id under RETAIN_DATA or directory) or a D4RL-layout HDF5 file (``d4rl_info``)."""
    if is_file_dataset(id_or_path):
        return d4rl_info(id_or_path)
    id_or_path = _minari_dir(id_or_path)
    dataset = load_dataset(id_or_path)
    _, path = _resolve(id_or_path)
    returns, lengths, successes = [], [], []
    for episode in dataset.iterate_episodes():
        returns.append(float(np.sum(episode.rewards)))
        lengths.append(len(episode.rewards))
        success = episode.infos.get("success") if isinstance(episode.infos, dict) else None
        if success is not None and len(success):
            successes.append(float(np.any(success)))
    sidecar = json.loads((path / SIDECAR).read_text()) if (path / SIDECAR).exists() else {}
    meta = dataset.storage.metadata
    return {
        "id": meta.get("dataset_id", str(path)),
        "path": str(path),
        "format": "minari",
        **_summary(np.array(returns), np.array(lengths), np.array(successes) if successes else None),
        "observation_space": str(dataset.spec.observation_space),
        "action_space": str(dataset.spec.action_space),
        "expert": meta.get("algorithm_name"),
        "ref_min_score": meta.get("ref_min_score"),
        "ref_max_score": meta.get("ref_max_score"),
        **{k: v for k, v in sidecar.items() if k != "expert"},
    }


def list_datasets() -> list[dict]:
    """Every dataset under RETAIN_DATA (id, episodes, steps, expert), found by its metadata file."""
    root = data_root()
    out = []
    for meta_file in sorted(root.rglob("data/metadata.json")):
        path = meta_file.parent.parent
        try:
            meta = json.loads(meta_file.read_text())
            out.append(
                {
                    "id": meta.get("dataset_id", str(path.relative_to(root))),
                    "episodes": meta.get("total_episodes"),
                    "steps": meta.get("total_steps"),
                    "expert": meta.get("algorithm_name"),
                    "path": str(path),
                }
            )
        except (json.JSONDecodeError, OSError):
            out.append(
                {
                    "id": str(path.relative_to(root)),
                    "episodes": None,
                    "steps": None,
                    "expert": "(unreadable metadata)",
                    "path": str(path),
                }
            )
    return out


def write_action_free(path: str | Path, episodes: list[np.ndarray], metadata: dict) -> Path:
    """Observations only (the VPT setting: video without actions), as one HDF5 file.

    Layout: ``observations`` (all episodes' observations concatenated), ``episode_starts`` (index of
    each episode's first observation) and ``metadata/*`` attributes. Written to a temp file and renamed.
    """
    import h5py

    path = Path(path)
    starts = np.cumsum([0] + [len(e) for e in episodes[:-1]])
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("observations", data=np.concatenate(episodes), compression="gzip")
        f.create_dataset("episode_starts", data=starts.astype(np.int64))
        group = f.create_group("metadata")
        for key, value in metadata.items():
            group.attrs[key] = json.dumps(value) if isinstance(value, dict | list) else value
    return path


def __getattr__(name: str):
    # load_transitions lives in envs.transitions (which imports this module); importable from here too.
    if name in ("Transitions", "load_transitions"):
        from envs import transitions

        return getattr(transitions, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
