"""Vectorized evaluation: K episodes of a task in parallel envs, deterministic for a given seed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv

from envs.registry import make_env
from envs.spec import EnvSpec

METRICS = ("success", "return")


@dataclass
class EvalResult:
    returns: np.ndarray
    successes: np.ndarray
    lengths: np.ndarray

    def score(self, metric: str) -> float:
        if metric == "success":
            return float(self.successes.mean())
        if metric == "return":
            return float(self.returns.mean())
        raise ValueError(f"unknown metric {metric!r}; use one of {METRICS}")

    def as_metrics(self, prefix: str) -> dict[str, float]:
        return {
            f"{prefix}/success": float(self.successes.mean()),
            f"{prefix}/return": float(self.returns.mean()),
            f"{prefix}/length": float(self.lengths.mean()),
        }


def make_vec_env(spec: EnvSpec, n_envs: int, kind: str = "dummy", monitor: bool = True) -> VecEnv:
    thunks = [make_env(spec, monitor=monitor) for _ in range(n_envs)]
    if kind == "subproc" and n_envs > 1:
        return SubprocVecEnv(thunks, start_method="forkserver")
    return DummyVecEnv(thunks)


def eval_vec_env(spec: EnvSpec, episodes: int, n_envs: int = 16, kind: str = "dummy") -> VecEnv:
    """The envs ``evaluate`` runs ``episodes`` episodes in: one per episode, at most ``n_envs``."""
    return make_vec_env(spec, max(1, min(episodes, n_envs)), kind, monitor=False)


def evaluate(
    predict: Callable[[np.ndarray], np.ndarray],
    spec: EnvSpec,
    episodes: int,
    seed: int,
    n_envs: int = 16,
    kind: str = "dummy",
    venv: VecEnv | None = None,
) -> EvalResult:
    """Run exactly ``episodes`` episodes of ``spec`` with ``predict`` (batched obs → batched actions).

    Episodes are spread over up to ``n_envs`` parallel envs; env i is seeded ``seed + i`` so the
    result depends only on the policy and the seed. An episode succeeds when any step reports
    ``info['success']``/``info['is_success']``, or when its return reaches ``spec.success_threshold``.
    A ``venv`` from ``eval_vec_env`` can be passed to reuse envs that are slow to build (Meta-World);
    it is reseeded here and left open.
    """
    owned = venv is None
    venv = venv or eval_vec_env(spec, episodes, n_envs, kind)
    n = venv.num_envs
    targets = np.array([(episodes + i) // n for i in range(n)])
    venv.seed(seed)
    returns, successes, lengths = [], [], []
    try:
        obs = venv.reset()
        done_counts = np.zeros(n, dtype=int)
        ep_return, ep_length, ep_success = np.zeros(n), np.zeros(n, dtype=int), np.zeros(n, dtype=bool)
        while (done_counts < targets).any():
            obs, rewards, dones, infos = venv.step(predict(obs))
            ep_return += rewards
            ep_length += 1
            for i, info in enumerate(infos):
                ep_success[i] |= bool(info.get("success", 0) or info.get("is_success", 0))
                if not dones[i]:
                    continue
                if done_counts[i] < targets[i]:
                    success = ep_success[i]
                    if spec.success_threshold is not None:
                        success = success or ep_return[i] >= spec.success_threshold
                    returns.append(ep_return[i])
                    successes.append(float(success))
                    lengths.append(ep_length[i])
                done_counts[i] += 1
                ep_return[i], ep_length[i], ep_success[i] = 0.0, 0, False
    finally:
        if owned:
            venv.close()
    return EvalResult(np.array(returns), np.array(successes), np.array(lengths))
