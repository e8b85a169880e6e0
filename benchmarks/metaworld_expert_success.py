"""How often Meta-World v3's scripted experts succeed: one table per episode length.

    python benchmarks/metaworld_expert_success.py [--tasks cw10|mt40|mt50|<task>,<task>...]
        [--episodes 20] [--sigma 0.0] [--epsilon 0.0] [--max-steps 200 [500 ...]]

Each task is rolled out in ``gym.make("Meta-World/MT1", env_name=task, seed=0, max_episode_steps=T)``
(as retain builds it) with ``reset(seed=episode index)``. An episode succeeds when any step reports
``info["success"]``; it is not cut short at success, so the return covers all T steps. σ > 0 or ε > 0 wrap
the expert in ``NoisyExpert`` (seeded per task). Continual World used T = 200; pass ``--max-steps 200 500``
to see which tasks need longer episodes. Goal: ≥ 0.9 success on every CW10 task with σ = 0.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from dataclasses import dataclass

import gymnasium as gym
import metaworld  # noqa: F401  (registers Meta-World/MT1)

from envs.experts import Expert, NoisyExpert
from envs.metaworld_experts import CW10, MT40_PRETRAIN, MetaWorldExpert, metaworld_task_names


@dataclass
class TaskResult:
    task: str
    success: float
    """fraction of episodes with info["success"] at some step"""
    mean_return: float
    """mean undiscounted return over the full episode"""
    steps_to_success: float | None
    """mean 1-based step of the first success, over successful episodes; None if none succeeded"""
    seconds: float


def parse_tasks(spec: str) -> list[str]:
    """Task names of a ``--tasks`` value: cw10, mt40, mt50, or comma-separated v3 names."""
    named = {"cw10": list(CW10), "mt40": list(MT40_PRETRAIN)}
    if spec in named:
        return named[spec]
    if spec in ("mt50", "all"):
        return metaworld_task_names()
    return [t.strip() for t in spec.split(",") if t.strip()]


def rollout(task: str, episodes: int, max_steps: int, sigma: float = 0.0, epsilon: float = 0.0) -> TaskResult:
    """Run ``episodes`` seeded episodes of the (noisy) expert on ``task`` and summarize them."""
    start = time.perf_counter()
    env = gym.make("Meta-World/MT1", env_name=task, seed=0, max_episode_steps=max_steps)
    expert: Expert = MetaWorldExpert(task)
    if sigma or epsilon:
        expert = NoisyExpert(expert, env.action_space, sigma=sigma, epsilon=epsilon, seed=0)
    successes, returns, first_steps = [], [], []
    for episode in range(episodes):
        obs, info = env.reset(seed=episode)
        expert.reset(env, obs, info)
        total, first, step, done = 0.0, None, 0, False
        while not done:
            obs, reward, terminated, truncated, info = env.step(expert.act(obs, info))
            step += 1
            total += float(reward)
            if first is None and info.get("success"):
                first = step
            done = terminated or truncated
        successes.append(first is not None)
        returns.append(total)
        if first is not None:
            first_steps.append(first)
    env.close()
    return TaskResult(
        task=task,
        success=sum(successes) / episodes,
        mean_return=statistics.fmean(returns),
        steps_to_success=statistics.fmean(first_steps) if first_steps else None,
        seconds=time.perf_counter() - start,
    )


def print_table(results: list[TaskResult], title: str) -> None:
    """A Markdown table of ``results``, with the mean success and the tasks under 0.9 at the end."""
    print(f"\n### {title}\n")
    print("| task | success | mean return | mean steps to first success | s |")
    print("|---|---:|---:|---:|---:|")
    for r in results:
        steps = f"{r.steps_to_success:.1f}" if r.steps_to_success is not None else "-"
        print(f"| {r.task} | {r.success:.2f} | {r.mean_return:.1f} | {steps} | {r.seconds:.1f} |")
    mean = statistics.fmean(r.success for r in results)
    below = [f"{r.task} ({r.success:.2f})" for r in results if r.success < 0.9]
    print(f"| **mean** | **{mean:.3f}** | | | |")
    print(f"\nbelow 0.9: {', '.join(below) if below else 'none'}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", default="cw10", help="cw10 | mt40 | mt50 | comma-separated v3 task names")
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--sigma", type=float, default=0.0, help="Gaussian action noise (NoisyExpert)")
    parser.add_argument("--epsilon", type=float, default=0.0, help="probability of a random action (NoisyExpert)")
    parser.add_argument("--max-steps", type=int, nargs="+", default=[200], help="episode length(s); one table each")
    args = parser.parse_args(argv)
    # gymnasium's passive checker flags Meta-World's observation bounds once per env; it changes nothing.
    warnings.filterwarnings("ignore", module=r"gymnasium\.utils\.passive_env_checker")
    tasks = parse_tasks(args.tasks)
    for task in tasks:
        MetaWorldExpert(task)  # fail on a bad name before any rollout
    for max_steps in args.max_steps:
        results = []
        for task in tasks:
            results.append(rollout(task, args.episodes, max_steps, args.sigma, args.epsilon))
            print(f"  {task}: {results[-1].success:.2f}", flush=True)
        noise = f"σ={args.sigma:g}" + (f", ε={args.epsilon:g}" if args.epsilon else "")
        print_table(results, f"{args.tasks}, {noise}, {args.episodes} episodes of {max_steps} steps")


if __name__ == "__main__":
    main()
