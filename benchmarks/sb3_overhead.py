"""What running SB3 through `retain sequence` costs: training steps/s of one SB3 config, raw
vs through retain's runner, measured side by side (alternating repeats) in one process.

    python benchmarks/sb3_overhead.py [--steps 40960] [--repeats 3] [--env cartpole] [--agent ppo]

retain adds chunked learn() calls with reseeding, a progress callback, a logger bridge and a
checkpoint at every chunk. The "train" ratio times the learn() calls only; "train+ckpt" adds the
checkpoints. Evaluation and the report are excluded from both (raw SB3 does neither). Goal: ≥ 0.97.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from omegaconf import OmegaConf

from agents.sb3 import build_model
from envs.evaluation import make_vec_env
from finetune.sequence import build_tasks, run_sequence
from retain.config import load_config


def overrides(args, run_dir: str) -> list[str]:
    return [
        "sequence=single",
        f"env={args.env}",
        f"agent={args.agent}",
        f"sequence.steps_per_task={args.steps}",
        f"run_dir={run_dir}",
        "eval.during=none",
        "sequence.eval_episodes=1",
        "progress=false",
        f"chunks_per_task={args.chunks}",
    ]


def raw_sb3(args) -> float:
    """Steps/s of a plain `Algo(...).learn(steps)` with the same config."""
    cfg = load_config("sequence", overrides(args, "unused"))
    agent = OmegaConf.to_object(cfg.agent)
    env = make_vec_env(build_tasks(cfg)[0].env, agent.n_envs, agent.vec_env)
    model = build_model(agent, env, seed=0, device="cpu")
    t0 = time.perf_counter()
    model.learn(args.steps)
    seconds = time.perf_counter() - t0
    env.close()
    return model.num_timesteps / seconds


def through_retain(args) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        summary = run_sequence(load_config("sequence", overrides(args, f"{tmp}/run")))
    steps = summary["steps"]
    return steps / summary["train_seconds"], steps / (summary["train_seconds"] + summary["checkpoint_seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40_960)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunks", type=int, default=10, help="chunks (checkpoints) per task in the retain run")
    parser.add_argument("--env", default="cartpole")
    parser.add_argument("--agent", default="ppo")
    args = parser.parse_args()
    torch.set_num_threads(1)
    raw, train, with_ckpt = [], [], []
    raw_sb3(args)  # warm-up: imports, allocator, first env build
    for _ in range(args.repeats):  # alternate so machine noise hits both sides alike
        raw.append(raw_sb3(args))
        t, c = through_retain(args)
        train.append(t)
        with_ckpt.append(c)
    r, t, c = statistics.median(raw), statistics.median(train), statistics.median(with_ckpt)
    print(
        f"config: env={args.env} agent={args.agent} steps={args.steps} chunks={args.chunks} repeats={args.repeats} (medians)"
    )
    print(f"raw SB3            {r:10.0f} steps/s")
    print(f"retain train       {t:10.0f} steps/s   ratio {t / r:.3f}")
    print(f"retain train+ckpt  {c:10.0f} steps/s   ratio {c / r:.3f}   (goal >= 0.97)")


if __name__ == "__main__":
    main()
