"""Tasks defined by environments, as the SB3 and offline learners share them: the task list of a sequence,
checked before anything runs, and the scoring of a policy on it (and on extra evaluation sets)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import gymnasium as gym
import numpy as np
import torch
from omegaconf import DictConfig

from envs.evaluation import METRICS, TaskSetEvaluator
from envs.registry import check_env_spec, make_env
from envs.spec import EnvSpec, task_configs
from retain.errors import ConfigError
from retain.learner import TaskScore
from retain.seeding import derive_seed

Observe = Callable[[int, np.ndarray, np.ndarray], None]
"""``observe(j, rewards, dones)``: task j's envs' outcome of a step (``envs.evaluation.Observe`` per task)"""


@dataclass
class Task:
    """A task as env learners see it: its name, env and budget (environment steps; offline learners
    count updates in their own config), and the dataset it names, if any."""

    name: str
    env: EnvSpec
    steps: int
    dataset: str | None = None


@dataclass
class EvalSettings:
    episodes: int
    """episodes per task per evaluation"""
    n_envs: int = 16
    """parallel envs per task"""
    workers: int = 1
    """>1: evaluations of every task step all their envs at once in this many processes"""
    end_at_success: bool = False
    """episodes end at their first success (``EnvSpec.end_at_success``)"""


def sequence_tasks(cfg: DictConfig) -> list[Task]:
    """The tasks of ``cfg.sequence`` (or the one task of ``cfg.env`` for sequence=single), their names,
    budgets and metric checked; envs are not built here (see ``check_spaces``)."""
    seq = cfg.sequence
    seq_tasks = task_configs(cfg)
    if not seq_tasks:
        raise ConfigError(f"sequence {seq.name!r} has no tasks", "choose sequence=<name> or list sequence.tasks")
    if seq.metric not in METRICS:
        raise ConfigError(f"sequence.metric={seq.metric!r} is not supported", f"use one of {', '.join(METRICS)}")
    if seq.eval_episodes < 1:
        raise ConfigError(f"sequence.eval_episodes={seq.eval_episodes}", "evaluate at least one episode per task")
    tasks = []
    for t in seq_tasks:
        if "/" in t.name or not t.name:
            raise ConfigError(f"task name {t.name!r} is not usable in metric names", "use a short name without '/'")
        steps = t.steps if t.steps is not None else seq.steps_per_task
        if steps <= 0:
            raise ConfigError(f"task {t.name!r} has a budget of {steps} steps", "give each task a positive budget")
        if seq.metric == "normalized_return" and (t.env.ref_min_score is None or t.env.ref_max_score is None):
            raise ConfigError(
                f"metric normalized_return needs reference scores, and task {t.name!r} has none",
                "set env.ref_min_score and env.ref_max_score (random and expert returns)",
            )
        tasks.append(Task(t.name, t.env, int(steps), t.dataset))
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ConfigError(f"task names repeat in sequence {seq.name!r}: {names}", "give every task a distinct name")
    return tasks


def check_spaces(tasks: list[Task], what: str = "sequence") -> tuple[gym.Space, gym.Space]:
    """Build each task's env once: the ids exist and every task has the first one's spaces. Returns them."""
    reference = None
    for task in tasks:
        check_env_spec(task.env)
        env = make_env(task.env, monitor=False)()
        spaces = (env.observation_space, env.action_space)
        env.close()
        if reference is None:
            reference = (task.name, spaces)
        elif spaces != reference[1]:
            raise ConfigError(
                f"task {task.name!r} has spaces {spaces[0]} / {spaces[1]} but {reference[0]!r} has "
                f"{reference[1][0]} / {reference[1][1]}",
                f"tasks of one {what} must share observation and action spaces",
            )
    return reference[1]


class EnvScorer:
    """Scores a policy on the tasks (K episodes each, seeded per task) and on extra evaluation sets."""

    def __init__(
        self, tasks: list[Task], evaluation: EvalSettings, metric: str, seed: int, extra: dict[str, list[Task]]
    ):
        self.tasks, self.metric, self.extra = tasks, metric, extra

        def specs(ts: list[Task]) -> list[EnvSpec]:
            return [replace(t.env, end_at_success=True) if evaluation.end_at_success else t.env for t in ts]

        self.main = TaskSetEvaluator(
            specs(tasks),
            evaluation.episodes,
            [derive_seed(seed, "eval", j) for j in range(len(tasks))],
            evaluation.n_envs,
            evaluation.workers,
        )
        self.sets = {
            name: TaskSetEvaluator(
                specs(ts),
                evaluation.episodes,
                [derive_seed(seed, "eval", name, k) for k in range(len(ts))],
                evaluation.n_envs,
            )
            for name, ts in extra.items()
        }

    def _score(self, result, spec: EnvSpec) -> TaskScore:
        return TaskScore(result.score(self.metric, spec), result.metrics(spec))

    def score(
        self,
        indices: list[int],
        predict: Callable[[int, np.ndarray], np.ndarray],
        same_policy: bool,
        observe: Observe | None = None,
        batched: bool = False,
    ) -> dict[int, TaskScore]:
        results = self.main(indices, predict, same_policy, observe, batched)
        return {j: self._score(r, self.tasks[j].env) for j, r in results.items()}

    def score_extra(
        self,
        name: str,
        act: Callable[[np.ndarray], np.ndarray] | None,
        per_task=None,
        observe: Observe | None = None,
        batched: bool = False,
    ) -> list[TaskScore]:
        """Score set ``name`` with ``act(obs)`` for all its envs at once, or ``per_task(k, obs)`` (and
        ``observe(k, rewards, dones)``) for the envs of its task k (``k`` each env's task with ``batched``)."""
        tasks = self.extra[name]
        predict = per_task or (lambda j, obs: act(obs))
        results = self.sets[name](list(range(len(tasks))), predict, per_task is None, observe, batched)
        return [self._score(results[k], t.env) for k, t in enumerate(tasks)]

    def extra_sets(self) -> dict[str, list[str]]:
        return {name: [t.name for t in ts] for name, ts in self.extra.items()}

    def close(self) -> None:
        self.main.close()
        for evaluator in self.sets.values():
            evaluator.close()


@contextlib.contextmanager
def swapped_weights(
    module: torch.nn.Module,
    weights: dict[int, dict[str, torch.Tensor] | None],
    act: Callable[..., np.ndarray],
    pass_task: bool = False,
) -> Iterator[Callable[[int, np.ndarray], np.ndarray]]:
    """``predict(j, obs)`` acting with ``weights[j]`` loaded into ``module`` (its own weights when None);
    weights are swapped only when the task changes, and ``module``'s own are back afterwards. ``act(obs)``
    acts, or ``act(obs, j)`` with ``pass_task`` (a task-conditioned policy)."""
    own = {k: v.detach().clone() for k, v in module.state_dict().items()}
    loaded: list[int | None] = [None]

    def predict(j: int, obs: np.ndarray) -> np.ndarray:
        wanted = j if j >= 0 and weights.get(j) is not None else None
        if wanted != loaded[0]:
            module.load_state_dict(own if wanted is None else weights[wanted])
            loaded[0] = wanted
        return act(obs, j) if pass_task else act(obs)

    try:
        yield predict
    finally:
        if loaded[0] is not None:
            module.load_state_dict(own)
