"""A fresh model for every task: no forgetting and no transfer by construction.

Each task is evaluated with its own model — the one trained on it, or, before its turn, the fresh one it
will start from — so its curves are the single-task references of Continual World's AUC forward transfer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from retain.methods.base import Method, MethodConfig

if TYPE_CHECKING:
    from retain.runner import Runner


@dataclass
class ResetConfig(MethodConfig):
    name: str = "reset"


class Reset(Method):
    Config = ResetConfig

    def __init__(self, cfg: ResetConfig):
        super().__init__(cfg)
        self.experts: dict[int, dict[str, torch.Tensor]] = {}
        self._fresh: dict[int, dict[str, torch.Tensor]] = {}

    def before_task(self, run: Runner, task: int) -> bool:
        run.learner.reset_model(task)
        return True

    def after_task(self, run: Runner, task: int) -> None:
        self.experts[task] = run.learner.weights()

    def eval_weights(self, run: Runner, current: int, task: int) -> dict[str, torch.Tensor] | None:
        if task == current:
            return None
        if task in self.experts:
            return self.experts[task]
        if task not in self._fresh:  # deterministic, so a cache that is not checkpointed
            self._fresh[task] = run.learner.initial_weights(task)
        return self._fresh[task]

    def state_dict(self) -> dict:
        return {"experts": {str(k): v for k, v in self.experts.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.experts = {int(k): v for k, v in state.get("experts", {}).items()}
