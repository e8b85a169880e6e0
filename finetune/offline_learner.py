"""The offline learner: a policy trained from each task's dataset (behaviour cloning), on the continual
runner's ``Learner`` protocol.

Datasets are what ``retain collect`` writes (Minari, under RETAIN_DATA) or D4RL-layout HDF5 files
(``sequence.tasks[i].dataset=``). Every task's data is loaded once, before training starts, into contiguous
tensors on the training device (one block per observation key, tasks one after another); a batch is a
tensor of row indices drawn by a seeded ``torch.Generator`` and gathered with one indexing op per key — no
per-sample Python, no DataLoader workers. With several data tasks (``method=multitask``) each row of a
batch first draws its task uniformly, then a row of it, so every task weighs the same whatever its size.

The budget unit is the optimizer update. Chunk c of task t draws from a generator seeded by (seed, t, c),
so a chunk trains the same after a restart; optimizer and schedule states are in the checkpoint.
Evaluation runs the deterministic policy (mean action, or argmax) in the task's envs, batched over K
parallel episodes. Continual methods reach the loop through ``StepHooks``: ``penalty`` is added to the loss,
``transform_gradients`` runs before each step, ``batch`` may replace a batch.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from agents.policies import BCPolicy, PolicyConfig, build_policy, check_loss
from envs.text import encode_space, has_text
from finetune import encoder_use
from finetune.encoder_use import EncoderUse
from finetune.env_tasks import EnvScorer, EvalSettings, Task, swapped_weights
from finetune.offline_data import DatasetNames, TaskData, load_task_data, text_tokens, to_tensor
from retain.device import resolve_device
from retain.errors import ConfigError
from retain.learner import LearnerState, StepHooks, TaskScore
from retain.seeding import derive_seed, seed_everything
from retain.training.optim import adamw, maybe_compile
from retain.training.precision import autocast, use_bf16
from retain.training.schedules import ScheduleConfig, build_scheduler, check_schedule


@dataclass
class OfflineLearnerConfig:
    """``learner=offline``: behaviour cloning from each task's dataset."""

    name: str = "offline"
    """the learner (sb3 | offline)"""
    updates_per_task: int = 2000
    """optimizer updates per task (the budget unit of offline runs)"""
    batch_size: int = 256
    """transitions per update"""
    lr: float = 1e-3
    """peak learning rate (AdamW)"""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay"""
    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(name="constant", warmup_steps=0))
    """learning-rate schedule over each task's updates (the schedule/ group's shapes)"""
    reset_optimizer: bool = True
    """a fresh optimizer (and schedule) at every task, as Continual World does; False carries AdamW's moments"""
    loss: str = "auto"
    """auto (ce for discrete actions, mse for continuous) | mse | nll (Gaussian) | ce"""
    clip: float = 0.0
    """max gradient norm (0: no clipping)"""
    task_id: bool = True
    """give the policy the task's one-hot index next to the observation (Continual World's setting; needed when
    the task is hidden context, as the point mass's goal is); False: the observation alone"""
    multihead: bool = False
    """one output head per task, each task's rows read its own (Continual World's multi-head setting; combine with
    task_id=false, as Continual World hides the id from the network's body); methods leave the heads alone"""
    max_episodes: int | None = None
    """train on at most the first this many episodes of each dataset (few-shot settings)"""
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    encoder: EncoderUse = field(default_factory=EncoderUse)
    """a pretrained observation encoder (``path``), frozen or trained with the head, or a fresh one (scratch)"""
    dataset: DatasetNames = field(default_factory=DatasetNames)
    precision: str = "fp32"
    """fp32 | bf16 | auto: bf16 autocast (retain.training.precision)"""
    compile: bool = False
    """torch.compile the policy for training"""
    log_every: int = 50
    """log train/ metrics every this many updates"""


RETRAIN_CHUNK = 1_000_000  # the chunk index retraining draws its batches with (apart from every training chunk)


class OfflineLearner:
    """See the module docstring; the protocol is ``retain.learner.Learner``."""

    higher_is_better = True
    unit = "updates"

    def __init__(
        self,
        tasks: list[Task],
        cfg: OfflineLearnerConfig,
        evaluation: EvalSettings,
        metric: str,
        seed: int,
        device: str = "auto",
        sequence: str | None = None,
        extra: dict[str, list[Task]] | None = None,
    ):
        self._set_up(tasks, cfg, metric, seed, device)
        history = encoder_use.history(cfg.encoder)
        self.sources, parts, spaces = load_task_data(tasks, cfg.dataset, sequence, cfg.max_episodes, history)
        check_loss(cfg.loss, isinstance(spaces[1], gym.spaces.Discrete))
        self.observation_space, self.action_space = spaces
        self.encoder = encoder_use.build(cfg.encoder, self.observation_space, f"task {tasks[0].name!r}", self.device)
        self.frozen = self.encoder if self.encoder is not None and cfg.encoder.freeze and cfg.encoder.path else None
        self.data = TaskData(parts, self.device)
        if self.frozen is not None:  # the paper's protocol: the data encoded once, the head trains on latents
            self.data.obs = encoder_use.encode_all(self.frozen, self.data.obs)
        text = has_text(self.observation_space)

        def eval_env(spec):
            spec = text_tokens(spec) if text else spec
            return replace(spec, frame_stack=history) if history > 1 else spec

        eval_tasks = [Task(t.name, eval_env(t.env), t.steps) for t in tasks]
        extra = {k: [Task(t.name, eval_env(t.env), t.steps) for t in v] for k, v in (extra or {}).items()}
        self.scorer = EnvScorer(eval_tasks, evaluation, metric, seed, extra)
        if self.frozen is not None:
            self.policy_space = encoder_use.latent_space(self.frozen)
        elif self.encoder is not None:
            self.policy_space = encoder_use.stacked_space(self.observation_space, history)
        else:
            self.policy_space = encode_space(self.observation_space)
        self._start()

    def _start(self) -> None:
        """The state before any task: no hooks or logger bound yet, task 0's fresh model and optimizer."""
        self.hooks = StepHooks()
        self.log = lambda metrics, step: None
        self.bar = None
        self._global_step = 0
        self.task, self.task_step, self.model_task = 0, 0, 0
        self.data_tasks, self.replay_rows = [0], []
        self.replay_memory: int | None = None  # rows kept per earlier task for replay (None: all)
        self.policy = self._fresh_policy(0)
        self.optimizer, self.scheduler = self._optimizer(0)

    # -- set-up ------------------------------------------------------------------------------------------

    def _set_up(self, tasks: list[Task], cfg: OfflineLearnerConfig, metric: str, seed: int, device: str) -> None:
        """What every offline learner keeps first: its tasks and config (checked), metric, seed and device."""
        self.task_list, self.cfg, self.metric, self.seed = tasks, cfg, metric, seed
        self.tasks = self.eval_tasks = [t.name for t in tasks]
        self._check(cfg)
        self.device = resolve_device(device)
        self.bf16 = use_bf16(cfg.precision, self.device)

    @staticmethod
    def _check(cfg: OfflineLearnerConfig) -> None:
        for key in ("updates_per_task", "batch_size", "log_every"):
            if getattr(cfg, key) < 1:
                raise ConfigError(f"learner.{key}={getattr(cfg, key)}", f"use learner.{key} >= 1")
        if not cfg.lr > 0:
            raise ConfigError(f"learner.lr={cfg.lr} is not positive", "use e.g. learner.lr=1e-3")
        if cfg.weight_decay < 0 or cfg.clip < 0:
            raise ConfigError("learner.weight_decay and learner.clip must be >= 0", "use 0 to turn them off")
        if cfg.max_episodes is not None and cfg.max_episodes < 1:
            raise ConfigError(f"learner.max_episodes={cfg.max_episodes}", "use null (all) or >= 1")
        check_schedule(cfg.schedule, cfg.updates_per_task)

    def _fresh_policy(self, task: int, device: torch.device | None = None) -> BCPolicy:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.seed, "model", task))
            n_tasks = len(self.tasks) if self.cfg.task_id else 0
            heads = len(self.tasks) if self.cfg.multihead else 1
            encoder = None
            if self.encoder is not None and self.frozen is None:  # trained end to end: a fresh copy per model
                encoder = encoder_use.fresh_copy(self.cfg.encoder, self.encoder, self.observation_space)
            policy = build_policy(
                self.policy_space, self.action_space, self.cfg.policy, self.cfg.loss, n_tasks, heads, encoder
            )
        return policy.to(device or self.device)

    def _optimizer(self, task: int):
        optimizer = adamw(self.policy.parameters(), self.cfg.lr, weight_decay=self.cfg.weight_decay)
        scheduler = build_scheduler(optimizer, self.cfg.schedule, self.budget(task))
        self._forward = maybe_compile(self.policy, self.cfg.compile)
        return optimizer, scheduler

    @property
    def _ids(self) -> bool:
        """Whether the policy reads each row's task index (task-id input or per-task heads)."""
        return self.cfg.task_id or self.cfg.multihead

    # -- the protocol ------------------------------------------------------------------------------------

    @property
    def global_step(self) -> int:
        return self._global_step

    def budget(self, task: int) -> int:
        return self.cfg.updates_per_task

    def granularity(self, task: int) -> int:
        return 1

    def bind(self, log, hooks: StepHooks, progress) -> None:
        self.log, self.hooks, self.bar = log, hooks, progress

    def prepare_task(
        self, task: int, data_tasks: list[int], replay: dict[int, float] | None = None, memory: int | None = None
    ) -> bool:
        self.task, self.task_step, self.data_tasks = task, 0, list(data_tasks)
        self.replay_memory = memory
        # exact rows per batch, so a replay share is what every batch holds
        self.replay_rows = [[int(j), round(share * self.cfg.batch_size)] for j, share in (replay or {}).items()]
        if sum(count for _, count in self.replay_rows) >= self.cfg.batch_size:
            raise ConfigError(
                f"replay takes {sum(c for _, c in self.replay_rows)} of {self.cfg.batch_size} rows of every batch",
                "lower the replay share (the current task needs rows too)",
            )
        if self.cfg.reset_optimizer or task == 0:
            self.optimizer, self.scheduler = self._optimizer(task)
        else:  # AdamW's moments carry over; the schedule runs over this task's updates (the peak is kept)
            self.scheduler = build_scheduler(self.optimizer, self.cfg.schedule, self.budget(task))
        return False

    def _replay_memories(self) -> dict[int, torch.Tensor] | None:
        """The rows kept of each replayed task under a budget: a seeded draw without replacement, the same
        whenever it is asked for (so a resumed run replays the same rows)."""
        if self.replay_memory is None:
            return None
        return {
            j: self.data.kept_rows(j, self.replay_memory, derive_seed(self.seed, "replay-memory", j))
            for j, _ in self.replay_rows
        }

    def train_chunk(self, task: int, chunk: int, units: int) -> None:
        chunk_seed = derive_seed(self.seed, "train", task, chunk)
        seed_everything(chunk_seed)
        generator = torch.Generator().manual_seed(chunk_seed)
        tasks = torch.tensor(self.data_tasks, device=self.device)
        memories = self._replay_memories()
        self.policy.train()
        t0, losses = time.perf_counter(), []
        for _ in range(units):
            batch = self.data.batch(tasks, self.cfg.batch_size, generator, self.replay_rows, memories)
            batch = self._local(self.hooks.batch(self, batch))
            obs, actions, task_ids = batch
            with autocast(self.device, self.bf16):
                loss = self._forward(obs, actions, task_ids if self._ids else None)
            penalty = self.hooks.penalty(self)
            total = loss if penalty is None else loss + penalty
            self.optimizer.zero_grad(set_to_none=True)
            total.backward()
            if self.cfg.clip > 0:
                torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.cfg.clip)
            self.hooks.transform_gradients(self)
            self.optimizer.step()
            self.hooks.after_step(self)
            self.scheduler.step()
            self._global_step += 1
            self.task_step += 1
            losses.append(loss.detach())
            if self._global_step % self.cfg.log_every == 0:
                mean = float(torch.stack(losses).mean())
                if not np.isfinite(mean):
                    from retain.errors import TrainingDiverged

                    raise TrainingDiverged(
                        f"training diverged: BC loss {mean} at update {self.task_step} of task {self.tasks[task]!r}",
                        "lower learner.lr or set learner.clip (the last checkpoint is kept)",
                    )
                metrics = {"train/loss": mean, "train/lr": self.scheduler.get_last_lr()[0]}
                if penalty is not None:
                    metrics["train/penalty"] = float(penalty.detach())
                self.log(metrics, self._global_step)
                losses = []
            if self.bar is not None:
                self.bar.update(1)
        seconds = time.perf_counter() - t0
        self.log({"perf/samples_per_second": units * self.cfg.batch_size / max(seconds, 1e-9)}, self._global_step)

    def _local(self, batch):
        """This process's rows of a batch (all of them without data parallelism)."""
        return batch

    def _obs_tensor(self, obs) -> Any:
        if isinstance(obs, dict):
            return {k: to_tensor(v, self.device) for k, v in obs.items()}
        if self.frozen is not None:
            return encoder_use.encode_all(self.frozen, to_tensor(obs, self.device))
        return to_tensor(obs, self.device)

    def _act(self, obs, task: int = -1) -> np.ndarray:
        """Deterministic actions for a batch of env observations of task ``task`` (-1: outside the sequence)."""
        obs = self._obs_tensor(obs)
        n = len(next(iter(obs.values())) if isinstance(obs, dict) else obs)
        ids = torch.full((n,), task, device=self.device) if self._ids else None
        self.policy.eval()
        with autocast(self.device, self.bf16):
            actions = self.policy.act(obs, ids)
        self.policy.train()
        return actions.float().cpu().numpy() if not self.policy.discrete else actions.cpu().numpy()

    def evaluate(self, tasks: list[int], weights: dict[int, dict[str, torch.Tensor] | None]) -> dict[int, TaskScore]:
        with swapped_weights(self.policy, weights, self._act, pass_task=True) as predict:
            # with task ids every task's envs need their own call (one batch cannot hold two ids)
            same = not self._ids and all(weights.get(j) is None for j in tasks)
            return self.scorer.score(tasks, predict, same_policy=same)

    def extra_eval_sets(self) -> dict[str, list[str]]:
        return self.scorer.extra_sets()

    def evaluate_extra(self, name: str) -> list[TaskScore]:
        return self.scorer.score_extra(name, self._act)

    def named_parameters(self):
        return self.policy.named_parameters()

    def weights(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.policy.state_dict().items()}

    def load_weights(self, weights: dict[str, torch.Tensor]) -> None:
        self.policy.load_state_dict(weights)

    def initial_weights(self, task: int) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self._fresh_policy(task).state_dict().items()}

    def reset_model(self, task: int) -> None:
        self.policy = self._fresh_policy(task)
        self.model_task = task
        self.optimizer, self.scheduler = self._optimizer(task)

    def state(self) -> LearnerState:
        state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "global_step": self._global_step,
            "task": self.task,
            "task_step": self.task_step,
            "model_task": self.model_task,
            "data_tasks": self.data_tasks,
            "replay_rows": self.replay_rows,
            "replay_memory": self.replay_memory,
        }
        return LearnerState(self.weights(), state)

    def load_state(self, state: LearnerState, where: str) -> None:
        from retain.checkpoint import check_shapes

        s = state.state
        self.policy = self._fresh_policy(s["model_task"])
        check_shapes(self.policy.state_dict(), state.weights, where)
        self.policy.load_state_dict(state.weights)
        self.task, self.task_step, self.model_task = s["task"], s["task_step"], s["model_task"]
        self.data_tasks, self._global_step = list(s["data_tasks"]), int(s["global_step"])
        self.replay_rows = [list(r) for r in s.get("replay_rows", [])]
        self.replay_memory = s.get("replay_memory")
        self.optimizer, self.scheduler = self._optimizer(self.task)
        self.optimizer.load_state_dict(s["optimizer"])
        self.scheduler.load_state_dict(s["scheduler"])

    # -- what continual-learning methods use (retain/methods) --------------------------------------------

    def regularized_parameters(self, critic: bool = False) -> list[str]:
        """Every parameter but the per-task heads (a BC policy has no critic)."""
        heads = self.cfg.multihead
        return [n for n, _ in self.policy.named_parameters() if not (heads and n.startswith("head."))]

    def method_batches(self, task: int, batches: int, batch_size: int):
        generator = torch.Generator().manual_seed(derive_seed(self.seed, "method-batches", task))
        for _ in range(batches):
            rows = self.data.task_rows(task, batch_size, generator)
            yield self.data.rows(rows, torch.full_like(rows, task))

    def _ids_of(self, batch) -> torch.Tensor | None:
        return batch[2] if self._ids else None

    def log_likelihood(self, batch) -> torch.Tensor:
        obs, actions, _ = batch
        return self.policy.log_likelihood(obs, actions, self._ids_of(batch))

    def is_gaussian(self) -> bool:
        return not self.policy.discrete

    def gaussian(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        return self.policy.gaussian(batch[0], self._ids_of(batch))

    def output_norm(self, batch) -> torch.Tensor:
        return self.policy.output_norm(batch[0], self._ids_of(batch))

    def loss(self, batch) -> torch.Tensor:
        obs, actions, _ = batch
        return self.policy(obs, actions, self._ids_of(batch))

    def memory(self, task: int, size: int) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(derive_seed(self.seed, "memory", task))
        rows = self.data.task_rows(task, size, generator)
        return {"rows": rows.cpu(), "tasks": torch.full_like(rows, task).cpu()}

    def memory_batch(self, memories: list[dict[str, torch.Tensor]], size: int, generator: torch.Generator):
        rows = torch.cat([m["rows"] for m in memories])
        tasks = torch.cat([m["tasks"] for m in memories])
        pick = torch.randint(len(rows), (size,), generator=generator)
        return self.data.rows(rows[pick].to(self.device), tasks[pick].to(self.device))

    def retrain(self, task: int, units: int) -> None:
        """Train ``units`` more updates on task ``task`` with a fresh optimizer (PackNet), not counted on the
        run's x-axis (the task's budget is what the runner planned)."""
        step, task_step, log, bar = self._global_step, self.task_step, self.log, self.bar
        self.log, self.bar = (lambda metrics, step: None), None  # the x-axis does not move: nothing to log on it
        self.optimizer, self.scheduler = self._optimizer(task)
        try:
            self.train_chunk(task, RETRAIN_CHUNK, units)
        finally:
            self.optimizer, self.scheduler = self._optimizer(task)
            self._global_step, self.task_step, self.log, self.bar = step, task_step, log, bar

    def describe(self) -> list[str]:
        c = self.cfg
        return [
            f"- offline BC: {c.updates_per_task} updates/task, batch {c.batch_size}, lr {c.lr} ({c.schedule.name}), "
            f"loss `{self.policy.loss_kind}`, policy `{json.dumps(c.policy.__dict__)}`",
            *encoder_use.describe(c.encoder, self.encoder),
            "- datasets: " + ", ".join(f"`{s}`" for s in self.sources),
        ]

    def summary(self, results: dict) -> dict[str, Any]:
        return {"datasets": self.sources, "transitions": int(self.data.sizes.sum())}

    def close(self) -> None:
        self.scorer.close()
