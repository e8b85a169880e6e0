"""Multi-task transition data for representation objectives: every task's episodes in contiguous tensors,
batches of (oₜ, aₜ, oₜ₊ₙ) pairs gathered by index (``PairData``).

A row is one timestep t with t + n inside its episode. Its input is the ``history`` observations ending at t
(the oldest first; before the episode's start the first observation repeats, as ``FrameStackObservation``
pads at reset), and likewise for t + n. A batch is one seeded draw of (task, row) per sample — the task
uniformly, so every task weighs the same whatever its size — then one gather per array from a (B, history)
index tensor: no per-sample Python, no DataLoader. Frames stay in their stored dtype (uint8 pixels) until the
encoder reads them.

The last ``val_fraction`` of each task's episodes (at least one, when it has two or more) are held out: the
objective's loss on them is what the pretraining job scores per task (a one-episode task is scored on its
training pairs).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from retain.errors import DatasetError


@dataclass
class EpisodeArrays:
    """One task's episodes, as ``envs.transitions.load_transitions`` reads them."""

    observations: np.ndarray
    """(N, *frame): the observation of each step"""
    actions: np.ndarray
    """(N, A) continuous or (N,) discrete"""
    episode_starts: np.ndarray
    """(E,) the first row of each episode"""


def _split(starts: np.ndarray, n: int, val_fraction: float) -> int:
    """The first row of the held-out episodes (n: nothing held out)."""
    episodes = len(starts)
    held = int(round(episodes * val_fraction)) if episodes > 1 else 0
    held = max(held, 1) if val_fraction > 0 and episodes > 1 else held
    return n if held == 0 else int(starts[episodes - held])


class PairData:
    """See the module docstring. ``batch`` is for training; ``validation`` the fixed held-out pairs of a task."""

    def __init__(
        self,
        parts: list[EpisodeArrays],
        history: int,
        n_step: int,
        device: torch.device,
        val_fraction: float = 0.1,
        max_gap: int | None = None,
    ):
        self.history, self.n_step, self.device = history, n_step, device
        self.max_gap = max_gap or n_step
        """the largest step ahead a batch may ask for (contrastive objectives draw k in 1..max_gap)"""
        obs, actions, first, last, train, val, offset = [], [], [], [], [], [], 0
        for t, part in enumerate(parts):
            n = len(part.actions)
            starts = np.asarray(part.episode_starts, dtype=np.int64)
            ends = np.append(starts[1:], n) - 1
            episode = np.searchsorted(starts, np.arange(n), side="right") - 1
            row_first, row_last = starts[episode], ends[episode]
            cut = _split(starts, n, val_fraction)
            rows = np.arange(n)
            usable = rows + self.max_gap <= row_last
            train_rows, val_rows = rows[usable & (rows < cut)], rows[usable & (rows >= cut)]
            if len(train_rows) == 0:
                raise DatasetError(
                    f"task {t}: no step has {self.max_gap} more steps after it in its episode (training part)",
                    "collect longer or more episodes, or lower objective.n_step",
                )
            obs.append(part.observations)
            actions.append(part.actions)
            first.append(row_first + offset)
            last.append(row_last + offset)
            train.append(torch.as_tensor(train_rows + offset))
            val.append(torch.as_tensor(val_rows + offset))
            offset += n
        self.obs = torch.as_tensor(np.ascontiguousarray(np.concatenate(obs)), device=device)
        acts = np.concatenate(actions)
        self.actions = torch.as_tensor(
            acts.astype(np.float32) if acts.dtype.kind == "f" else acts.astype(np.int64), device=device
        )
        self.first = torch.as_tensor(np.concatenate(first), device=device)
        self.last = torch.as_tensor(np.concatenate(last), device=device)
        self.train_rows = [r.to(device) for r in train]
        self.val_rows = [r.to(device) for r in val]
        self.train_sizes = torch.tensor([len(r) for r in train], device=device)
        self.train_flat = torch.cat(self.train_rows)
        self.train_offsets = torch.cumsum(self.train_sizes, 0) - self.train_sizes
        self._back = torch.arange(history - 1, -1, -1, device=device)  # history offsets, the oldest first

    @property
    def n_tasks(self) -> int:
        return len(self.train_rows)

    def frames(self, rows: torch.Tensor) -> torch.Tensor:
        """The encoder inputs of ``rows``: (B, *frame), or (B, history, *frame) with a history."""
        if self.history > 1:
            rows = torch.maximum(rows[:, None] - self._back, self.first[rows][:, None])
        # one index_select over flattened frames: advanced indexing of uint8 frames is ~30x slower on CPU
        flat = self.obs.view(len(self.obs), -1).index_select(0, rows.reshape(-1))
        return flat.view(*rows.shape, *self.obs.shape[1:])

    def pairs(self, rows: torch.Tensor, tasks: torch.Tensor, gap: torch.Tensor | int | None = None) -> dict:
        """``obs`` (inputs at t), ``next`` (inputs at t + gap, default n_step), ``action`` (aₜ), ``task``."""
        ahead = rows + (self.n_step if gap is None else gap)
        return {"obs": self.frames(rows), "next": self.frames(ahead), "action": self.actions[rows], "task": tasks}

    def draw(self, size: int, generator: torch.Generator, tasks: list[int] | None = None):
        """``size`` training rows and their tasks: a task uniformly (among ``tasks``), then a row of it."""
        choices = torch.tensor(tasks if tasks is not None else range(self.n_tasks))
        task = choices[torch.randint(len(choices), (size,), generator=generator)].to(self.device)
        u = torch.rand(size, generator=generator).to(self.device)
        sizes = self.train_sizes[task]
        rows = self.train_flat[self.train_offsets[task] + (u * sizes).long().clamp_max(sizes - 1)]
        return rows, task

    def batch(self, size: int, generator: torch.Generator, tasks: list[int] | None = None) -> dict:
        rows, task = self.draw(size, generator, tasks)
        return self.pairs(rows, task)

    def held_out(self, task: int) -> bool:
        return len(self.val_rows[task]) > 0

    def validation(self, task: int, size: int, seed: int) -> dict:
        """Up to ``size`` held-out pairs of ``task`` (a fixed seeded draw); its training pairs when it holds none
        out (one episode: ``held_out`` says so)."""
        rows = self.val_rows[task] if self.held_out(task) else self.train_rows[task]
        generator = torch.Generator().manual_seed(seed)
        pick = torch.randperm(len(rows), generator=generator)[:size].to(self.device)
        return self.pairs(rows[pick], torch.full((len(pick),), task, device=self.device))
