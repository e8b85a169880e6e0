"""Continual-learning methods as small hook sets over one sequence runner.

The runner owns the loop: it switches tasks, trains, evaluates every task and fills R. A method
only says what happens around each task (``before_task``/``after_task``), what it adds to the loss
(``penalty``) and how it mixes batches (``batch``). Hooks that change the loss are used by runners
that own their loss (text, offline RL); the online SB3 runner calls ``before_task``/``after_task``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch

from retain.errors import ConfigError

if TYPE_CHECKING:
    from finetune.sequence import SequenceContext


@dataclass
class MethodConfig:
    """Which continual method to run, and its knobs."""

    name: str = "finetune"
    """finetune (one model keeps training task after task) | reset (a fresh model per task)"""
    reset_replay_buffer: bool = True
    """off-policy agents: empty the replay buffer when the task changes (Continual World's default)"""


class ContinualMethod(Protocol):
    def before_task(self, ctx: SequenceContext, task_index: int) -> None: ...
    def after_task(self, ctx: SequenceContext, task_index: int) -> None: ...
    def penalty(self, model: Any) -> torch.Tensor | None: ...
    def batch(self, batch: Any) -> Any: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


class Method:
    """No-op hooks; subclasses override what they need."""

    def __init__(self, cfg: MethodConfig):
        self.cfg = cfg

    def before_task(self, ctx: SequenceContext, task_index: int) -> None:
        pass

    def after_task(self, ctx: SequenceContext, task_index: int) -> None:
        pass

    def penalty(self, model: Any) -> torch.Tensor | None:
        return None

    def batch(self, batch: Any) -> Any:
        return batch

    def eval_weights(self, ctx: SequenceContext, current: int, task_index: int) -> dict[str, torch.Tensor] | None:
        """Policy weights to evaluate ``task_index`` with while training task ``current`` (-1: before
        the sequence); None evaluates the current model, as a single-model method does."""
        return None

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class Finetune(Method):
    """Sequential fine-tuning: the same model trains on each task in turn (the forgetting baseline)."""

    def before_task(self, ctx: SequenceContext, task_index: int) -> None:
        ctx.switch_env(task_index)
        if self.cfg.reset_replay_buffer and getattr(ctx.model, "replay_buffer", None) is not None:
            ctx.model.replay_buffer.reset()


class Reset(Method):
    """A fresh model for every task, kept after its task: each task is evaluated with its own model
    (a fresh one before its turn), so there is no forgetting and no transfer by construction. Its
    curves are the single-task references of Continual World's AUC forward transfer."""

    def __init__(self, cfg: MethodConfig):
        super().__init__(cfg)
        self.experts: dict[int, dict[str, torch.Tensor]] = {}

    def before_task(self, ctx: SequenceContext, task_index: int) -> None:
        ctx.model = ctx.new_model(task_index)

    def after_task(self, ctx: SequenceContext, task_index: int) -> None:
        self.experts[task_index] = {k: v.detach().clone() for k, v in ctx.model.policy.state_dict().items()}

    def eval_weights(self, ctx: SequenceContext, current: int, task_index: int) -> dict[str, torch.Tensor] | None:
        if task_index == current:
            return None
        if task_index in self.experts:
            return self.experts[task_index]
        return ctx.fresh_weights(task_index)

    def state_dict(self) -> dict:
        return {"experts": {str(k): v for k, v in self.experts.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.experts = {int(k): v for k, v in state.get("experts", {}).items()}


METHODS: dict[str, type[Method]] = {"finetune": Finetune, "reset": Reset}


def make_method(cfg: MethodConfig) -> Method:
    if cfg.name not in METHODS:
        raise ConfigError(f"unknown method {cfg.name!r}", f"use method= one of {', '.join(METHODS)}")
    return METHODS[cfg.name](cfg)
