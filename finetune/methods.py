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
    """A fresh model for every task: no forgetting by construction, and the reference that
    forward transfer is measured against."""

    def before_task(self, ctx: SequenceContext, task_index: int) -> None:
        ctx.model = ctx.new_model(task_index)


METHODS: dict[str, type[Method]] = {"finetune": Finetune, "reset": Reset}


def make_method(cfg: MethodConfig) -> Method:
    if cfg.name not in METHODS:
        raise ConfigError(f"unknown method {cfg.name!r}", f"use method= one of {', '.join(METHODS)}")
    return METHODS[cfg.name](cfg)
