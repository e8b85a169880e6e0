"""The ``Learner`` protocol: what the continual runner trains, task after task.

A learner is whatever trains — SB3 online RL, an offline learner from datasets, the CPT trainer, the
pretrained-module trainers of later issues. The runner (``retain/runner.py``) owns everything around the
training: task order, the method's hooks, chunking, the evaluation schedule, R, checkpoints and resume.
The learner owns the inner loop and says, in its own units (environment steps, optimizer updates), how
long a task is.

Rows and columns: ``tasks`` are what the learner trains on one after another (R's rows); ``eval_tasks``
are what it is scored on (R's columns). They are the same list for RL and offline sequences; for CPT the
rows are stages and the columns text sources.

Methods act on a learner through ``named_parameters``, ``weights``/``load_weights``, ``reset_model``,
``initial_weights`` and — inside ``train_chunk`` — the ``StepHooks`` the runner binds: a loss penalty, a
gradient transform before every optimizer step, and a batch transform. A learner that owns its loss calls
them directly; the SB3 learner reaches SB3's own ``train()`` through optimizer step pre-hooks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch


@dataclass
class TaskScore:
    """One evaluation of one task: the score R holds, and what is logged under ``eval/<task>/``."""

    score: float
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class LearnerState:
    """A learner's full training state, as checkpoints store it: tensors (safetensors), the rest (a
    ``weights_only`` torch file: tensors, numbers, strings, lists and dicts only) and large buffers."""

    weights: dict[str, torch.Tensor]
    state: dict[str, Any]
    arrays: dict[str, torch.Tensor] = field(default_factory=dict)


class StepHooks:
    """What a continual method adds inside training, bound by the runner before any ``train_chunk``.

    ``has_*`` say whether the method overrides the hook, so a learner adds no work (and no SB3 optimizer
    hook) for methods such as finetune that change nothing inside a step.
    """

    def __init__(self, method: Any = None):
        from retain.methods.base import Method

        self.method = method

        def overrides(name: str) -> bool:
            return method is not None and getattr(type(method), name) is not getattr(Method, name)

        self.has_penalty = overrides("penalty")
        self.has_gradient_transform = overrides("transform_gradients")
        self.has_after_step = overrides("after_step")
        self.has_batch = overrides("batch")

    def penalty(self, learner: Learner) -> torch.Tensor | None:
        """A scalar added to the training loss (L2, EWC, MAS), or None."""
        return self.method.penalty(learner) if self.has_penalty else None

    def transform_gradients(self, learner: Learner) -> None:
        """Change ``.grad`` of the learner's parameters in place before the optimizer step (A-GEM, PackNet)."""
        if self.has_gradient_transform:
            self.method.transform_gradients(learner)

    def after_step(self, learner: Learner) -> None:
        """Right after the optimizer step (PackNet restores frozen weights)."""
        if self.has_after_step:
            self.method.after_step(learner)

    @property
    def any_step_hook(self) -> bool:
        return self.has_penalty or self.has_gradient_transform or self.has_after_step

    def batch(self, learner: Learner, batch: Any) -> Any:
        """The batch the learner trains on instead of ``batch``."""
        return self.method.batch(learner, batch) if self.has_batch else batch


@runtime_checkable
class Learner(Protocol):
    tasks: list[str]
    """names of the tasks trained in order (R's rows)"""
    eval_tasks: list[str]
    """names of the tasks scored after each one (R's columns); usually ``tasks``"""
    metric: str
    """what R holds: success | return | normalized_return | loss | ..."""
    higher_is_better: bool
    unit: str
    """what budgets and the logging x-axis count: "environment steps", "updates", ..."""

    @property
    def global_step(self) -> int:
        """The x-axis of everything logged (environment steps, updates)."""
        ...

    def budget(self, task: int) -> int:
        """Units (environment steps, updates) to train task ``task``."""
        ...

    def granularity(self, task: int) -> int:
        """The smallest number of units a chunk can have (e.g. one SB3 rollout); chunks are multiples of it."""
        ...

    def bind(self, log: Callable[[dict[str, float], int], None], hooks: StepHooks, progress: Any) -> None:
        """Receive the run's logger (``log(metrics, step)``, metric names with fixed prefixes), the method's
        step hooks, and a progress bar to ``update(units)``. Called once before anything else trains."""
        ...

    def prepare_task(
        self, task: int, data_tasks: list[int], replay: dict[int, float] | None = None, memory: int | None = None
    ) -> bool:
        """Point training at task ``task``, on the data (or envs) of ``data_tasks`` (the method's choice:
        ``[task]``, or every task so far for multitask), with ``replay``'s share of every batch drawn from
        earlier tasks' data — from ``memory`` rows/tokens kept per task, or all of it. Returns True when the weights changed here (e.g. a CPT stage loading a
        checkpoint), so the runner measures the task's start again."""
        ...

    def train_chunk(self, task: int, chunk: int, units: int) -> None:
        """Train ``units`` units on the prepared task. Chunk ``chunk`` of a task must give the same result
        whether or not the process was restarted from the checkpoint before it (exact resume)."""
        ...

    def evaluate(self, tasks: list[int], weights: dict[int, dict[str, torch.Tensor] | None]) -> dict[int, TaskScore]:
        """Score each of ``tasks`` (indices into ``eval_tasks``), each with ``weights[j]`` when not None (the
        method's choice: a per-task model, masks), else with the current weights; the current weights are
        in place again afterwards."""
        ...

    def named_parameters(self) -> Iterator[tuple[str, torch.nn.Parameter]]:
        """The trainable parameters methods regularize, project or mask."""
        ...

    def weights(self) -> dict[str, torch.Tensor]:
        """The weights that ``evaluate`` swaps (a copy)."""
        ...

    def load_weights(self, weights: dict[str, torch.Tensor]) -> None: ...

    def initial_weights(self, task: int) -> dict[str, torch.Tensor]:
        """The weights a fresh model for ``task`` starts from (what ``reset_model(task)`` would give)."""
        ...

    def reset_model(self, task: int) -> None:
        """Replace the model (and its optimizer) by a fresh one for ``task``, seeded by the task."""
        ...

    def state(self) -> LearnerState:
        """Everything the rest of the run depends on (see ``train_chunk``)."""
        ...

    def load_state(self, state: LearnerState, where: str) -> None:
        """Restore ``state()`` into a learner built with the same config (``where`` names it in errors)."""
        ...

    def close(self) -> None: ...


class OptionalLearnerParts(Protocol):
    """What a learner may add; the runner checks with ``hasattr``.

    - ``extra_eval_sets() -> dict[str, list[str]]`` and ``evaluate_extra(name) -> list[TaskScore]``: further
      evaluation sets (e.g. the pretraining tasks, for retention) scored before the sequence and after every
      task with the current weights; each becomes a T×K matrix in ``results.json``.
      ``extra_higher_is_better(name) -> bool`` gives a set's direction when it is not the learner's (an LM
      policy's text loss beside success rates).
    - ``probe() -> dict[str, float]``: scalars measured before the sequence and after every task (e.g. CPT's
      knowledge probes), logged under ``eval/``.
    - ``summary() -> dict``: keys added to ``summary.json``.
    """
