"""How well the BabyAI bot solves each level of babyai4: success rate and mean episode length.

    python benchmarks/babyai_bot_success.py                # 100 seeded episodes per level
    python benchmarks/babyai_bot_success.py -n 1000 --epsilon 0.1

Episodes use seeds 0..n-1, so runs repeat exactly. Success is BabyAI's own: a positive final reward
(the return reaches the task's success_threshold in configs/sequence/babyai4.yaml). ``--epsilon``
wraps the bot in ``NoisyExpert`` (ε-random actions), as a medium-quality data collection would.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from envs.babyai import BabyAIBotExpert, make_babyai
from envs.experts import NoisyExpert

SEQUENCE = Path(__file__).resolve().parents[1] / "configs/sequence/babyai4.yaml"


def run_level(env_id: str, threshold: float, episodes: int, epsilon: float) -> dict[str, float]:
    """Success rate, mean/max episode length and ms per episode of the bot on ``episodes`` seeded episodes."""
    env, bot = make_babyai(env_id), BabyAIBotExpert()
    expert = NoisyExpert(bot, env.action_space, epsilon=epsilon, seed=0) if epsilon else bot
    successes, lengths = [], []
    start = time.perf_counter()
    for seed in range(episodes):
        obs, info = env.reset(seed=seed)
        expert.reset(env, obs, info)
        ret, steps, done = 0.0, 0, False
        while not done:
            obs, reward, terminated, truncated, info = env.step(expert.act(obs, info))
            ret, steps, done = ret + float(reward), steps + 1, terminated or truncated
        successes.append(ret >= threshold)
        lengths.append(steps)
    elapsed = time.perf_counter() - start
    return {
        "success": float(np.mean(successes)),
        "mean_len": float(np.mean(lengths)),
        "max_len": float(np.max(lengths)),
        "ms_per_episode": 1000 * elapsed / episodes,
        "bot_failures": bot.failures,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", "--episodes", type=int, default=100, help="episodes per level (default 100)")
    parser.add_argument("--epsilon", type=float, default=0.0, help="probability of a random action (default 0)")
    args = parser.parse_args()

    sequence = OmegaConf.load(SEQUENCE)
    print(f"BabyAI bot on {sequence.name}, {args.episodes} episodes per level, epsilon={args.epsilon:g}\n")
    print(f"{'task':<16} {'env id':<24} {'success':>8} {'mean len':>9} {'max len':>8} {'ms/ep':>7}")
    for task in sequence.tasks:
        row = run_level(task.env.id, task.env.success_threshold, args.episodes, args.epsilon)
        print(
            f"{task.name:<16} {task.env.id:<24} {row['success']:>8.3f} {row['mean_len']:>9.2f} "
            f"{row['max_len']:>8.0f} {row['ms_per_episode']:>7.1f}"
            + (f"  ({row['bot_failures']} steps where the bot gave up)" if row["bot_failures"] else "")
        )


if __name__ == "__main__":
    main()
