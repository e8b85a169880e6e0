"""Offline-learning data as flat transition arrays, from a retain/Minari dataset or a D4RL-layout HDF5 file.

``load_transitions(id_or_path)`` returns one row per transition (s, a, r, s', terminal, timeout) with the
episode boundaries, the spaces, the env spec and the reference scores, whatever the source:

    from envs.transitions import load_transitions      # also importable from envs.datasets
    data = load_transitions("retain/cw10/hammer/expert-v0")   # or a dataset directory, or "hopper.hdf5"
    data.observations            # (N, ...) array, or a dict of them for Dict spaces (Text fields: str arrays)
    data.episode_starts          # (E,) first row of each episode

``envs.datasets.dataset_path(id_or_path)`` says first, without raising, whether the dataset exists.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from envs.datasets import (
    SIDECAR,
    _minari_dir,
    _resolve,
    d4rl_ref_scores,
    d4rl_spaces,
    is_file_dataset,
    load_dataset,
)
from retain.errors import DatasetError

Array = np.ndarray
Observations = np.ndarray | dict[str, Any] | tuple
"""An array with one row per transition, or (Dict / Tuple spaces) a dict / tuple of them, nested as the space is."""


@dataclass
class Transitions:
    """A dataset as flat arrays, one row per transition, episodes stored one after another.

    Row i is (``observations[i]``, ``actions[i]``, ``rewards[i]``, ``next_observations[i]``, ``terminals[i]``,
    ``timeouts[i]``). Episode e is rows ``episode_starts[e]`` up to the next start (or N); inside an episode
    ``next_observations[i] == observations[i + 1]``.
    """

    observations: Observations
    """(N, ...) as the observation space stores them; Dict spaces give a dict of arrays, Text fields (BabyAI
    missions) a numpy array of str"""
    next_observations: Observations
    """(N, ...) the observation after each action, in the same layout"""
    actions: Observations
    """(N, ...) (Discrete: (N,) ints)"""
    rewards: Array
    """(N,) float32"""
    terminals: Array
    """(N,) bool: the episode ended in a terminal state after this step (do not bootstrap)"""
    timeouts: Array
    """(N,) bool: the episode was cut after this step (time limit, end of the data)"""
    episode_starts: Array
    """(E,) int64: the first row of each episode, increasing, starting at 0"""
    observation_space: gym.Space
    action_space: gym.Space
    env_spec: dict | None
    """retain's EnvSpec (as a dict: ``envs.spec.EnvSpec(**env_spec)``) that rebuilds the task, when the dataset has one"""
    ref_min_score: float | None
    """D4RL-style reference return of a random policy (normalized score 0)"""
    ref_max_score: float | None
    """reference return of an expert (normalized score 1)"""
    source: Path
    """the dataset directory or file that was read (absolute)"""
    format: str = "minari"
    """"minari" or "d4rl\""""
    dataset_id: str | None = None
    """the dataset's id when it has one (Minari metadata, D4RL ``metadata/dataset_id`` or ``name``)"""
    infos: dict[str, Array] = field(default_factory=dict)
    """per-transition extras, (N, ...): Minari ``infos`` (e.g. ``success``) or D4RL ``infos/*``"""

    def __len__(self) -> int:
        return len(self.rewards)

    @property
    def num_episodes(self) -> int:
        return len(self.episode_starts)

    @property
    def episode_lengths(self) -> Array:
        """(E,) int64: transitions per episode."""
        return np.diff(np.append(self.episode_starts, len(self))).astype(np.int64)

    def episode_returns(self) -> Array:
        """(E,) float64: the undiscounted return of each episode."""
        return np.add.reduceat(self.rewards.astype(np.float64), self.episode_starts)

    def normalized_score(self, returns: float | Array) -> float | Array:
        """``(returns - ref_min) / (ref_max - ref_min)`` (Minari's 0-to-1 scale; ×100 for D4RL's); needs both scores."""
        if self.ref_min_score is None or self.ref_max_score is None:
            raise DatasetError(
                f"dataset {self.source} has no reference scores",
                "collect it with `retain collect` (it records them) or use a D4RL file of a known family",
            )
        return (returns - self.ref_min_score) / (self.ref_max_score - self.ref_min_score)


def _map(fn, value: Any) -> Any:
    """``fn`` on every leaf of per-step values as Minari returns them: dicts (Dict spaces) and tuples (Tuple
    spaces) recurse, lists of str (Text spaces) become str arrays, everything else an array."""
    if isinstance(value, dict):
        return {k: _map(fn, v) for k, v in value.items()}
    if isinstance(value, tuple) or (isinstance(value, list) and value and not isinstance(value[0], str)):
        return tuple(_map(fn, v) for v in value)
    if isinstance(value, list):
        value = np.asarray(value, dtype=str)
    return fn(np.asarray(value))


def _concat(parts: list) -> Any:
    if isinstance(parts[0], dict):
        return {k: _concat([p[k] for p in parts]) for k in parts[0]}
    if isinstance(parts[0], tuple):
        return tuple(_concat([p[i] for p in parts]) for i in range(len(parts[0])))
    return np.concatenate(parts)


def load_transitions(id_or_path: str | Path) -> Transitions:
    """A dataset as ``Transitions``: a Minari dataset (id under RETAIN_DATA, e.g. from
    ``envs.datasets.sequence_dataset_id``, or its directory) or a D4RL-layout HDF5 file (``.hdf5``/``.h5``).

    Minari datasets are validated (``envs.datasets.load_dataset``) and read episode by episode: T+1
    observations give T rows with ``next_observations`` the observations shifted by one; ``terminals`` and
    ``timeouts`` are Minari's terminations and truncations. D4RL files are read by ``envs.d4rl.read_d4rl``;
    see ``transitions_from_d4rl`` for how episodes and next observations are formed. Raises DatasetError
    (one line: the file, the field, the fix) when the dataset is missing or malformed.
    """
    if is_file_dataset(id_or_path):
        return transitions_from_d4rl(id_or_path)
    return _from_minari(_minari_dir(id_or_path))


def _from_minari(id_or_path: str) -> Transitions:
    dataset = load_dataset(id_or_path)
    _, path = _resolve(id_or_path)
    obs, next_obs, actions, rewards, terms, truncs, lengths, infos = [], [], [], [], [], [], [], []
    for episode in dataset.iterate_episodes():
        T = len(episode.rewards)
        if T == 0:
            continue
        obs.append(_map(lambda a: a[:-1], episode.observations))
        next_obs.append(_map(lambda a: a[1:], episode.observations))
        actions.append(_map(lambda a: a, episode.actions))
        rewards.append(np.asarray(episode.rewards, dtype=np.float32))
        terms.append(np.asarray(episode.terminations, dtype=bool))
        truncs.append(np.asarray(episode.truncations, dtype=bool))
        lengths.append(T)
        ep_infos = episode.infos if isinstance(episode.infos, dict) else {}
        infos.append(
            {k: np.asarray(v) for k, v in ep_infos.items() if not isinstance(v, dict) and np.shape(v)[:1] == (T,)}
        )
    if not lengths:
        raise DatasetError(f"dataset {path} holds no transitions (every episode is empty)", "collect it again")
    common = set.intersection(*(set(i) for i in infos))
    meta = dataset.storage.metadata
    sidecar = json.loads((path / SIDECAR).read_text()) if (path / SIDECAR).is_file() else {}
    env_spec = sidecar.get("env_spec")
    if (
        env_spec is None
        and dataset.env_spec is not None
        and dataset.env_spec.entry_point == "envs.registry:env_from_spec"
    ):
        env_spec = dict(dataset.env_spec.kwargs)
    return Transitions(
        observations=_concat(obs),
        next_observations=_concat(next_obs),
        actions=_concat(actions),
        rewards=np.concatenate(rewards),
        terminals=np.concatenate(terms),
        timeouts=np.concatenate(truncs),
        episode_starts=np.cumsum([0, *lengths[:-1]], dtype=np.int64),
        observation_space=dataset.spec.observation_space,
        action_space=dataset.spec.action_space,
        env_spec=env_spec,
        ref_min_score=meta.get("ref_min_score"),
        ref_max_score=meta.get("ref_max_score"),
        source=path.resolve(),
        format="minari",
        dataset_id=meta.get("dataset_id"),
        infos={k: np.concatenate([i[k] for i in infos]) for k in sorted(common)},
    )


def transitions_from_d4rl(path: str | Path) -> Transitions:
    """A D4RL-layout HDF5 file as ``Transitions``.

    Episodes end at a terminal or a timeout (``envs.d4rl.episodes``). With ``next_observations`` in the file
    every row is kept as stored. Without them the next observation is the next row's, except at an
    episode's last row: a terminal row gets its own observation (never used: a terminal stops bootstrapping);
    a row cut by a timeout (or the file's end) has no known successor and is dropped, as d4rl's
    ``qlearning_dataset`` drops it, and the row before it becomes the episode's last, flagged as a timeout.
    Spaces are inferred from the shapes (``envs.datasets.d4rl_spaces``); reference scores come from the
    file's metadata or D4RL's table (``envs.datasets.d4rl_ref_scores``).
    """
    from envs.d4rl import episodes, read_d4rl

    path = Path(path).expanduser()
    data = read_d4rl(path)
    observations, terminals, timeouts = data["observations"], data["terminals"], data["timeouts"]
    n = len(observations)
    starts = np.array([s.start for s in episodes(data)], dtype=np.int64)
    is_end = np.zeros(n, dtype=bool)
    is_end[np.append(starts[1:], n) - 1] = True
    episode = np.cumsum(np.isin(np.arange(n), starts)) - 1  # the episode of each row
    if "next_observations" in data:
        keep = np.ones(n, dtype=bool)
        next_observations = data["next_observations"]
    else:
        keep = ~(is_end & ~terminals)
        following = np.minimum(np.arange(n) + 1, n - 1)
        following[is_end] = np.flatnonzero(is_end)  # a terminal row's successor is itself
        next_observations = observations[following]
    rows = np.flatnonzero(keep)
    if rows.size == 0:
        raise DatasetError(
            f"{path}: no transition has a next observation (every episode is one row cut by a timeout)",
            "store next_observations in the file, or longer episodes",
        )
    timeouts = timeouts.copy()
    cut = is_end & ~keep  # dropped rows: their predecessor (same episode) ends the episode, cut off
    prev = np.flatnonzero(cut) - 1
    prev = prev[(prev >= 0) & (episode[np.maximum(prev, 0)] == episode[np.flatnonzero(cut)])]
    timeouts[prev] = True
    kept_episode = episode[rows]
    first = np.flatnonzero(np.r_[True, kept_episode[1:] != kept_episode[:-1]]).astype(np.int64)
    observation_space, action_space = d4rl_spaces(data)
    ref_min, ref_max = d4rl_ref_scores(data, path)
    meta = {k[len("metadata/") :]: v for k, v in data.items() if k.startswith("metadata/")}
    dataset_id = next((meta[k] for k in ("dataset_id", "name") if isinstance(meta.get(k), str)), None)
    return Transitions(
        observations=observations[rows],
        next_observations=next_observations[rows],
        actions=data["actions"][rows],
        rewards=data["rewards"][rows],
        terminals=terminals[rows],
        timeouts=timeouts[rows],
        episode_starts=first,
        observation_space=observation_space,
        action_space=action_space,
        env_spec=None,
        ref_min_score=ref_min,
        ref_max_score=ref_max,
        source=path.resolve(),
        format="d4rl",
        dataset_id=dataset_id,
        infos={k[len("infos/") :]: np.asarray(v)[rows] for k, v in data.items() if k.startswith("infos/")},
    )
