"""The Decision Transformer learner (``learner=dt``): a (pretrained) multi-domain DT tuned onto each task's
offline data, with an adaptation method (``adapter=``) and any continual method (``method=``).

It is the offline learner with episodes instead of transitions: the batching, replay shares, kept memories,
the optimizer and schedule per task, exact resume and the members continual methods use come from
``OfflineLearner``; what differs is the data (context windows, ``finetune.dt_data``), the model
(``agents.decision_transformer``, loaded from ``model.path`` or fresh) and acting, which keeps a context
window and a return-to-go per environment (``Rollout``), fed each step's rewards by the evaluator.

``DtPretrainLearner`` is the same learner over many tasks at once: one row (``pretrain``) trained on every
task's data, scored on each task: ``retain pretrain objective=dt`` runs it on the continual runner.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from agents.decision_transformer import DTConfig, backbone_state, build_dt
from finetune.adapters import AdapterConfig, apply_adapter, check_adapter, is_added
from finetune.dt_data import EpisodeDatasets, Rollout, WindowData, from_unit, load_episodes
from finetune.env_tasks import EnvScorer, EvalSettings, Task, swapped_weights
from finetune.offline_data import _env_spaces
from finetune.offline_learner import OfflineLearner
from retain.device import resolve_device
from retain.errors import ConfigError
from retain.learner import TaskScore
from retain.seeding import derive_seed
from retain.training.distributed import Parallel
from retain.training.optim import adamw, maybe_compile
from retain.training.precision import autocast, use_bf16
from retain.training.schedules import ScheduleConfig, build_scheduler, check_schedule


@dataclass
class DtModelConfig(DTConfig):
    """The Decision Transformer: a pretrained folder, or the size of a fresh one (``DTConfig``'s fields; a
    loaded model keeps its own)."""

    path: str | None = None
    """a model folder `retain pretrain objective=dt` wrote (model.safetensors + config.json); null: fresh"""
    state_dim: int = 0
    """observation slots (0: the largest observation of the tasks)"""
    act_dim: int = 0
    """action dimensions (0: the widest action space of the tasks)"""


@dataclass
class DtLearnerConfig:
    """``learner=dt``: a Decision Transformer tuned on each task's episodes."""

    name: str = "dt"
    updates_per_task: int = 1000
    """optimizer updates per task"""
    batch_size: int = 64
    """context windows per update"""
    lr: float = 1e-4
    weight_decay: float = 1e-4
    schedule: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(name="constant", warmup_steps=0))
    reset_optimizer: bool = True
    clip: float = 0.25
    """max gradient norm (the Decision Transformer's 0.25; 0: off)"""
    max_episodes: int | None = None
    """train on at most the first this many episodes of each dataset"""
    target_return_factor: float = 2.0
    """acting starts the return-to-go at this times the best return in the task's data (L2M: 2; for a negative
    best return, best + (factor - 1) * |best|)"""
    model: DtModelConfig = field(default_factory=DtModelConfig)
    dataset: EpisodeDatasets = field(default_factory=EpisodeDatasets)
    precision: str = "fp32"
    compile: bool = False
    log_every: int = 50
    batched_eval: bool = True
    """evaluate every task's envs in one batch, one forward pass per step (when their action spaces match);
    false: task after task (the same scores, slower: benchmarks/dt_throughput.py)"""
    retention: bool = True
    """with a pretrained model: score its pretraining tasks before the sequence and after every task (an extra
    evaluation set, `pretraining`, whose matrix gives the retention of what was pretrained)"""
    # what OfflineLearner reads: the DT always gets each row's task index (only the oracle pool uses it)
    task_id: bool = True
    multihead: bool = False


class DtLearner(OfflineLearner):
    """See the module docstring; the protocol is ``retain.learner.Learner``."""

    def __init__(
        self,
        tasks: list[Task],
        cfg: DtLearnerConfig,
        adapter: AdapterConfig,
        evaluation: EvalSettings,
        metric: str,
        seed: int,
        device: str = "auto",
        sequence: str | None = None,
        extra: dict[str, list[Task]] | None = None,
        parallel: Parallel | None = None,
    ):
        self.task_list, self.cfg, self.metric, self.seed, self.adapter = tasks, cfg, metric, seed, adapter
        self.parallel = parallel or Parallel()
        self.parallel.check_batch(cfg.batch_size)
        self.tasks = self.eval_tasks = [t.name for t in tasks]
        self._check_dt(cfg, adapter)
        self.device = resolve_device(device)
        self.bf16 = use_bf16(cfg.precision, self.device)
        self.pretrained = self._pretrained(cfg.model)
        spaces = {t.name: _env_spaces(t) for t in [*tasks, *(t for ts in (extra or {}).values() for t in ts)]}
        self.arch = self._arch(cfg.model, spaces)
        self.continuous = self.arch.kind == "continuous"
        self._check_kind(adapter, spaces)
        parts, self.action_spaces = load_episodes(
            tasks,
            cfg.dataset,
            sequence,
            self.arch.state_dim,
            self.arch.act_dim,
            self.arch.n_bins,
            cfg.max_episodes,
            self.continuous,
            spaces,
        )
        self.sources = [s for p in parts for s in p.sources]
        self.data = WindowData(parts, self.arch.context, self.arch.rtg_scale, self.device)
        # L2M's 2x the best return; written best + (f-1)|best| it also points above the best when returns
        # are negative (the point mass's)
        self.targets = [p.best_return + (cfg.target_return_factor - 1.0) * abs(p.best_return) for p in parts]
        self.arch.task_targets = {**self.arch.task_targets, **dict(zip(self.eval_tasks, self.targets))}
        self.arch.task_dims = {
            **self.arch.task_dims,
            **{n: [int(s[0].shape[0]), int(s[1].shape[0])] for n, s in spaces.items()},
        }
        self.extra = extra or {}
        self._extra_spaces = {n: [spaces[t.name][1] for t in ts] for n, ts in self.extra.items()}
        self.scorer = EnvScorer(tasks, evaluation, metric, seed, self.extra)
        self._start()

    # -- set-up ------------------------------------------------------------------------------------------

    @staticmethod
    def _check_dt(cfg: DtLearnerConfig, adapter: AdapterConfig) -> None:
        for key in ("updates_per_task", "batch_size", "log_every"):
            if getattr(cfg, key) < 1:
                raise ConfigError(f"learner.{key}={getattr(cfg, key)}", f"use learner.{key} >= 1")
        if not cfg.lr > 0 or cfg.weight_decay < 0 or cfg.clip < 0:
            raise ConfigError("learner.lr must be > 0, weight_decay and clip >= 0", "e.g. lr=1e-4 clip=0.25")
        if cfg.model.context < 1 or cfg.model.n_bins < 2:
            raise ConfigError("learner.model.context must be >= 1 and n_bins >= 2", "L2M: context=5 n_bins=64")
        check_schedule(cfg.schedule, cfg.updates_per_task)
        check_adapter(adapter)

    def _check_kind(self, adapter: AdapterConfig, spaces: dict) -> None:
        if not self.continuous:
            return
        if adapter.name not in ("full", "lora", "ia3"):
            raise ConfigError(
                f"adapter={adapter.name} needs the multi-domain Decision Transformer (its tokens and action head)",
                "use learner.model.kind=multidomain, or adapter=full | lora | ia3",
            )
        dims = {(int(o.shape[0]), int(a.shape[0])) for o, a in spaces.values()}
        if len(dims) > 1:
            raise ConfigError(
                f"learner.model.kind=continuous is single-domain, but the tasks have (obs, action) sizes {sorted(dims)}",
                "use learner.model.kind=multidomain for tasks of several domains",
            )

    def _pretrained(self, model: DtModelConfig) -> tuple[DTConfig, dict[str, torch.Tensor]] | None:
        if not model.path:
            return None
        from agents.decision_transformer import load_dt

        loaded = load_dt(model.path)  # checks the folder, its config and its weights' shapes
        return loaded.cfg, {k: v.detach().clone() for k, v in backbone_state(loaded).items()}

    def _arch(self, model: DtModelConfig, spaces: dict) -> DTConfig:
        if self.pretrained is not None:
            return DTConfig(**asdict(self.pretrained[0]))
        fields = {k: v for k, v in asdict(model).items() if k != "path"}
        fields["state_dim"] = model.state_dim or max(int(s[0].shape[0]) for s in spaces.values())
        fields["act_dim"] = model.act_dim or max(int(s[1].shape[0]) for s in spaces.values())
        return DTConfig(**fields)

    def _fresh_policy(self, task: int, device: torch.device | None = None) -> torch.nn.Module:
        """The pretrained model (or a fresh one seeded by the task) with the adapter's parameters, seeded by
        the task, added; only what the adapter trains is trainable."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.seed, "model", task))
            model = build_dt(self.arch)
            if self.pretrained is not None:
                model.load_state_dict(self.pretrained[1], strict=False)
            apply_adapter(model, self.adapter)
        return model.to(device or self.device)

    def _optimizer(self, task: int):
        # what adapters add trains at adapter.lr; no weight decay on prompts and pools: an entry (or key) a batch
        # did not select must stay as it is, or earlier tasks' modulations would decay while later tasks train
        trainable = [(n, p) for n, p in self.policy.named_parameters() if p.requires_grad]
        added_lr = self.adapter.lr or self.cfg.lr
        groups = [
            {"params": [p for n, p in trainable if not is_added(n)]},
            {"params": [p for n, p in trainable if is_added(n) and not n.startswith("adaptation.")], "lr": added_lr},
            {
                "params": [p for n, p in trainable if n.startswith("adaptation.")],
                "lr": added_lr,
                "weight_decay": 0.0,
            },
        ]
        optimizer = adamw([g for g in groups if g["params"]], self.cfg.lr, weight_decay=self.cfg.weight_decay)
        scheduler = build_scheduler(optimizer, self.cfg.schedule, self.budget(task))
        # data parallelism (DDP under torchrun, DT pretraining): each process trains on its rows of every batch
        self._forward = maybe_compile(self.parallel.wrap(self.policy), self.cfg.compile)
        return optimizer, scheduler

    def _local(self, batch):
        if self.parallel.world == 1:
            return batch
        obs, actions, ids = batch
        rows = self.parallel.rows
        return {k: rows(v) for k, v in obs.items()}, rows(actions), rows(ids)

    @property
    def _ids(self) -> bool:
        return True

    def prepare_task(self, task, data_tasks, replay=None, memory=None) -> bool:
        moved = super().prepare_task(task, data_tasks, replay, memory)
        if self.policy.adaptation is not None:
            self.policy.adaptation.start_task(task)
        return moved

    # -- acting ------------------------------------------------------------------------------------------

    def _actor(self, targets: list[float], spaces: list, task_ids: list[int]):
        """``(act(obs, j), observe(j, rewards, dones))`` over one evaluation: a context window per env."""
        rollouts: dict[int, Rollout] = {}
        a = self.arch

        def act(obs: np.ndarray, j: int) -> np.ndarray:
            k = max(j, 0)
            if j not in rollouts:
                target = targets[k] / a.rtg_scale
                rollouts[j] = Rollout(len(obs), a.state_dim, a.act_dim, a.context, target, self.device, self.continuous)
            window, past = rollouts[j].window(obs)
            ids = torch.full((len(obs),), task_ids[k], device=self.device)
            self.policy.eval()
            with autocast(self.device, self.bf16):
                chosen, unit = self.policy.act_unit(window, past, ids)
            self.policy.train()
            rollouts[j].record(chosen)
            return from_unit(unit.float().cpu().numpy(), spaces[k])

        def observe(j: int, rewards: np.ndarray, dones: np.ndarray) -> None:
            rollouts[j].observe(rewards, dones, a.rtg_scale)

        return act, observe

    def _batched_actor(self, targets: list[float], space, task_ids: list[int]):
        """``(act(tasks, obs), observe(tasks, ...))`` for every task's envs in one batch (``tasks``: each env's
        task index): one forward pass per step for all of them."""
        rollout: list[Rollout] = []
        a = self.arch
        targets_, ids_ = np.asarray(targets, np.float32) / a.rtg_scale, torch.as_tensor(task_ids, device=self.device)

        def act(tasks: np.ndarray, obs: np.ndarray) -> np.ndarray:
            if not rollout:
                rollout.append(
                    Rollout(len(obs), a.state_dim, a.act_dim, a.context, targets_[tasks], self.device, self.continuous)
                )
            window, past = rollout[0].window(obs)
            self.policy.eval()
            with autocast(self.device, self.bf16):
                chosen, unit = self.policy.act_unit(window, past, ids_[torch.as_tensor(tasks, device=self.device)])
            self.policy.train()
            rollout[0].record(chosen)
            return from_unit(unit.float().cpu().numpy(), space)

        def observe(tasks: np.ndarray, rewards: np.ndarray, dones: np.ndarray) -> None:
            rollout[0].observe(rewards, dones, a.rtg_scale)

        return act, observe

    def _can_batch(self, spaces: list) -> bool:
        return self.cfg.batched_eval and all(s == spaces[0] for s in spaces)

    def evaluate(self, tasks: list[int], weights: dict[int, dict[str, torch.Tensor] | None]) -> dict[int, TaskScore]:
        ids = list(range(len(self.eval_tasks)))
        every = sorted(tasks) == ids and all(weights.get(j) is None for j in tasks)
        if every and self._can_batch(self.action_spaces):
            act, observe = self._batched_actor(self.targets, self.action_spaces[0], ids)
            return self.scorer.score(tasks, act, same_policy=False, observe=observe, batched=True)
        act, observe = self._actor(self.targets, self.action_spaces, ids)
        with swapped_weights(self.policy, weights, act, pass_task=True) as predict:
            return self.scorer.score(tasks, predict, same_policy=False, observe=observe)

    def evaluate_extra(self, name: str) -> list[TaskScore]:
        tasks, spaces = self.extra[name], self._extra_spaces[name]
        best = max(self.targets)  # a task the model has no target for gets the highest known one
        targets = [self.arch.task_targets.get(t.name, best) for t in tasks]
        if self._can_batch(spaces):
            act, observe = self._batched_actor(targets, spaces[0], [-1] * len(tasks))
            return self.scorer.score_extra(name, None, per_task=act, observe=observe, batched=True)
        act, observe = self._actor(targets, spaces, [-1] * len(tasks))
        return self.scorer.score_extra(name, None, per_task=lambda k, obs: act(obs, k), observe=observe)

    # -- what continual-learning methods use -------------------------------------------------------------

    def named_parameters(self):
        return ((n, p) for n, p in self.policy.named_parameters() if p.requires_grad)

    def regularized_parameters(self, critic: bool = False) -> list[str]:
        return [n for n, _ in self.named_parameters()]

    def output_norm(self, batch) -> torch.Tensor:
        obs, actions, ids = batch
        return self.policy.output_norm(obs, ids, actions)

    def is_gaussian(self) -> bool:
        return False  # EWC takes the empirical Fisher of log_likelihood (categorical bins, or a unit Gaussian)

    # -- the artifact and the report ---------------------------------------------------------------------

    def export(self, folder) -> None:
        """The model's backbone as a shareable folder, with every task's target return and dimensions."""
        self.policy.cfg = self.arch
        self.policy.save(folder)

    def describe(self) -> list[str]:
        c, a = self.cfg, self.arch
        model = f"`{c.model.path}`" if c.model.path else "a fresh model"
        return [
            f"- Decision Transformer ({a.n_layer} layers x {a.n_embd}, context {a.context}, {a.n_bins} bins): "
            f"{model}, adapter `{self.adapter.name}` ({self.trainable_parameters():,} trainable parameters)",
            f"- {c.updates_per_task} updates/task, batch {c.batch_size}, lr {c.lr} ({c.schedule.name}); "
            f"target return {c.target_return_factor}x the best in the data",
            "- datasets: " + ", ".join(f"`{s}`" for s in self.sources),
        ]

    def trainable_parameters(self) -> int:
        return sum(p.numel() for _, p in self.named_parameters())

    def summary(self, results: dict) -> dict[str, Any]:
        return {
            "datasets": self.sources,
            "timesteps": int(self.data.sizes.sum()),
            "adapter": self.adapter.name,
            "trainable_parameters": self.trainable_parameters(),
            "target_returns": dict(zip(self.eval_tasks, self.targets)),
        }


def pretraining_tasks(path: str, steps: int) -> list[Task]:
    """The tasks the model at ``path`` was pretrained on, as an extra evaluation set (retention)."""
    from omegaconf import OmegaConf

    from agents.decision_transformer import dt_config
    from envs.spec import EnvSpec

    specs = dt_config(path).pretrain_tasks
    return [
        Task(name, OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(EnvSpec), spec)), steps)
        for name, spec in specs.items()
    ]


class DtPretrainLearner(DtLearner):
    """Multi-task pretraining as one row: every task's data in every batch (each row draws its task
    uniformly), every task scored; ``export`` writes the shareable model."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.tasks = ["pretrain"]

    def prepare_task(self, task, data_tasks, replay=None, memory=None) -> bool:
        return super().prepare_task(task, list(range(len(self.eval_tasks))))

    def export(self, folder) -> None:
        from dataclasses import asdict as plain

        self.arch.pretrain_tasks = {t.name: plain(t.env) for t in self.task_list}
        super().export(folder)

    def describe(self) -> list[str]:
        return [f"- pretraining tasks: {', '.join(f'`{t}`' for t in self.eval_tasks)}", *super().describe()]
