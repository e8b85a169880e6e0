"""Vectorized evaluation: K episodes of a task in parallel envs, deterministic for a given seed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv

from envs.registry import make_env
from envs.spec import EnvSpec

METRICS = ("success", "return", "normalized_return")


@dataclass
class EvalResult:
    returns: np.ndarray
    successes: np.ndarray
    lengths: np.ndarray

    def normalized_return(self, spec: EnvSpec) -> float | None:
        """D4RL's normalized score, 100·(return − ref_min)/(ref_max − ref_min); None without references."""
        if spec.ref_min_score is None or spec.ref_max_score is None:
            return None
        return float(100.0 * (self.returns.mean() - spec.ref_min_score) / (spec.ref_max_score - spec.ref_min_score))

    def score(self, metric: str, spec: EnvSpec | None = None) -> float:
        if metric == "success":
            return float(self.successes.mean())
        if metric == "return":
            return float(self.returns.mean())
        if metric == "normalized_return":
            value = self.normalized_return(spec) if spec is not None else None
            if value is None:
                raise ValueError("metric normalized_return needs env.ref_min_score and env.ref_max_score on every task")
            return value
        raise ValueError(f"unknown metric {metric!r}; use one of {METRICS}")

    def metrics(self, spec: EnvSpec | None = None) -> dict[str, float]:
        """success, return, length (and normalized_return with reference scores), averaged over episodes."""
        metrics = {
            "success": float(self.successes.mean()),
            "return": float(self.returns.mean()),
            "length": float(self.lengths.mean()),
        }
        normalized = self.normalized_return(spec) if spec is not None else None
        if normalized is not None:
            metrics["normalized_return"] = normalized
        return metrics


def make_vec_env(spec: EnvSpec, n_envs: int, kind: str = "dummy", monitor: bool = True) -> VecEnv:
    thunks = [make_env(spec, monitor=monitor) for _ in range(n_envs)]
    if kind == "subproc" and n_envs > 1:
        return SubprocVecEnv(thunks, start_method="forkserver")
    return DummyVecEnv(thunks)


def eval_vec_env(spec: EnvSpec, episodes: int, n_envs: int = 16, kind: str = "dummy") -> VecEnv:
    """The envs ``evaluate`` runs ``episodes`` episodes in: one per episode, at most ``n_envs``."""
    return make_vec_env(spec, max(1, min(episodes, n_envs)), kind, monitor=False)


Observe = Callable[[np.ndarray, np.ndarray], None]
"""``observe(rewards, dones)`` after every step: what a policy with memory (a Decision Transformer's context
window, its return-to-go) needs besides the observations; envs with ``dones`` have already been reset."""


def _run_episodes(
    venv: VecEnv,
    act: Callable[[np.ndarray], np.ndarray],
    targets: np.ndarray,
    thresholds: list[float | None],
    observe: Observe | None = None,
) -> list[list[tuple]]:
    """Step ``venv`` until env i has finished ``targets[i]`` episodes; returns (return, success, length) per env."""
    n = venv.num_envs
    records: list[list[tuple]] = [[] for _ in range(n)]
    obs = venv.reset()
    done_counts = np.zeros(n, dtype=int)
    ep_return, ep_length, ep_success = np.zeros(n), np.zeros(n, dtype=int), np.zeros(n, dtype=bool)
    while (done_counts < targets).any():
        obs, rewards, dones, infos = venv.step(act(obs))
        if observe is not None:
            observe(rewards, dones)
        ep_return += rewards
        ep_length += 1
        for i, info in enumerate(infos):
            ep_success[i] |= bool(info.get("success", 0) or info.get("is_success", 0))
            if not dones[i]:
                continue
            if done_counts[i] < targets[i]:
                success = ep_success[i] or (thresholds[i] is not None and ep_return[i] >= thresholds[i])
                records[i].append((float(ep_return[i]), float(success), int(ep_length[i])))
            done_counts[i] += 1
            ep_return[i], ep_length[i], ep_success[i] = 0.0, 0, False
    return records


def _result(records: list[list[tuple]]) -> EvalResult:
    flat = [r for env_records in records for r in env_records]
    return EvalResult(np.array([r[0] for r in flat]), np.array([r[1] for r in flat]), np.array([r[2] for r in flat]))


def _split(episodes: int, n: int) -> np.ndarray:
    return np.array([(episodes + i) // n for i in range(n)])


def evaluate(
    predict: Callable[[np.ndarray], np.ndarray],
    spec: EnvSpec,
    episodes: int,
    seed: int,
    n_envs: int = 16,
    kind: str = "dummy",
    venv: VecEnv | None = None,
    observe: Observe | None = None,
) -> EvalResult:
    """Run exactly ``episodes`` episodes of ``spec`` with ``predict`` (batched obs → batched actions).

    Episodes are spread over up to ``n_envs`` parallel envs; env i is seeded ``seed + i`` so the
    result depends only on the policy and the seed. An episode succeeds when any step reports
    ``info['success']``/``info['is_success']``, or when its return reaches ``spec.success_threshold``.
    A ``venv`` from ``eval_vec_env`` can be passed to reuse envs that are slow to build (Meta-World);
    it is reseeded here and left open. ``observe`` sees every step's rewards and dones (policies with memory).
    """
    owned = venv is None
    venv = venv or eval_vec_env(spec, episodes, n_envs, kind)
    venv.seed(seed)
    try:
        records = _run_episodes(
            venv, predict, _split(episodes, venv.num_envs), [spec.success_threshold] * venv.num_envs, observe
        )
    finally:
        if owned:
            venv.close()
    return _result(records)


class TaskEvaluator:
    """Evaluates T tasks × K episodes at once: the envs are built once (Meta-World envs take ~0.5 s
    each) and stepped in ``workers`` processes, the policy batched over all of them.

    Task j's env i is seeded ``seeds[j] + i`` at every evaluation, as ``evaluate`` seeds it, so both
    give the same result for a deterministic policy.
    """

    def __init__(self, specs: list[EnvSpec], episodes: int, n_envs: int = 16, workers: int = 2):
        from envs.vector import ShardedVecEnv

        self.specs, self.episodes = specs, episodes
        self.per_task = max(1, min(episodes, n_envs))
        thunks = [make_env(spec, monitor=False) for spec in specs for _ in range(self.per_task)]
        self.owner = np.repeat(np.arange(len(specs)), self.per_task)
        self.venv = ShardedVecEnv(thunks, workers) if workers > 1 else DummyVecEnv(thunks)

    def __call__(
        self,
        predict: Callable[[int, np.ndarray], np.ndarray],
        seeds: list[int],
        same_policy: bool = False,
        observe: Callable[[int, np.ndarray, np.ndarray], None] | None = None,
        batched: bool = False,
    ) -> list[EvalResult]:
        """``predict(j, obs)`` acts for the envs of task j; with ``same_policy`` it is called once per
        step for all envs (``j = -1``); with ``batched`` once for all envs with ``j`` the array of each env's
        task (a task-conditioned policy acting for every task in one batch). ``observe(j, rewards, dones)``
        likewise sees each step's outcome."""
        env_seeds = [seeds[j] + i for j in range(len(self.specs)) for i in range(self.per_task)]
        if isinstance(self.venv, DummyVecEnv):
            self.venv._seeds = env_seeds  # SB3 has no public per-env seeds; seed() only gives seed + i
        else:
            self.venv.set_seeds(env_seeds)

        def act(obs: np.ndarray) -> np.ndarray:
            if batched:
                return np.asarray(predict(self.owner, obs))
            if same_policy:
                return np.asarray(predict(-1, obs))
            actions = None
            for j in range(len(self.specs)):
                mask = self.owner == j
                a = np.asarray(predict(j, obs[mask]))
                if actions is None:
                    actions = np.zeros((len(obs), *a.shape[1:]), dtype=a.dtype)
                actions[mask] = a
            return actions

        def seen(rewards: np.ndarray, dones: np.ndarray) -> None:
            if batched:
                observe(self.owner, rewards, dones)
                return
            if same_policy:
                observe(-1, rewards, dones)
                return
            for j in range(len(self.specs)):
                mask = self.owner == j
                observe(j, rewards[mask], dones[mask])

        targets = np.tile(_split(self.episodes, self.per_task), len(self.specs))
        thresholds = [self.specs[j].success_threshold for j in self.owner]
        records = _run_episodes(self.venv, act, targets, thresholds, seen if observe else None)
        n = self.per_task
        return [_result(records[j * n : (j + 1) * n]) for j in range(len(self.specs))]

    def close(self) -> None:
        self.venv.close()


class TaskSetEvaluator:
    """Evaluates any subset of a fixed list of tasks with K episodes each, seeded per task.

    Each task's envs are built once (Meta-World envs take ~0.5 s each) and reseeded at every evaluation
    (task j's env i with ``seeds[j] + i``), so a deterministic policy always gets the same result. With
    ``workers > 1`` an evaluation of every task steps all of them at once in that many processes
    (``TaskEvaluator``); otherwise tasks are evaluated one after another in vectorized envs. Both give the
    same numbers.
    """

    def __init__(self, specs: list[EnvSpec], episodes: int, seeds: list[int], n_envs: int = 16, workers: int = 1):
        self.specs, self.episodes, self.seeds = specs, episodes, seeds
        self.n_envs, self.workers = n_envs, workers
        self._venvs: dict[int, VecEnv] = {}
        self._all: TaskEvaluator | None = None

    def __call__(
        self,
        indices: list[int],
        predict: Callable[[int, np.ndarray], np.ndarray],
        same_policy: bool = False,
        observe: Callable[[int, np.ndarray, np.ndarray], None] | None = None,
        batched: bool = False,
    ) -> dict[int, EvalResult]:
        """``predict(j, obs)`` acts for task j's envs (batched observations → batched actions); with
        ``same_policy`` one call acts for the envs of every task (``j = -1``). ``observe(j, rewards, dones)``
        sees every step's outcome (policies with memory). ``batched``: when every task is evaluated, step all
        their envs together and call ``predict(tasks, obs)`` once per step, ``tasks`` each env's task index
        (otherwise tasks go one after another, as without it)."""
        every = sorted(indices) == list(range(len(self.specs)))
        if (self.workers > 1 or batched) and every:
            if self._all is None:
                self._all = TaskEvaluator(self.specs, self.episodes, self.n_envs, self.workers)
            seeds = [self.seeds[j] for j in range(len(self.specs))]
            results = self._all(predict, seeds, same_policy, observe, batched)
            return {j: results[j] for j in indices}
        out = {}
        for j in indices:
            if j not in self._venvs:
                self._venvs[j] = eval_vec_env(self.specs[j], self.episodes, self.n_envs)
            seen = (lambda rewards, dones, j=j: observe(j, rewards, dones)) if observe else None
            out[j] = evaluate(
                lambda obs, j=j: predict(j, obs),
                self.specs[j],
                self.episodes,
                self.seeds[j],
                venv=self._venvs[j],
                observe=seen,
            )
        return out

    def close(self) -> None:
        for venv in self._venvs.values():
            venv.close()
        if self._all is not None:
            self._all.close()
