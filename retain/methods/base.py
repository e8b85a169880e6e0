"""The continual-method protocol: a small set of hooks over the runner and the ``Learner`` protocol.

A method never copies a training loop. Around each task it may change the model (``before_task``,
``after_training``, ``after_task``) and choose whose data the learner trains on (``train_tasks``, ``replay``);
inside training it may add a loss penalty, transform gradients before the optimizer step, act after it, or
change a batch (``StepHooks`` carry these to the learner, SB3 included); at evaluation it may choose the
weights each task is scored with (``eval_weights``). Its state goes into every checkpoint. The same method works on RL, offline and text
learners because it only sees named parameters, gradients and batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from retain.learner import Learner
    from retain.runner import Runner


def stepping_parameters(learner: Learner, params: dict[str, torch.nn.Parameter]) -> dict[str, torch.nn.Parameter]:
    """Those of ``params`` that the optimizer stepping now updates. SAC steps its critic and its actor apart,
    with the actor's forward pass built before the critic's step: a hook of the critic's step that wrote to
    actor weights would break the actor's backward pass (learners with one optimizer have no ``stepping``)."""
    stepping = getattr(learner, "stepping", None)
    return params if stepping is None else {n: p for n, p in params.items() if n in stepping}


@dataclass
class MethodConfig:
    """Every method's config has a name; a method adds its own fields in a subclass."""

    name: str = "finetune"
    """the method (a file in retain/methods/, a config in configs/method/)"""


class Method:
    """No-op hooks; a method overrides what it needs."""

    Config: type[MethodConfig] = MethodConfig

    def __init__(self, cfg: MethodConfig):
        self.cfg = cfg

    def train_tasks(self, task: int) -> list[int]:
        """The tasks whose data (or envs) the learner trains on while training ``task``."""
        return [task]

    def replay(self, task: int) -> dict[int, float]:
        """Earlier tasks replayed while training ``task``: {task index: share of every batch} (offline and CPT
        learners draw those rows from the tasks' data; SB3 off-policy agents keep their transitions instead)."""
        return {}

    def replay_memory(self) -> int | None:
        """How much of each earlier task's data ``replay`` draws from: rows (offline) or tokens (CPT) kept per
        task; None: all of it (perfect memory)."""
        return None

    def before_task(self, run: Runner, task: int) -> bool:
        """Before ``task`` trains (not called again when a run resumes inside it). Return True when this
        replaced the learner's weights, so the runner measures where the task starts from again."""
        return False

    def after_training(self, run: Runner, task: int) -> None:
        """Right after ``task``'s last chunk trained, before R's row is evaluated (PackNet prunes and retrains)."""

    def after_task(self, run: Runner, task: int) -> None:
        """After ``task`` trained and R's row was filled."""

    def penalty(self, learner: Learner) -> torch.Tensor | None:
        """A scalar added to every training loss (computed from ``learner.named_parameters()``)."""
        return None

    def transform_gradients(self, learner: Learner) -> None:
        """Edit the parameters' ``.grad`` in place right before each optimizer step."""

    def after_step(self, learner: Learner) -> None:
        """Right after each optimizer step (PackNet puts frozen weights back)."""

    def batch(self, learner: Learner, batch: Any) -> Any:
        """The batch to train on instead of ``batch`` (e.g. mixed with earlier tasks' data)."""
        return batch

    def eval_weights(self, run: Runner, current: int, task: int) -> dict[str, torch.Tensor] | None:
        """The weights to score ``task`` with while training ``current`` (-1: before the sequence); None: the
        current weights, as a single-model method does. Handing out the same dict object again promises the same
        weights: the runner then reuses that task's last score with them instead of evaluating again."""
        return None

    def state_dict(self) -> dict:
        """What resume needs (tensors, numbers, strings, lists and dicts: checkpoints load ``weights_only``)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
