"""Offline data for the offline learner: every task's dataset loaded, checked against its env, and held in
contiguous tensors on the training device, batches drawn by index (``TaskData``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from envs.datasets import dataset_path, load_transitions, sequence_dataset_id
from envs.text import hash_tokens
from finetune.env_tasks import Task
from retain.errors import ConfigError, DatasetError


@dataclass
class DatasetNames:
    """Which datasets the tasks train on when a task names none: the ones ``retain collect`` wrote."""

    path: str | None = None
    """the one dataset of a one-task run (sequence=single): a dataset id, a dataset folder or a D4RL-layout
    .hdf5 file; sequences name theirs per task (sequence.tasks[i].dataset)"""
    namespace: str = "retain"
    """dataset ids are <namespace>/<sequence>/<task>/<quality>-v0 (retain collect's dataset.namespace)"""
    quality: str = "expert"
    """retain collect's dataset.quality"""


def to_tensor(value, device: torch.device) -> torch.Tensor:
    array = np.asarray(value)
    if array.dtype.kind == "f":
        array = array.astype(np.float32, copy=False)
    elif array.dtype.kind == "b":
        array = array.astype(np.int64)
    return torch.as_tensor(np.ascontiguousarray(array), device=device)


def _encode_obs(space: gym.Space, value) -> Any:
    """Dataset observations as the policy takes them: Text parts as hashed word ids."""
    if isinstance(space, gym.spaces.Text):
        return hash_tokens([str(v) for v in np.asarray(value).reshape(-1)])
    if isinstance(space, gym.spaces.Dict):
        return {k: _encode_obs(s, value[k]) for k, s in space.spaces.items()}
    return value


class TaskData:
    """Every task's transitions in contiguous tensors, tasks one after another (rows ``offsets[t]..``)."""

    def __init__(self, parts: list[dict], device: torch.device):
        self.sizes = torch.tensor([len(p["actions"]) for p in parts], device=device)
        self.offsets = torch.cumsum(self.sizes, 0) - self.sizes
        first = parts[0]["observations"]
        if isinstance(first, dict):
            self.obs: Any = {k: to_tensor(np.concatenate([p["observations"][k] for p in parts]), device) for k in first}
        else:
            self.obs = to_tensor(np.concatenate([p["observations"] for p in parts]), device)
        self.actions = to_tensor(np.concatenate([p["actions"] for p in parts]), device)

    def batch(
        self,
        tasks: torch.Tensor,
        size: int,
        generator: torch.Generator,
        replay: list[tuple[int, int]] | None = None,
        memories: dict[int, torch.Tensor] | None = None,
    ) -> tuple[Any, torch.Tensor, torch.Tensor]:
        """``size`` rows ``(observations, actions, task index)``: ``count`` rows of each replayed ``(task, count)``,
        the rest with a task drawn uniformly from ``tasks`` per row; within a task, rows uniformly — for a
        replayed task with an entry in ``memories``, uniformly among those kept rows."""
        device = self.actions.device
        main = size - sum(count for _, count in replay or [])
        pick = tasks[torch.randint(len(tasks), (main,), generator=generator, device="cpu").to(device)]
        if replay:
            pick = torch.cat([pick, *(torch.full((count,), task, device=device) for task, count in replay)])
        u = torch.rand(size, generator=generator, device="cpu").to(device)
        rows = self.offsets[pick] + (u * self.sizes[pick]).long().clamp_max(self.sizes[pick] - 1)
        start = main
        for task, count in replay or []:
            if memories is not None and task in memories:
                kept = memories[task]
                rows[start : start + count] = kept[
                    (u[start : start + count] * len(kept)).long().clamp_max(len(kept) - 1)
                ]
            start += count
        return self.rows(rows, pick)

    def kept_rows(self, task: int, size: int, seed: int) -> torch.Tensor:
        """``size`` distinct row indices of ``task`` (all of them if it has fewer), a draw fixed by ``seed``."""
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(int(self.sizes[task]), generator=generator)[:size]
        return (self.offsets[task] + order.to(self.sizes.device)).sort().values

    def rows(self, rows: torch.Tensor, tasks: torch.Tensor) -> tuple[Any, torch.Tensor, torch.Tensor]:
        obs = {k: v[rows] for k, v in self.obs.items()} if isinstance(self.obs, dict) else self.obs[rows]
        return obs, self.actions[rows], tasks

    def task_rows(self, task: int, size: int, generator: torch.Generator) -> torch.Tensor:
        """``size`` row indices of ``task``, uniformly with replacement (memories, importance estimates)."""
        u = torch.rand(size, generator=generator, device="cpu").to(self.sizes.device)
        return self.offsets[task] + (u * self.sizes[task]).long().clamp_max(self.sizes[task] - 1)


def collect_command(sequence: str | None, task: Task, names: DatasetNames) -> str:
    """The ``retain collect`` command that writes the dataset ``task`` trains on by default."""
    where = f"sequence={sequence}" if sequence else f"sequence=single env={task.name}"
    extra = f" dataset.namespace={names.namespace}" if names.namespace != "retain" else ""
    return f"retain collect {where} dataset.quality={names.quality}{extra}"


def load_task_data(
    tasks: list[Task],
    names: DatasetNames,
    sequence: str | None,
    max_episodes: int | None,
    history: int = 1,
    encode_text: bool = True,
) -> tuple[list[str], list[dict], tuple[gym.Space, gym.Space]]:
    """Every task's dataset, checked against the task's env before anything trains; with ``history`` > 1 each
    row's observation is the ``history`` observations ending at it (``agents.encoders.stack_history``). Text is
    hashed into word ids (``envs.text``) unless ``encode_text`` is false (policies with their own tokenizer).
    Each part holds ``observations``, ``actions`` and ``starts`` (the rows where its episodes begin)."""
    sources, parts, spaces = [], [], None
    if names.path and len(tasks) > 1:
        raise ConfigError(
            f"learner.dataset.path names one dataset but the sequence has {len(tasks)} tasks",
            "name each task's dataset in sequence.tasks[i].dataset, or use sequence=single",
        )
    for task in tasks:
        name = task.dataset or names.path or sequence_dataset_id(names.namespace, sequence, task.name, names.quality)
        if dataset_path(name) is None:
            how = (
                f"make it with `{collect_command(sequence, task, names)}`"
                if not (task.dataset or names.path)
                else "check the path: a dataset id, a dataset folder or a D4RL-layout .hdf5 file"
            )
            raise DatasetError(f"task {task.name!r}: dataset {name} not found", how)
        data = load_transitions(name)
        env_spaces = _env_spaces(task)
        _check_fits(task, name, data, env_spaces)
        spaces = spaces or env_spaces
        rows = _first_episodes(data, max_episodes)
        raw = _encode_obs(env_spaces[0], data.observations) if encode_text else data.observations
        observations = _take(raw, rows)
        starts = np.asarray(data.episode_starts)
        starts = starts[starts < len(rows)]
        if history > 1:
            from agents.encoders import stack_history

            observations = stack_history(observations, starts, history)
        parts.append({"observations": observations, "actions": np.asarray(data.actions)[rows], "starts": starts})
        sources.append(str(data.source))
    return sources, parts, spaces


def text_tokens(spec):
    from dataclasses import replace

    return replace(spec, text_tokens=True)


def _env_spaces(task: Task) -> tuple[gym.Space, gym.Space]:
    from envs.registry import make_env

    env = make_env(task.env, monitor=False)()
    try:
        return env.observation_space, env.action_space
    finally:
        env.close()


def _shape_of(space: gym.Space):
    if isinstance(space, gym.spaces.Dict):
        return {k: _shape_of(s) for k, s in space.spaces.items()}
    return getattr(space, "shape", None)


def _check_fits(task: Task, name: str, data, spaces: tuple[gym.Space, gym.Space]) -> None:
    """The dataset's spaces are the task env's: a dataset of another task must not train silently."""
    obs_space, act_space = spaces
    if _shape_of(data.observation_space) != _shape_of(obs_space) or _shape_of(data.action_space) != _shape_of(
        act_space
    ):
        raise DatasetError(
            f"task {task.name!r}: dataset {name} has spaces {data.observation_space} / {data.action_space} but the "
            f"task's env has {obs_space} / {act_space}",
            "train each task on a dataset of its own env (or fix the task's env spec)",
        )


def _first_episodes(data, max_episodes: int | None) -> np.ndarray:
    n = len(data.actions)
    if max_episodes is None or max_episodes >= len(data.episode_starts):
        return np.arange(n)
    return np.arange(int(data.episode_starts[max_episodes]))


def _take(obs, rows: np.ndarray):
    if isinstance(obs, dict):
        return {k: _take(v, rows) for k, v in obs.items()}
    return np.asarray(obs)[rows]
