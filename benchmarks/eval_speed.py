"""Evaluation of T tasks × K episodes: retain's vectorized evaluation (all envs at once, policy
batched, envs stepped in worker processes) vs the sequential single-env loop that Continual World
and L2M run (one task, one episode, one observation at a time). Same policy, same episodes.

    python benchmarks/eval_speed.py [--tasks 4] [--episodes 10] [--workers 2] [--repeats 3]

The policy is an SB3 SAC actor with Continual World's 4×256 network (random weights: speed does
not depend on what it learnt). Goal: ≥ 1.6× on 2 cores.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from stable_baselines3 import SAC
from stable_baselines3.common.vec_env import DummyVecEnv

from envs.evaluation import TaskEvaluator
from envs.registry import make_env
from envs.spec import EnvSpec

TASKS = ["hammer-v3", "push-wall-v3", "faucet-close-v3", "push-back-v3", "stick-pull-v3", "handle-press-side-v3"]


def sequential(policy, envs, episodes: int) -> tuple[float, int]:
    t0, steps = time.perf_counter(), 0
    for j, env in enumerate(envs):
        for k in range(episodes):
            obs, _ = env.reset(seed=1000 * j + k)
            done = False
            while not done:
                action, _ = policy.predict(obs, deterministic=True)
                obs, _, terminated, truncated, _ = env.step(action)
                done = terminated or truncated
                steps += 1
    return time.perf_counter() - t0, steps


def vectorized(policy, evaluator: TaskEvaluator) -> tuple[float, int]:
    t0 = time.perf_counter()
    predict = lambda j, obs: policy.predict(obs, deterministic=True)[0]  # noqa: E731
    results = evaluator(predict, [1000 * j for j in range(len(evaluator.specs))], same_policy=True)
    return time.perf_counter() - t0, int(sum(r.lengths.sum() for r in results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--envs-per-task", type=int, default=10, help="parallel envs per task")
    args = parser.parse_args()
    torch.set_num_threads(1)
    specs = [
        EnvSpec(id="Meta-World/MT1", kwargs={"env_name": name}, max_episode_steps=args.max_steps)
        for name in TASKS[: args.tasks]
    ]
    venv = DummyVecEnv([make_env(specs[0], monitor=False)])
    policy = SAC("MlpPolicy", venv, policy_kwargs={"net_arch": [256] * 4}, buffer_size=1, device="cpu", seed=0).policy
    # Envs are built once on every side, as an evaluation loop reuses them (Meta-World envs take ~0.5 s each).
    envs = [make_env(spec, monitor=False)() for spec in specs]
    one = TaskEvaluator(specs, args.episodes, args.envs_per_task, workers=1)
    many = TaskEvaluator(specs, args.episodes, args.envs_per_task, workers=args.workers)
    seq, vec1, vecw = [], [], []
    for _ in range(args.repeats):  # alternate so machine noise hits every side alike
        seq.append(sequential(policy, envs, args.episodes))
        vec1.append(vectorized(policy, one))
        vecw.append(vectorized(policy, many))
    one.close()
    many.close()
    s, v1, vw = (statistics.median(t for t, _ in x) for x in (seq, vec1, vecw))
    steps = seq[0][1]
    assert all(n == steps for _, n in seq + vec1 + vecw), "every variant must run the same episodes"
    print(
        f"{args.tasks} tasks × {args.episodes} episodes × {args.max_steps} steps = {steps} env steps; {args.envs_per_task} envs per task; medians of {args.repeats}; envs built once, outside the timing"
    )
    print(f"sequential single-env      {s:7.2f} s  {steps / s:8.0f} steps/s")
    print(f"vectorized, 1 process      {v1:7.2f} s  {steps / v1:8.0f} steps/s  speed-up {s / v1:.2f}x")
    print(
        f"vectorized, {args.workers} workers      {vw:7.2f} s  {steps / vw:8.0f} steps/s  speed-up {s / vw:.2f}x   (goal >= 1.6x)"
    )


if __name__ == "__main__":
    main()
