"""Episode data for Decision Transformers: every task's datasets as contiguous tensors, batches of context
windows gathered by index (``WindowData``), and the same windows built step by step while acting
(``Rollout``).

A row is one timestep; its window is the ``K`` timesteps ending at it, cut at its episode's start and padded
on the left (padding: zero state, return and reward, timestep 0, a missing action, masked). Windows are one
gather per array from a ``(B, K)`` index tensor — no per-sample Python. Several datasets per task (expert and
noisy data, ``dataset.qualities``) are concatenated, so return conditioning sees a spread of returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
import torch

from envs.datasets import dataset_path, load_transitions, sequence_dataset_id
from finetune.env_tasks import Task
from finetune.offline_data import DatasetNames, TaskData, _check_fits, _env_spaces, collect_command
from retain.errors import ConfigError, DatasetError


@dataclass
class EpisodeDatasets:
    """Which datasets each task trains on when it names none: those ``retain collect`` wrote."""

    namespace: str = "retain"
    qualities: list[str] = field(default_factory=lambda: ["expert"])
    """retain collect's dataset.quality of every dataset to load per task, concatenated (e.g. [expert, noisy])"""


def check_fits_model(name: str, obs: gym.Space, act: gym.Space, state_dim: int, act_dim: int) -> None:
    """A task's spaces fit the Decision Transformer's tokens: flat observations up to ``state_dim``, a 1-D
    bounded action space up to ``act_dim`` dimensions."""
    if not isinstance(obs, gym.spaces.Box) or len(obs.shape) != 1:
        raise ConfigError(f"task {name!r} observes {obs}", "the Decision Transformer takes flat Box observations")
    if not isinstance(act, gym.spaces.Box) or len(act.shape) != 1 or not act.is_bounded("both"):
        raise ConfigError(f"task {name!r} acts in {act}", "the Decision Transformer bins bounded 1-D Box actions")
    if obs.shape[0] > state_dim or act.shape[0] > act_dim:
        raise ConfigError(
            f"task {name!r} has {obs.shape[0]} observation and {act.shape[0]} action dimensions; the model takes "
            f"at most {state_dim} and {act_dim}",
            "pretrain a model whose state_dim/act_dim cover every domain you tune it on",
        )


def to_bins(actions: np.ndarray, space: gym.spaces.Box, n_bins: int, act_dim: int) -> np.ndarray:
    """Actions → bin indices over [-1, 1] after min-max scaling from the space's bounds; missing dims -1."""
    low, high = space.low.astype(np.float64), space.high.astype(np.float64)
    unit = 2.0 * (np.asarray(actions, np.float64) - low) / (high - low) - 1.0
    bins = np.rint((np.clip(unit, -1.0, 1.0) + 1.0) / 2.0 * (n_bins - 1)).astype(np.int64)
    out = np.full((len(bins), act_dim), -1, dtype=np.int64)
    out[:, : bins.shape[1]] = bins
    return out


def from_unit(unit: np.ndarray, space: gym.spaces.Box) -> np.ndarray:
    """Bin centres in [-1, 1] → actions in the space's bounds (only the space's dimensions)."""
    low, high = space.low, space.high
    return (low + (unit[:, : space.shape[0]] + 1.0) / 2.0 * (high - low)).astype(space.dtype)


def to_unit(actions: np.ndarray, space: gym.spaces.Box, act_dim: int) -> np.ndarray:
    """Actions min-max scaled to [-1, 1] from the space's bounds, zero-padded to ``act_dim`` (continuous DT)."""
    low, high = space.low.astype(np.float64), space.high.astype(np.float64)
    unit = np.clip(2.0 * (np.asarray(actions, np.float64) - low) / (high - low) - 1.0, -1.0, 1.0)
    out = np.zeros((len(unit), act_dim), dtype=np.float32)
    out[:, : unit.shape[1]] = unit
    return out


@dataclass
class EpisodePart:
    states: np.ndarray
    bins: np.ndarray
    """binned actions (multi-domain DT) or continuous ones in [-1, 1] (continuous DT)"""
    rewards: np.ndarray
    rtg: np.ndarray
    timesteps: np.ndarray
    episode_start: np.ndarray
    best_return: float
    sources: list[str]


def load_episodes(
    tasks: list[Task],
    names: EpisodeDatasets,
    sequence: str | None,
    state_dim: int,
    act_dim: int,
    n_bins: int,
    max_episodes: int | None = None,
    continuous: bool = False,
    spaces: dict[str, tuple[gym.Space, gym.Space]] | None = None,
) -> tuple[list[EpisodePart], list[gym.spaces.Box]]:
    """Every task's datasets (all ``names.qualities``), checked against its env (its ``spaces[name]`` when the
    caller has built it already), as padded arrays."""
    parts, action_spaces = [], []
    for task in tasks:
        obs_space, act_space = (spaces or {}).get(task.name) or _env_spaces(task)
        check_fits_model(task.name, obs_space, act_space, state_dim, act_dim)
        ids = (
            [task.dataset]
            if task.dataset
            else [sequence_dataset_id(names.namespace, sequence, task.name, q) for q in names.qualities]
        )
        chunks, sources = [], []
        for name in ids:
            if dataset_path(name) is None:
                quality = name.rsplit("/", 1)[-1].removesuffix("-v0")
                how = collect_command(sequence, task, DatasetNames(namespace=names.namespace, quality=quality))
                if quality != "expert":  # noisier data: the expert with action noise
                    how += " expert.sigma=0.1"
                raise DatasetError(f"task {task.name!r}: dataset {name} not found", f"make it with `{how}`")
            data = load_transitions(name)
            _check_fits(task, name, data, (obs_space, act_space))
            chunks.append(_episodes(data, max_episodes))
            sources.append(str(data.source))
        parts.append(_part(chunks, act_space, state_dim, act_dim, n_bins, sources, continuous))
        action_spaces.append(act_space)
    return parts, action_spaces


def _episodes(data, max_episodes: int | None) -> dict[str, np.ndarray]:
    starts = np.asarray(data.episode_starts, dtype=np.int64)
    n = len(data.rewards) if max_episodes is None or max_episodes >= len(starts) else int(starts[max_episodes])
    starts = starts[starts < n]
    return {
        "obs": np.asarray(data.observations, np.float32)[:n],
        "actions": np.asarray(data.actions)[:n],
        "rewards": np.asarray(data.rewards, np.float64)[:n],
        "starts": starts,
    }


def _part(chunks, act_space, state_dim: int, act_dim: int, n_bins: int, sources: list[str], continuous: bool):
    states, bins, rewards, rtg, steps, start, best, offset = [], [], [], [], [], [], -np.inf, 0
    for c in chunks:
        n = len(c["rewards"])
        padded = np.zeros((n, state_dim), np.float32)
        padded[:, : c["obs"].shape[1]] = c["obs"]
        states.append(padded)
        encode = (
            to_unit(c["actions"], act_space, act_dim)
            if continuous
            else to_bins(c["actions"], act_space, n_bins, act_dim)
        )
        bins.append(encode)
        rewards.append(c["rewards"])
        ends = np.append(c["starts"][1:], n)
        for s, e in zip(c["starts"], ends):
            returns = np.cumsum(c["rewards"][s:e][::-1])[::-1]
            rtg.append(returns)
            steps.append(np.arange(e - s))
            start.append(np.full(e - s, s + offset))
            best = max(best, float(returns[0]))
        offset += n
    return EpisodePart(
        np.concatenate(states),
        np.concatenate(bins),
        np.concatenate(rewards),
        np.concatenate(rtg),
        np.concatenate(steps),
        np.concatenate(start),
        best,
        sources,
    )


class WindowData(TaskData):
    """``TaskData``'s batching (tasks, replay shares, kept memories) over rows whose observation is the
    context window ending at them: ``rows()`` returns ``(window dict, action bins (B, K, A), task index)``."""

    def __init__(self, parts: list[EpisodePart], context: int, rtg_scale: float, device: torch.device):
        self.context = context
        continuous = parts[0].bins.dtype.kind == "f"
        self.pad_action = 0.0 if continuous else -1  # a padded timestep's action (continuous DT: zeros)
        self.sizes = torch.tensor([len(p.rewards) for p in parts], device=device)
        self.offsets = torch.cumsum(self.sizes, 0) - self.sizes

        def cat(key: str, dtype) -> torch.Tensor:
            return torch.as_tensor(np.concatenate([getattr(p, key) for p in parts]), dtype=dtype, device=device)

        self.states = cat("states", torch.float32)
        self.actions = cat("bins", torch.float32 if continuous else torch.long)
        self.rewards = cat("rewards", torch.float32) / rtg_scale
        self.rtg = cat("rtg", torch.float32) / rtg_scale
        self.timesteps = cat("timesteps", torch.long)
        # episode starts are per part: shift them to global rows
        self.episode_start = torch.cat(
            [torch.as_tensor(p.episode_start, device=device) + int(o) for p, o in zip(parts, self.offsets)]
        )
        self.back = torch.arange(-(context - 1), 1, device=device)

    def rows(self, rows: torch.Tensor, tasks: torch.Tensor):
        index = rows.unsqueeze(1) + self.back  # B, K
        valid = index >= self.episode_start[rows].unsqueeze(1)
        index = torch.where(valid, index, rows.unsqueeze(1))
        zero = ~valid
        obs = {
            "states": self.states[index].masked_fill(zero.unsqueeze(-1), 0.0),
            "rtg": self.rtg[index].masked_fill(zero, 0.0),
            "rewards": self.rewards[index].masked_fill(zero, 0.0),
            "timesteps": self.timesteps[index].masked_fill(zero, 0),
            "mask": valid,
        }
        return obs, self.actions[index].masked_fill(zero.unsqueeze(-1), self.pad_action), tasks


class Rollout:
    """The context windows of ``n`` parallel episodes while a Decision Transformer acts in them.

    ``window(obs)`` appends the new observations and returns the windows to act on; ``record(actions)``
    stores the bins chosen; ``observe(rewards, dones)`` lowers the returns-to-go by the rewards and starts a
    fresh window (at the target return) where an episode ended."""

    def __init__(self, n: int, state_dim: int, act_dim: int, context: int, target, device, continuous=False):
        """``target``: the scaled target return, one for all envs or one per env; ``continuous``: the context
        holds continuous actions (continuous DT) instead of bins."""
        self.n, self.k = n, context
        self.pad = 0.0 if continuous else -1
        self.target = torch.as_tensor(np.broadcast_to(np.asarray(target, np.float32), (n,)).copy(), device=device)
        self.states = torch.zeros(n, context, state_dim, device=device)
        dtype = torch.float32 if continuous else torch.long
        self.bins = torch.full((n, context, act_dim), self.pad, dtype=dtype, device=device)
        self.rewards = torch.zeros(n, context, device=device)
        self.rtg = torch.zeros(n, context, device=device)
        self.timesteps = torch.zeros(n, context, dtype=torch.long, device=device)
        self.mask = torch.zeros(n, context, dtype=torch.bool, device=device)
        self.next_rtg = self.target.clone()
        self.t = torch.zeros(n, dtype=torch.long, device=device)

    def _shift(self) -> None:
        for buffer in (self.states, self.bins, self.rewards, self.rtg, self.timesteps, self.mask):
            buffer.copy_(torch.roll(buffer, -1, dims=1))

    def window(self, obs: np.ndarray) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        self._shift()
        obs = torch.as_tensor(np.asarray(obs, np.float32), device=self.states.device)
        self.states[:, -1] = 0.0
        self.states[:, -1, : obs.shape[1]] = obs
        self.bins[:, -1] = self.pad
        self.rewards[:, -1] = 0.0
        self.rtg[:, -1] = self.next_rtg
        self.timesteps[:, -1] = self.t
        self.mask[:, -1] = True
        window = {
            "states": self.states,
            "rtg": self.rtg,
            "rewards": self.rewards,
            "timesteps": self.timesteps,
            "mask": self.mask,
        }
        return window, self.bins

    def record(self, bins: torch.Tensor) -> None:
        self.bins[:, -1, : bins.shape[1]] = bins

    def observe(self, rewards: np.ndarray, dones: np.ndarray, scale: float) -> None:
        r = torch.as_tensor(np.asarray(rewards, np.float32), device=self.states.device) / scale
        self.rewards[:, -1] = r
        self.next_rtg = self.next_rtg - r
        self.t += 1
        done = torch.as_tensor(np.asarray(dones, bool), device=self.states.device)
        if done.any():  # the vector env already reset these: a new episode, an empty window
            self.mask[done] = False
            self.bins[done] = self.pad
            self.states[done] = 0.0
            self.rewards[done] = 0.0
            self.rtg[done] = 0.0
            self.timesteps[done] = 0
            self.next_rtg[done] = self.target[done]
            self.t[done] = 0
