"""Collection speed: `retain collect` (its rollout phase, worker start-up included) vs a raw
gymnasium loop with the same expert, side by side in one run.

    python benchmarks/collect_speed.py [--task reach-v3] [--episodes 100] [--repeats 3]

Goals: ≥ 0.8× the raw loop in one process, ≥ 1.6× with 2 workers. Dataset writing is timed apart.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch

from envs.collect import run_collect
from envs.experts import make_expert
from envs.registry import make_env
from envs.spec import EnvSpec
from retain.config import load_config


def raw_loop(spec: EnvSpec, episodes: int) -> float:
    """Steps/s of the plainest loop: one env, the expert, reset/step."""
    env = make_env(spec, monitor=False)()
    expert = make_expert("auto", spec.id, spec.kwargs, env.observation_space, env.action_space, seed=0)
    steps, t0 = 0, time.perf_counter()
    for k in range(episodes):
        obs, info = env.reset(seed=k)
        expert.reset(env, obs, info)
        done = False
        while not done:
            obs, _, terminated, truncated, info = env.step(expert.act(obs, info))
            done = terminated or truncated
            steps += 1
    env.close()
    return steps / (time.perf_counter() - t0)


def through_retain(task: str, episodes: int, workers: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["RETAIN_DATA"] = f"{tmp}/data"
        cfg = load_config(
            "collect",
            [
                "env=metaworld_reach",
                f"env.kwargs.env_name={task}",
                f"episodes={episodes}",
                f"workers={workers}",
                f"run_dir={tmp}/run",
                "progress=false",
                "dataset.ref_episodes=1",
            ],
        )
        t0 = time.perf_counter()
        summary = run_collect(cfg)
        total = time.perf_counter() - t0
    info = next(iter(summary["datasets"].values()))
    return info["steps_per_second"], info["steps"] / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="reach-v3")
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    spec = EnvSpec(id="Meta-World/MT1", kwargs={"env_name": args.task}, max_episode_steps=200)
    raw, one, two = [], [], []
    for _ in range(args.repeats):  # alternate so machine noise hits every side alike
        raw.append(raw_loop(spec, args.episodes))
        one.append(through_retain(args.task, args.episodes, 1))
        two.append(through_retain(args.task, args.episodes, 2))
    r = statistics.median(raw)
    o, o_all = statistics.median(x[0] for x in one), statistics.median(x[1] for x in one)
    t, t_all = statistics.median(x[0] for x in two), statistics.median(x[1] for x in two)
    print(f"Meta-World {args.task}, scripted expert, {args.episodes} episodes × 200 steps; medians of {args.repeats}")
    print(f"raw gymnasium loop          {r:8.0f} steps/s")
    print(
        f"retain collect, 1 process   {o:8.0f} steps/s  ratio {o / r:.2f}  (goal >= 0.8; with writing: {o_all:.0f} steps/s)"
    )
    print(
        f"retain collect, 2 workers   {t:8.0f} steps/s  ratio {t / r:.2f}  (goal >= 1.6; with writing: {t_all:.0f} steps/s)"
    )


if __name__ == "__main__":
    main()
