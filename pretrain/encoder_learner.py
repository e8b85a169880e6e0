"""The trainer every representation objective shares (``retain pretrain objective=idm|bc|fd|fd_contrastive|
contrastive``), on the continual runner's ``Learner`` protocol as one row: it trains on every pretraining
task's pairs at once and scores each task by the objective's loss on its held-out episodes.

Data: each task's dataset (what ``retain collect`` wrote, or the task's ``dataset:``) is read once into
``pretrain.pair_data.PairData`` — contiguous tensors, batches gathered by index, no DataLoader; actions are
scaled to [-1, 1] from the action space's bounds. The runner gives checkpoints and exact resume (a chunk's
batches, dropout and augmentation come from generators seeded by (seed, chunk)), ``results.json`` (a 1 x K
matrix of held-out losses, lower is better), the report and ``metrics.jsonl``. ``export`` writes the encoder
as a shareable folder (``agents.encoders.save_encoder``), with the inverse-dynamics head beside it.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from agents.encoders import EncoderConfig, build_encoder, encoder_config, save_encoder
from envs.datasets import dataset_path, load_transitions, sequence_dataset_id
from envs.spec import TaskConfig
from pretrain.objectives import OBJECTIVE_CLASSES, Objective, ObjectiveSettings
from pretrain.pair_data import EpisodeArrays, PairData
from retain.device import resolve_device
from retain.errors import ConfigError, DatasetError, TrainingDiverged
from retain.learner import LearnerState, StepHooks, TaskScore
from retain.seeding import derive_seed, seed_everything
from retain.training.optim import adamw, maybe_compile
from retain.training.precision import autocast, use_bf16
from retain.training.schedules import ScheduleConfig, build_scheduler, check_schedule


@dataclass
class PairDatasets:
    namespace: str = "retain"
    """dataset ids are <namespace>/<sequence>/<task>/<quality>-v0 (retain collect's dataset.namespace)"""
    quality: str = "expert"


@dataclass
class EncoderPretrainConfig(ObjectiveSettings):
    """``objective=<idm|bc|fd|fd_contrastive|contrastive>`` (configs/objective/)."""

    name: str = "idm"
    updates: int = 100_000
    """optimizer updates (Brandfonbrener et al.: 100k on the point mass)"""
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(name="cosine", warmup_steps=0))
    clip: float = 0.0
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    dataset: PairDatasets = field(default_factory=PairDatasets)
    max_episodes: int | None = None
    """pretrain on at most the first this many episodes of each dataset (the paper's data-size sweeps)"""
    val_fraction: float = 0.1
    """the last this share of each task's episodes are held out for the per-task loss"""
    val_size: int = 512
    """held-out pairs scored per task"""
    precision: str = "fp32"
    compile: bool = False
    log_every: int = 50


def _unit(actions: np.ndarray, space: gym.spaces.Box) -> np.ndarray:
    low, high = space.low.astype(np.float64), space.high.astype(np.float64)
    return np.clip(2.0 * (np.asarray(actions, np.float64) - low) / (high - low) - 1.0, -1.0, 1.0).astype(np.float32)


def load_pairs(
    tasks: list[TaskConfig], names: PairDatasets, sequence: str | None, max_episodes: int | None
) -> tuple[list[EpisodeArrays], list[str], gym.spaces.Box, gym.spaces.Box]:
    """Every task's dataset, checked to share one observation frame and one bounded action space."""
    parts, sources, spaces = [], [], None
    for task in tasks:
        name = task.dataset or sequence_dataset_id(names.namespace, sequence, task.name, names.quality)
        if dataset_path(name) is None:
            where = f"sequence={sequence}" if sequence else f"sequence=single env={task.name}"
            how = f"make it with `retain collect {where} dataset.quality={names.quality}`"
            raise DatasetError(f"task {task.name!r}: dataset {name} not found", how if not task.dataset else "fix it")
        data = load_transitions(name)
        obs_space, act_space = data.observation_space, data.action_space
        if not isinstance(act_space, gym.spaces.Box) or not act_space.is_bounded("both") or len(act_space.shape) != 1:
            raise DatasetError(
                f"task {task.name!r}: actions {act_space}", "representation objectives take bounded 1-D Box actions"
            )
        if spaces is not None and (obs_space.shape != spaces[0].shape or act_space.shape != spaces[1].shape):
            raise DatasetError(
                f"task {task.name!r}: dataset {name} has spaces {obs_space} / {act_space}, the first task "
                f"{spaces[0]} / {spaces[1]}",
                "pretrain one encoder on tasks of one observation and action kind",
            )
        spaces = spaces or (obs_space, act_space)
        starts = np.asarray(data.episode_starts, dtype=np.int64)
        n = len(data.actions) if max_episodes is None or max_episodes >= len(starts) else int(starts[max_episodes])
        parts.append(
            EpisodeArrays(
                np.asarray(data.observations)[:n], _unit(np.asarray(data.actions)[:n], act_space), starts[starts < n]
            )
        )
        sources.append(str(data.source))
    return parts, sources, spaces[0], spaces[1]


class EncoderPretrainLearner:
    """See the module docstring; the protocol is ``retain.learner.Learner``."""

    metric = "loss"
    higher_is_better = False
    unit = "updates"

    def __init__(
        self, tasks: list[TaskConfig], cfg: EncoderPretrainConfig, seed: int, device: str, sequence: str | None
    ):
        self.task_list, self.cfg, self.seed = tasks, cfg, seed
        self._check(cfg)
        self.tasks, self.eval_tasks = ["pretrain"], [t.name for t in tasks]
        self.device = resolve_device(device)
        self.bf16 = use_bf16(cfg.precision, self.device)
        parts, self.sources, self.frame_space, self.action_space = load_pairs(
            tasks, cfg.dataset, sequence, cfg.max_episodes
        )
        self.encoder_cfg = encoder_config(cfg.encoder, self.frame_space)  # checked and completed
        history = self.encoder_cfg.history
        self.data = PairData(parts, history, cfg.n_step, self.device, cfg.val_fraction)
        self.hooks, self.log, self.bar = StepHooks(), (lambda metrics, step: None), None
        self._global_step = 0
        self.model = self._fresh_model()
        self.optimizer, self.scheduler = self._optimizer()

    @staticmethod
    def _check(cfg: EncoderPretrainConfig) -> None:
        if cfg.name not in OBJECTIVE_CLASSES:
            raise ConfigError(f"unknown objective {cfg.name!r}", f"use one of {', '.join(OBJECTIVE_CLASSES)}")
        for key in ("updates", "batch_size", "log_every", "val_size", "n_step"):
            if getattr(cfg, key) < 1:
                raise ConfigError(f"objective.{key}={getattr(cfg, key)}", f"use objective.{key} >= 1")
        if not cfg.lr > 0 or cfg.weight_decay < 0 or cfg.clip < 0 or cfg.augment_pad < 0 or not cfg.temperature > 0:
            raise ConfigError(
                "objective.lr and temperature must be > 0; weight_decay, clip and augment_pad >= 0",
                "see configs/objective/idm.yaml for the defaults",
            )
        if not 0 <= cfg.val_fraction < 1 or not 0 <= cfg.dropout < 1:
            raise ConfigError("objective.val_fraction and dropout must be in [0, 1)", "use e.g. 0.1")
        if cfg.max_episodes is not None and cfg.max_episodes < 1:
            raise ConfigError(f"objective.max_episodes={cfg.max_episodes}", "use null (all) or >= 1")
        check_schedule(cfg.schedule, cfg.updates)

    def _fresh_model(self) -> Objective:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.seed, "model", 0))
            encoder = build_encoder(self.encoder_cfg, self.frame_space)
            model = OBJECTIVE_CLASSES[self.cfg.name](encoder, self.action_space.shape[0], self.cfg)
        return model.to(self.device)

    def _optimizer(self):
        optimizer = adamw(self.model.parameters(), self.cfg.lr, weight_decay=self.cfg.weight_decay)
        scheduler = build_scheduler(optimizer, self.cfg.schedule, self.cfg.updates)
        self._forward = maybe_compile(self.model, self.cfg.compile)
        return optimizer, scheduler

    # -- the protocol ------------------------------------------------------------------------------------

    @property
    def global_step(self) -> int:
        return self._global_step

    def budget(self, task: int) -> int:
        return self.cfg.updates

    def granularity(self, task: int) -> int:
        return 1

    def bind(self, log, hooks: StepHooks, progress) -> None:
        self.log, self.hooks, self.bar = log, hooks, progress

    def prepare_task(self, task, data_tasks, replay=None, memory=None) -> bool:
        return False

    def train_chunk(self, task: int, chunk: int, units: int) -> None:
        chunk_seed = derive_seed(self.seed, "train", task, chunk)
        seed_everything(chunk_seed)  # dropout and augmentation
        generator = torch.Generator().manual_seed(chunk_seed)
        self.model.train()
        t0, losses, extras = time.perf_counter(), [], {}
        for _ in range(units):
            batch = self.data.batch(self.cfg.batch_size, generator)
            with autocast(self.device, self.bf16):
                loss, metrics = self._forward(batch)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.cfg.clip > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip)
            self.optimizer.step()
            self.scheduler.step()
            self._global_step += 1
            losses.append(loss.detach())
            for k, v in metrics.items():
                extras.setdefault(k, []).append(v)
            if self._global_step % self.cfg.log_every == 0:
                mean = float(torch.stack(losses).mean())
                if not np.isfinite(mean):
                    raise TrainingDiverged(
                        f"training diverged: {self.cfg.name} loss {mean} at update {self._global_step}",
                        "lower objective.lr or set objective.clip (the last checkpoint is kept)",
                    )
                logged = {"train/loss": mean, "train/lr": self.scheduler.get_last_lr()[0]}
                logged.update({f"train/{k}": float(torch.stack(v).mean()) for k, v in extras.items()})
                self.log(logged, self._global_step)
                losses, extras = [], {}
            if self.bar is not None:
                self.bar.update(1)
        seconds = time.perf_counter() - t0
        self.log({"perf/samples_per_second": units * self.cfg.batch_size / max(seconds, 1e-9)}, self._global_step)

    @torch.no_grad()
    def evaluate(self, tasks: list[int], weights: dict[int, dict[str, torch.Tensor] | None]) -> dict[int, TaskScore]:
        self.model.eval()
        try:
            out = {}
            for j in tasks:
                batch = self.data.validation(j, self.cfg.val_size, derive_seed(self.seed, "validation", j))
                with autocast(self.device, self.bf16):
                    loss, metrics = self.model(batch)
                out[j] = TaskScore(float(loss), {"loss": float(loss), **{k: float(v) for k, v in metrics.items()}})
            return out
        finally:
            self.model.train()

    def named_parameters(self):
        return self.model.named_parameters()

    def weights(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(weights)

    def initial_weights(self, task: int) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self._fresh_model().state_dict().items()}

    def reset_model(self, task: int) -> None:
        self.model = self._fresh_model()
        self.optimizer, self.scheduler = self._optimizer()

    def state(self) -> LearnerState:
        state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "global_step": self._global_step,
        }
        return LearnerState(self.weights(), state)

    def load_state(self, state: LearnerState, where: str) -> None:
        from retain.checkpoint import check_shapes

        check_shapes(self.model.state_dict(), state.weights, where)
        self.model.load_state_dict(state.weights)
        self.optimizer, self.scheduler = self._optimizer()
        self.optimizer.load_state_dict(state.state["optimizer"])
        self.scheduler.load_state_dict(state.state["scheduler"])
        self._global_step = int(state.state["global_step"])

    # -- the artifact and the report ---------------------------------------------------------------------

    def export(self, folder) -> None:
        meta = {
            "objective": self.cfg.name,
            "settings": asdict(
                ObjectiveSettings(**{k: getattr(self.cfg, k) for k in ObjectiveSettings.__dataclass_fields__})
            ),
            "action_low": self.action_space.low.tolist(),
            "action_high": self.action_space.high.tolist(),
            "updates": self._global_step,
            "datasets": self.sources,
            "pretrain_tasks": {t.name: asdict(t.env) for t in self.task_list},
        }
        heads = {"idm_head": self.model.head.state_dict()} if self.cfg.name == "idm" else None
        save_encoder(self.model.encoder, folder, meta, heads)

    def describe(self) -> list[str]:
        c, e = self.cfg, self.encoder_cfg
        shape = f"{e.kind} encoder, latent {e.latent}, history {e.history}"
        return [
            f"- pretraining tasks: {', '.join(f'`{t}`' for t in self.eval_tasks)}",
            f"- objective `{c.name}` (n = {c.n_step}), {shape}; {c.updates} updates, batch {c.batch_size}, "
            f"lr {c.lr} ({c.schedule.name})",
            "- datasets: " + ", ".join(f"`{s}`" for s in self.sources),
            "- scored: the objective's loss on each task's held-out episodes (lower is better)",
        ]

    def summary(self, results: dict) -> dict[str, Any]:
        return {"datasets": self.sources, "pairs": int(self.data.train_sizes.sum())}

    def close(self) -> None:
        pass
