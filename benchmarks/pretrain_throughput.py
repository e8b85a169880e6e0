"""Representation-pretraining throughput (``retain pretrain objective=idm|bc|fd|fd_contrastive|contrastive``):
retain's trainer vs a plain PyTorch ``Dataset`` + ``DataLoader`` loop over the same Minari data, the same model
and the same objective, measured side by side (alternating repeats) in one process on CPU.

    python benchmarks/pretrain_throughput.py [--states | --pixels] [--objective idm] [--episodes 50]
        [--batch-size 256] [--updates N] [--repeats 3] [--threads 2] [--workers 0] [--set KEY=VALUE ...]

Data: ``retain collect sequence=pointmass_pretrain`` (--states: 4-d states) or ``pointmass_pretrain_pixels``
(--pixels: 64x64x3 uint8 frames), written into a temporary RETAIN_DATA; one task, ``random_goals``, 100 steps
per episode. The config is the job's own (``configs/pretrain.yaml`` with ``objective=<name>``), so both sides
train what ``retain pretrain`` would: the same encoder and heads (a fresh copy with the same init seed for the
plain loop), the same loss, lr and weight decay, batch size equal, the last 10% of episodes held out on both.

- retain: ``EncoderPretrainLearner.train_chunk`` (a warm-up chunk first, not timed). Its speed comes from the
  data path: every task's episodes are read once into contiguous tensors on the device
  (``pretrain.pair_data.PairData``), a batch is one seeded draw of row indices and then one gather per array
  (o_t, o_t+n, a_t) from that index tensor: no per-sample Python, no collate, pixels kept uint8 until the
  encoder reads them. The optimizer is fused AdamW (``retain.training.optim.adamw``).
- plain PyTorch, what a researcher would write: ``minari.load_dataset(id)`` (MINARI_DATASETS_PATH at the data
  root), the episodes kept as numpy arrays, a ``Dataset`` whose ``__getitem__`` returns one (o_t, a_t, o_t+1)
  sample as tensors (actions scaled to [-1, 1] from the action space's bounds once, up front, as retain does;
  frames left uint8 too), ``DataLoader(batch_size, shuffle=True, num_workers=--workers)`` with its default
  collate, ``torch.optim.AdamW`` at its defaults, ``loss.backward()`` / ``step()`` per batch.

Printed: per-side median samples/s over ``--repeats`` alternating measurements and the median of the per-repeat
ratios retain / DataLoader (the goal: >= 2x on CPU); the data path alone (batches assembled, no training) for
both sides, and from it the share of a step spent in data (training samples/s / data-only samples/s, which
understates what the loader costs inside a training loop); and a third side measured in the same alternation,
the plain loop fed by retain's ``PairData`` batches instead of the DataLoader, which splits the ratio into the
data path's gain and the rest (fused AdamW). On pixels at batch 256 the conv encoder's forward and backward (two
frames per pair) take seconds per update on a few CPU cores, so the data path is a small share on either side
and the whole-step ratio stays near 1; on states the step is cheap and the data path counts. ``--updates``
defaults to 300 (states) or 4 (pixels), which keeps a run at the defaults under ~3 minutes on 2 quiet cores.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from retain.config import load_config

TASK = "random_goals"


class MinariPairs(Dataset):
    """One (o_t, a_t, o_t+1) sample per item, from Minari's episodes, as most pretraining code loads them."""

    def __init__(self, dataset_id: str, val_fraction: float):
        import minari

        dataset = minari.load_dataset(dataset_id)
        space = dataset.spec.action_space
        low, high = space.low.astype(np.float64), space.high.astype(np.float64)
        episodes = list(dataset.iterate_episodes())
        held = max(1, round(len(episodes) * val_fraction)) if val_fraction > 0 and len(episodes) > 1 else 0
        self.observations, self.actions, index = [], [], []
        for e, episode in enumerate(episodes[: len(episodes) - held]):
            actions = np.asarray(episode.actions, np.float64)
            self.observations.append(np.asarray(episode.observations))  # T + 1 observations
            self.actions.append(np.clip(2.0 * (actions - low) / (high - low) - 1.0, -1.0, 1.0).astype(np.float32))
            index += [(e, t) for t in range(len(actions))]
        self.index = index

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int):
        e, t = self.index[i]
        obs = self.observations[e]
        return torch.as_tensor(obs[t]), torch.as_tensor(self.actions[e][t]), torch.as_tensor(obs[t + 1])


def endless(loader: DataLoader) -> Iterator:
    """Batches of ``loader``, epoch after epoch (a new shuffle each epoch)."""
    while True:
        yield from loader


def loader_batches(loader: DataLoader) -> Callable[[], dict]:
    """The next DataLoader batch as the objective's batch dict (one task: ``task`` is 0)."""
    batches = endless(loader)

    def next_batch() -> dict:
        obs, action, after = next(batches)
        return {"obs": obs, "next": after, "action": action, "task": torch.zeros(len(obs), dtype=torch.long)}

    return next_batch


def plain_train(model, optimizer, next_batch: Callable[[], dict], updates: int, batch_size: int) -> float:
    """Samples/s of the plain loop: per batch a forward, ``loss.backward()`` and ``optimizer.step()``."""
    model.train()
    t0 = time.perf_counter()
    for _ in range(updates):
        loss, _ = model(next_batch())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return updates * batch_size / (time.perf_counter() - t0)


def plain_data(next_batch: Callable[[], dict], count: int, batch_size: int) -> float:
    t0 = time.perf_counter()
    for _ in range(count):
        next_batch()
    return count * batch_size / (time.perf_counter() - t0)


def retain_train(learner, chunk: int, updates: int, batch_size: int) -> float:
    t0 = time.perf_counter()
    learner.train_chunk(0, chunk, updates)
    return updates * batch_size / (time.perf_counter() - t0)


def retain_data(learner, count: int, batch_size: int, seed: int) -> float:
    generator = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for _ in range(count):
        learner.data.batch(batch_size, generator)
    return count * batch_size / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument("--states", dest="pixels", action="store_false", help="sequence=pointmass_pretrain (default)")
    kind.add_argument("--pixels", dest="pixels", action="store_true", help="sequence=pointmass_pretrain_pixels")
    parser.set_defaults(pixels=False)
    parser.add_argument("--episodes", type=int, default=50, help="episodes collected (100 steps each)")
    parser.add_argument("--objective", default="idm", help="idm | bc | fd | fd_contrastive | contrastive")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--updates", type=int, default=None, help="per measurement; default 300 states, 4 pixels")
    parser.add_argument("--warmup", type=int, default=None, help="updates of the untimed warm-up (default updates/3)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (try 2)")
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        help="more `retain pretrain` overrides, e.g. the CPU preset's encoder: objective.encoder.channels=[16,32,32] "
        "objective.encoder.strides=[2,2,1] objective.encoder.keypoints=32 objective.encoder.history=2",
    )
    args = parser.parse_args()
    updates = args.updates or (4 if args.pixels else 300)
    warmup = args.warmup if args.warmup is not None else max(1, updates // 3)
    data_batches = max(updates, 50)
    sequence = "pointmass_pretrain_pixels" if args.pixels else "pointmass_pretrain"

    with tempfile.TemporaryDirectory(prefix="pretrain_bench_") as tmp:
        os.environ["RETAIN_DATA"] = tmp
        from envs.collect import run_collect
        from envs.datasets import minari_root, sequence_dataset_id
        from pretrain.encoder_job import objective_config, pretraining_tasks
        from pretrain.encoder_learner import EncoderPretrainLearner

        run_collect(
            load_config(
                "collect",
                [f"sequence={sequence}", f"episodes={args.episodes}", "progress=false", f"run_dir={tmp}/collect"],
            )
        )
        torch.set_num_threads(args.threads)
        cfg = load_config(
            "pretrain",
            [
                f"objective={args.objective}",
                f"sequence={sequence}",
                f"objective.batch_size={args.batch_size}",
                # the cosine schedule spans every update this benchmark makes
                f"objective.updates={warmup + args.repeats * updates}",
                "device=cpu",
                f"run_dir={tmp}/run",
                "progress=false",
                *args.set,
            ],
        )
        objective = objective_config(cfg)
        learner = EncoderPretrainLearner(pretraining_tasks(cfg), objective, cfg.seed, "cpu", sequence)

        dataset_id = sequence_dataset_id(objective.dataset.namespace, sequence, TASK, objective.dataset.quality)
        with minari_root():  # MINARI_DATASETS_PATH = RETAIN_DATA
            pairs = MinariPairs(dataset_id, objective.val_fraction)
        loader = DataLoader(
            pairs,
            batch_size=args.batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=args.workers,
            persistent_workers=args.workers > 0,
        )
        batches = loader_batches(loader)
        generator = torch.Generator().manual_seed(cfg.seed)
        sides = {}  # the plain loop (a fresh copy of the objective module, the same init seed, default AdamW) ...
        for name, next_batch in (
            ("loader", batches),  # ... fed by the DataLoader
            ("swap", lambda: learner.data.batch(args.batch_size, generator)),  # ... fed by retain's PairData
        ):
            model = learner._fresh_model()
            optimizer = torch.optim.AdamW(model.parameters(), lr=objective.lr, weight_decay=objective.weight_decay)
            sides[name] = (model, optimizer, next_batch)

        learner.train_chunk(0, 0, warmup)  # warm-up, not timed
        for side in sides.values():
            plain_train(*side, warmup, args.batch_size)
        sps = {"retain": [], "loader": [], "swap": []}
        for repeat in range(args.repeats):  # alternate so machine noise hits every side alike
            sps["retain"].append(retain_train(learner, 1 + repeat, updates, args.batch_size))
            for name, side in sides.items():
                sps[name].append(plain_train(*side, updates, args.batch_size))
        ratios = [a / b for a, b in zip(sps["retain"], sps["loader"], strict=True)]
        ours_data, plain_data_sps = [], []
        for repeat in range(args.repeats):
            ours_data.append(retain_data(learner, data_batches, args.batch_size, repeat))
            plain_data_sps.append(plain_data(batches, data_batches, args.batch_size))
        train_pairs = int(learner.data.train_sizes.sum())
        learner.close()
        del sides, batches, loader  # stops DataLoader workers before the data folder goes

    med = statistics.median
    ours, plain, swap = med(sps["retain"]), med(sps["loader"]), med(sps["swap"])
    frame = "64x64x3 uint8 pixels, conv encoder" if args.pixels else "4-d states, MLP encoder"
    print(
        f"{args.objective} on {sequence} ({frame}): {args.episodes} episodes, {train_pairs} training pairs "
        f"(DataLoader: {len(pairs)}); batch {args.batch_size}, {updates} updates x {args.repeats} repeats "
        f"(medians), {args.threads} torch threads, DataLoader workers {args.workers}, device cpu"
    )
    print(f"{'samples/s':36}{'retain trainer':>16}{'DataLoader loop':>18}{'ratio':>9}")
    print(f"{'training step':36}{ours:16.0f}{plain:18.0f}{med(ratios):8.2f}x")
    data_ratio = med(ours_data) / med(plain_data_sps)
    print(f"{'data path only (batch assembly)':36}{med(ours_data):16.0f}{med(plain_data_sps):18.0f}{data_ratio:8.2f}x")
    print(f"{'share of a step in data (data-only)':36}{ours / med(ours_data):16.1%}{plain / med(plain_data_sps):18.1%}")
    print(
        f"the DataLoader loop fed retain's batches instead: {swap:.0f} samples/s, {swap / plain:.2f}x the DataLoader "
        f"loop (the data path's gain); retain {ours / swap:.2f}x that (fused AdamW, the rest)"
    )
    print(f"per-repeat ratios: {', '.join(f'{r:.2f}' for r in ratios)}; goal: training step >= 2x on CPU")


if __name__ == "__main__":
    main()
