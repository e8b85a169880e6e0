"""Decision Transformer training throughput, retain's learner vs a plain PyTorch ``Dataset`` + ``DataLoader``
loop sampling context windows, over the same Minari data and the same model, side by side (alternating
repeats) in one process; and evaluation of a sequence's tasks batched (every task's envs stepped together,
one forward pass per step) vs task after task.

    python benchmarks/dt_throughput.py [--updates 300] [--batch-size 64] [--repeats 5] [--episodes 10]

Data: ``retain collect sequence=<--sequence>`` into a temporary RETAIN_DATA (pointmass4: 4 tasks). Model: the tiny DT of
the CPU presets (2 layers x 64, context 5), trained with the same loss on both sides.

- retain: ``DtLearner.train_chunk`` — every task's episodes in contiguous tensors; a batch of windows is one
  ``(B, K)`` index tensor gathered per array, fused AdamW.
- plain PyTorch: a ``Dataset`` whose ``__getitem__`` cuts one window from its episode with numpy (left-padded
  at the episode start, as DT code does), ``DataLoader(shuffle=True)`` with its default collate,
  ``torch.optim.AdamW`` at its defaults.

Evaluation: every task's envs batched into one forward pass per step (in one process, or with the envs in 2
worker processes) against the same policy evaluated task after task (K envs each) and against the sequential
loop (one env, one episode after another). Samples/s (windows/s) and evaluation seconds are medians over the
repeats; the ratios are what the goals
(training >= 2x, evaluation >= 1.6x on 2 cores) are about. A third row times the data path alone: at the
tiny size the transformer's forward and backward are ~90% of a step on both sides, so the whole-step ratio
is bounded by that share however fast the data path is (torch.compile of the model measured slower here).
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

from retain.config import load_config


class Windows(Dataset):
    """One context window per item, cut from numpy arrays in Python, as most DT code samples."""

    def __init__(self, data, context: int):
        self.context = context
        self.states = data.states.cpu().numpy()
        self.actions = data.actions.cpu().numpy()
        self.rewards = data.rewards.cpu().numpy()
        self.rtg = data.rtg.cpu().numpy()
        self.timesteps = data.timesteps.cpu().numpy()
        self.start = data.episode_start.cpu().numpy()

    def __len__(self) -> int:
        return len(self.actions)

    def __getitem__(self, t: int):
        k, s = self.context, max(int(self.start[t]), t - self.context + 1)
        n = t + 1 - s
        pad = k - n

        def window(array, fill=0):
            out = np.full((k, *array.shape[1:]), fill, dtype=array.dtype)
            out[pad:] = array[s : t + 1]
            return torch.as_tensor(out)

        mask = torch.as_tensor(np.arange(k) >= pad)
        obs = {
            "states": window(self.states),
            "rtg": window(self.rtg),
            "rewards": window(self.rewards),
            "timesteps": window(self.timesteps),
            "mask": mask,
        }
        return obs, window(self.actions, -1), torch.tensor(0)


def plain_loop(model, data, context: int, updates: int, batch_size: int) -> float:
    loader = DataLoader(Windows(data, context), batch_size=batch_size, shuffle=True, drop_last=True)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    done, t0 = 0, time.perf_counter()
    while done < updates:
        for obs, actions, ids in loader:
            loss = model(obs, actions, ids)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
            optimizer.step()
            done += 1
            if done == updates:
                break
    return updates * batch_size / (time.perf_counter() - t0)


def data_path(learner, loader_iter_factory, batches: int) -> tuple[float, float]:
    """Windows/s of assembling batches only (no training): retain's gather vs the DataLoader."""
    generator = torch.Generator().manual_seed(0)
    tasks = torch.arange(len(learner.eval_tasks))
    t0 = time.perf_counter()
    for _ in range(batches):
        learner.data.batch(tasks, learner.cfg.batch_size, generator)
    ours = batches * learner.cfg.batch_size / (time.perf_counter() - t0)
    it, t0 = loader_iter_factory(), time.perf_counter()
    for _ in range(batches):
        try:
            next(it)
        except StopIteration:
            it = loader_iter_factory()
            next(it)
    return ours, batches * learner.cfg.batch_size / (time.perf_counter() - t0)


def retain_loop(learner, updates: int, batch_size: int, repeat: int) -> float:
    t0 = time.perf_counter()
    learner.train_chunk(0, 100 + repeat, updates)
    return updates * batch_size / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--updates", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--episodes", type=int, default=10, help="evaluation episodes per task")
    parser.add_argument("--sequence", default="pointmass4", help="pointmass4 | cw3_quick (Meta-World: slower envs)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    root = tempfile.mkdtemp(prefix="dt_bench_")
    os.environ["RETAIN_DATA"] = root
    from envs.collect import run_collect

    run_collect(
        load_config(
            "collect",
            [
                f"sequence={args.sequence}",
                f"episodes={40 if args.sequence == 'pointmass4' else 10}",
                "workers=2",
                "progress=false",
                f"run_dir={root}/collect",
                "dataset.ref_episodes=1",
            ],
        )
    )
    from finetune.sequence import build_learner, build_tasks

    def learner(batched: bool, workers: int = 1, n_envs: int = 16):
        cfg = load_config(
            "sequence",
            [
                f"sequence={args.sequence}",
                "learner=dt",
                f"learner.batch_size={args.batch_size}",
                "learner.dataset.qualities=[expert]",
                "learner.log_every=1000000",
                f"learner.batched_eval={batched}",
                f"sequence.eval_episodes={args.episodes}",
                f"run_dir={root}/run",
                f"eval.workers={workers}",
                f"eval.n_envs={n_envs}",
            ],
        )
        return build_learner(cfg, build_tasks(cfg))

    ours = learner(True)
    ours.prepare_task(0, list(range(len(ours.eval_tasks))))
    plain_model = ours._fresh_policy(0)
    ours_sps, plain_sps = [], []
    for repeat in range(args.repeats):
        ours_sps.append(retain_loop(ours, args.updates, args.batch_size, repeat))
        plain_sps.append(plain_loop(plain_model, ours.data, ours.arch.context, args.updates, args.batch_size))
    loader = DataLoader(Windows(ours.data, ours.arch.context), batch_size=args.batch_size, shuffle=True, drop_last=True)
    paths = [data_path(ours, lambda: iter(loader), args.updates) for _ in range(args.repeats)]
    sequential = learner(False)
    sequential.load_weights(ours.weights())
    sharded = learner(True, workers=2)
    sharded.load_weights(ours.weights())
    single = learner(False, n_envs=1)  # the plain loop: one env, one episode after another, task after task
    single.load_weights(ours.weights())
    batched_s, sequential_s, sharded_s, single_s = [], [], [], []
    tasks = list(range(len(ours.eval_tasks)))
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        a = ours.evaluate(tasks, {})
        batched_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        b = sequential.evaluate(tasks, {})
        sequential_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        c = sharded.evaluate(tasks, {})
        sharded_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        single.evaluate(tasks, {})  # its env i runs every episode: other episode seeds, so other scores
        single_s.append(time.perf_counter() - t0)
    same = all(a[j].metrics == b[j].metrics == c[j].metrics for j in tasks)
    for one in (ours, sequential, sharded, single):
        one.close()
    med = statistics.median
    print(f"DT training, {args.updates} updates x batch {args.batch_size}, median of {args.repeats} (windows/s):")
    print(f"  retain DtLearner     {med(ours_sps):10.0f}")
    print(f"  plain DataLoader     {med(plain_sps):10.0f}")
    print(f"  ratio                {med(ours_sps) / med(plain_sps):10.2f}x")
    gather, loader_sps = med([p[0] for p in paths]), med([p[1] for p in paths])
    print("The data path alone (assembling batches, no training), windows/s:")
    print(f"  retain gather        {gather:10.0f}")
    print(f"  plain DataLoader     {loader_sps:10.0f}")
    print(f"  ratio                {gather / loader_sps:10.2f}x")
    print(
        f"Evaluation of {args.sequence}'s {len(tasks)} tasks x {args.episodes} episodes, median seconds "
        f"(same scores: {same}):"
    )
    rows = [
        ("all tasks batched, 1 process", batched_s),
        ("all tasks batched, envs in 2 worker processes", sharded_s),
        ("task after task, K envs each", sequential_s),
        ("one env at a time (sequential)", single_s),
    ]
    for name, seconds in rows:
        print(f"  {name:48s} {med(seconds):6.2f}")
    for name, seconds in rows[:2]:
        print(f"  ratio, sequential / {name:27s} {med(single_s) / med(seconds):6.2f}x")
        print(f"  ratio, task after task / {name:22s} {med(sequential_s) / med(seconds):6.2f}x")


if __name__ == "__main__":
    main()
