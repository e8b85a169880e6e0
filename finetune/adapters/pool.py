"""Key-query selection from a pool, as L2P (Wang et al. 2022) and L2M (Schmied et al. 2023) do it.

Each pool entry has a learnable key of the model width, initialised U(-1, 1). An input's query (the masked
mean of its state embeddings) is compared with every key by cosine similarity in fp32 and the ``top_k``
most similar entries are selected. From the second task on, while training, L2M's count penalty rescales
the similarities, ``sim <- ((sim + 1) / 2) * inv_counts``, where ``inv_counts`` is the normalised inverse of
how often each entry was selected before the current task (refreshed at each task switch), so a new task
prefers entries earlier tasks did not use. The key loss ``-w * mean cos(query, selected keys)`` pulls the
selected keys toward their queries. With ``oracle`` the task id picks the entry instead (task t: entry t).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class KeyPool(nn.Module):
    def __init__(self, size: int, width: int, top_k: int, count_penalty: bool, key_weight: float, oracle: bool):
        super().__init__()
        if not 1 <= top_k <= size:
            from retain.errors import ConfigError

            raise ConfigError(f"adapter.top_k={top_k} with a pool of {size}", "use 1 <= top_k <= pool_size")
        self.size, self.top_k, self.oracle = size, top_k, oracle
        self.count_penalty, self.key_weight = count_penalty, key_weight
        self.keys = nn.Parameter(torch.empty(size, width).uniform_(-1.0, 1.0))
        # selection counts: over the whole run, and frozen at the current task's start (the penalty's)
        self.register_buffer("counts", torch.zeros(size))
        self.register_buffer("inv_counts", torch.ones(size))
        self.register_buffer("task", torch.zeros((), dtype=torch.long))
        self._similarity: torch.Tensor | None = None

    def start_task(self, task: int) -> None:
        self.task.fill_(task)
        inverse = 1.0 / (self.counts + 1.0)
        self.inv_counts.copy_(inverse / inverse.max())

    def similarity(self, q: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of every query to every key, ``(B, size)``, in fp32."""
        return F.normalize(q.float(), dim=-1) @ F.normalize(self.keys.float(), dim=-1).T

    def select(self, q: torch.Tensor, task: torch.Tensor | None) -> torch.Tensor:
        """The selected entries, ``(B, top_k)``; -1 where nothing is selected (oracle, a task outside the pool)."""
        sim = self.similarity(q)
        if self.oracle:
            if task is None:
                raise ValueError("the oracle pool needs each row's task index")
            index = task.long().unsqueeze(-1)
            index = torch.where(index < self.size, index, torch.full_like(index, -1))
        else:
            score = sim
            if self.training and self.count_penalty and int(self.task) > 0:
                score = (sim + 1.0) / 2.0 * self.inv_counts
            index = score.topk(self.top_k, dim=-1).indices
        if self.training:
            picked = index[index >= 0]
            self.counts += torch.bincount(picked, minlength=self.size).to(self.counts.dtype)
            self._similarity = sim.gather(-1, index.clamp_min(0)) * (index >= 0)
        return index

    def key_loss(self) -> torch.Tensor | None:
        if self._similarity is None or self.oracle or self.key_weight == 0:
            self._similarity = None
            return None
        loss = -self.key_weight * self._similarity.mean()
        self._similarity = None
        return loss
