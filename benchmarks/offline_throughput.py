"""Behaviour-cloning throughput of the offline learner vs a plain PyTorch ``Dataset`` + ``DataLoader`` loop,
over the same Minari data and the same network, measured side by side (alternating repeats) in one process.

    python benchmarks/offline_throughput.py [--episodes 200] [--updates 2000] [--batch-size 256] [--repeats 5]

Both sides train the same ``agents.policies`` BC policy (an MLP on the point mass: 4-d states, 2-d actions;
64x64 and 256x256) with the same loss for the same number of updates on the datasets ``retain collect
sequence=pointmass4`` writes (collected here into a temporary RETAIN_DATA). A third row times the data path
alone (assembling a batch, no training): what the learner's design changes; training compute is the same
matmuls on both sides, so the whole-step ratio shrinks as the network grows.

- retain: ``OfflineLearner.train_chunk`` — every task's transitions in contiguous tensors, batches as one
  tensor of indices from a seeded generator gathered in one op, fused AdamW.
- plain PyTorch: the usual ``Dataset`` whose ``__getitem__`` returns one transition, ``DataLoader(batch_size,
  shuffle=True)`` with its default collate, ``torch.optim.AdamW`` at its defaults.

Samples/s are medians over the repeats; the ratio is what the goal (>= 2x on CPU) is about.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from envs.transitions import load_transitions
from retain.config import load_config


class Transitions(Dataset):
    """One transition per item, as most BC code loads Minari data."""

    def __init__(self, observations: np.ndarray, actions: np.ndarray):
        self.observations, self.actions = observations, actions

    def __len__(self) -> int:
        return len(self.actions)

    def __getitem__(self, i: int):
        return torch.as_tensor(self.observations[i], dtype=torch.float32), torch.as_tensor(self.actions[i])


def plain_loop(policy, observations, actions, updates: int, batch_size: int) -> float:
    """Samples/s of a DataLoader loop training ``policy`` for ``updates`` updates."""
    loader = DataLoader(Transitions(observations, actions), batch_size=batch_size, shuffle=True, drop_last=True)
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-3, weight_decay=0.0)
    done = 0
    t0 = time.perf_counter()
    while done < updates:
        for obs, act in loader:
            loss = policy(obs, act)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            done += 1
            if done == updates:
                break
    return updates * batch_size / (time.perf_counter() - t0)


def retain_loop(learner, updates: int, batch_size: int, chunk: int) -> float:
    t0 = time.perf_counter()
    learner.train_chunk(0, chunk, updates)
    return updates * batch_size / (time.perf_counter() - t0)


def plain_batches(observations, actions, batches: int, batch_size: int) -> float:
    loader = DataLoader(Transitions(observations, actions), batch_size=batch_size, shuffle=True, drop_last=True)
    done, t0 = 0, time.perf_counter()
    while done < batches:
        for _ in loader:
            done += 1
            if done == batches:
                break
    return batches * batch_size / (time.perf_counter() - t0)


def retain_batches(learner, batches: int, batch_size: int) -> float:
    generator = torch.Generator().manual_seed(0)
    tasks = torch.tensor([0])
    t0 = time.perf_counter()
    for _ in range(batches):
        learner.data.batch(tasks, batch_size, generator)
    return batches * batch_size / (time.perf_counter() - t0)


def side_by_side(plain_fn, retain_fn, repeats: int) -> tuple[float, float]:
    plain_fn(), retain_fn()  # warm-up
    plain, ours = [], []
    for _ in range(repeats):  # alternate so machine noise hits both sides alike
        plain.append(plain_fn())
        ours.append(retain_fn())
    return statistics.median(plain), statistics.median(ours)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=200, help="episodes per task collected (100 steps each)")
    parser.add_argument("--updates", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["RETAIN_DATA"] = tmp
        from envs.collect import run_collect
        from finetune.sequence import build_learner, build_tasks

        run_collect(
            load_config(
                "collect",
                [f"episodes={args.episodes}", "sequence=pointmass4", "progress=false", f"run_dir={tmp}/collect"],
            )
        )
        cfg = load_config(
            "sequence",
            [
                "sequence=pointmass4",
                "learner=offline",
                f"learner.batch_size={args.batch_size}",
                "learner.task_id=false",  # the plain loop's network sees the observation only
                f"run_dir={tmp}/run",
                "progress=false",
            ],
        )
        data = load_transitions("retain/pointmass4/goal0/expert-v0")
        observations, actions = np.asarray(data.observations), np.asarray(data.actions)
        rows = []
        for hidden in ([64, 64], [256, 256]):
            cfg = load_config(
                "sequence",
                [
                    "sequence=pointmass4",
                    "learner=offline",
                    f"learner.batch_size={args.batch_size}",
                    f"learner.policy.hidden={hidden}",
                    "learner.task_id=false",  # the plain loop's network sees the observation only
                    f"run_dir={tmp}/run",
                    "progress=false",
                ],
            )
            learner = build_learner(cfg, build_tasks(cfg)[:1])
            learner.prepare_task(0, [0])
            plain_policy = learner._fresh_policy(0, torch.device("cpu"))  # the same network, freshly initialised
            chunks = iter(range(10**6))
            rows.append(
                (
                    f"BC step, MLP {hidden[0]}x{hidden[1]}",
                    *side_by_side(
                        lambda p=plain_policy: plain_loop(p, observations, actions, args.updates, args.batch_size),
                        lambda lr=learner, c=chunks: retain_loop(lr, args.updates, args.batch_size, next(c)),
                        args.repeats,
                    ),
                )
            )
        rows.append(
            (
                "data path only (batch assembly)",
                *side_by_side(
                    lambda: plain_batches(observations, actions, args.updates, args.batch_size),
                    lambda: retain_batches(learner, args.updates, args.batch_size),
                    args.repeats,
                ),
            )
        )
        learner.close()
    print(
        f"data: {len(actions)} transitions (pointmass goal0, {args.episodes} episodes); batch {args.batch_size}, "
        f"{args.updates} updates x {args.repeats} repeats (medians), 1 torch thread, device cpu"
    )
    print(f"{'':34}{'plain Dataset+DataLoader':>26}{'retain offline learner':>26}   ratio")
    for name, plain, ours in rows:
        print(f"{name:34}{plain:19.0f} samples/s{ours:16.0f} samples/s   {ours / plain:5.2f}")
    print("goal: >= 2 for the BC step")


if __name__ == "__main__":
    main()
