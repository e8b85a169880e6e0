"""``retain sequence``: a task sequence trained by one learner with one continual method, scored into R.

The job only builds things and checks them before anything is written: the tasks (``finetune.env_tasks``),
the learner (``learner=sb3``: online RL with SB3; ``learner=offline``: behaviour cloning from each task's
dataset), the method (``retain.methods``) and the evaluation schedule. The continual runner
(``retain.runner``) does the rest — the same loop CPT runs on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from agents.sb3 import AgentConfig
from envs.spec import EnvSpec, SequenceConfig, TaskConfig
from envs.text import has_text
from finetune.env_tasks import EvalSettings, Task, check_spaces, sequence_tasks
from retain.config import RunConfig, to_container
from retain.device import resolve_device
from retain.errors import ConfigError
from retain.methods import make_method
from retain.rundir import prepare_run_dir
from retain.runner import Runner, RunOutputs, Schedule


@dataclass
class EvalConfig:
    """How and when tasks are evaluated."""

    episodes: int | None = None
    """episodes per task per evaluation; None uses the sequence's eval_episodes"""
    n_envs: int = 16
    """parallel envs per evaluation (vectorized)"""
    during: str = "all"
    """tasks evaluated at each chunk end inside a task, for learning curves: all | current | none"""
    workers: int = 1
    """>1: evaluate all tasks at once, their envs stepped in this many processes (slow envs such as Meta-World)"""
    dense_every: int = 0
    """also evaluate every this many steps (updates, for learner=offline) early in each task: the stability gap"""
    dense_until_fraction: float = 0.0
    """the early part of each task evaluated every dense_every"""
    end_at_success: bool = False
    """end evaluation episodes at their first success: a success rate scores the same in fewer steps
    (Meta-World's 500-step episodes; returns and lengths are then of the shortened episodes)"""


@dataclass
class SequenceJobConfig(RunConfig):
    """``retain sequence``: continual learning over a task sequence."""

    sequence: SequenceConfig = field(default_factory=SequenceConfig)
    learner: dict[str, Any] = field(default_factory=lambda: {"name": "sb3"})
    """what trains: sb3 (online RL, the `agent` group's algorithm) | offline (behaviour cloning from datasets) |
    dt (Decision Transformer) | lm (a language-model policy on BabyAI)"""
    agent: AgentConfig = field(default_factory=AgentConfig)
    """the SB3 algorithm of learner=sb3"""
    method: dict[str, Any] = field(default_factory=lambda: {"name": "finetune"})
    """the continual method: finetune | reset | multitask (configs/method/)"""
    adapter: dict[str, Any] = field(default_factory=lambda: {"name": "full"})
    """how learner=dt tunes its model: full | head | lora | ia3 | prompt | prefix | adapters | l2p | l2m
    (configs/adapter/); other learners train their whole network (full)"""
    env: EnvSpec = field(default_factory=EnvSpec)
    """the env of single-task runs (sequence=single)"""
    eval: EvalConfig = field(default_factory=EvalConfig)
    extra_eval: dict[str, Any] = field(default_factory=dict)
    """further evaluation sets, scored before the sequence and after every task (e.g. pretraining tasks, for
    retention): {set name: [tasks as in a sequence config]}; each becomes a T x K matrix in results.json"""
    chunks_per_task: int = 10
    """evaluation + checkpoint points per task"""


def _learner_config(cfg: DictConfig, schema: type) -> Any:
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), cfg.learner))
    except OmegaConfBaseException as e:
        raise ConfigError(
            f"learner {cfg.learner.get('name')}: {str(e).splitlines()[0]}",
            f"see configs/learner/{cfg.learner.get('name')}.yaml for its keys",
        ) from e


def _extra_tasks(cfg: DictConfig, steps: int) -> dict[str, list[Task]]:
    out = {}
    for name, tasks in cfg.extra_eval.items():
        if "/" in name or not tasks or not OmegaConf.is_list(tasks):
            raise ConfigError(f"extra_eval.{name} is not a list of tasks", "give it tasks as a sequence lists them")
        try:
            typed = [OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TaskConfig), t)) for t in tasks]
        except OmegaConfBaseException as e:
            raise ConfigError(
                f"extra_eval.{name}: {str(e).splitlines()[0]}", "give {name, env: {id, ...}} per task"
            ) from e
        names = [t.name for t in typed]
        if len(set(names)) != len(names) or any("/" in n or not n for n in names):
            raise ConfigError(f"extra_eval.{name} task names {names}", "give each a distinct short name without '/'")
        if cfg.sequence.metric == "normalized_return" and any(
            t.env.ref_min_score is None or t.env.ref_max_score is None for t in typed
        ):
            raise ConfigError(
                f"metric normalized_return needs reference scores on every extra_eval.{name} task",
                "set env.ref_min_score and env.ref_max_score on each",
            )
        out[name] = [Task(t.name, t.env, steps) for t in typed]
    return out


def build_tasks(cfg: DictConfig) -> list[Task]:
    """The sequence's tasks, checked before anything is written: names, budgets and metric; every env id
    exists and every task (and every extra_eval task) has the same spaces; the learner can train on them."""
    tasks = sequence_tasks(cfg)
    learner = cfg.learner.get("name")
    if learner != "dt" and cfg.adapter.get("name", "full") != "full":
        raise ConfigError(
            f"adapter={cfg.adapter.name} needs a model to adapt; learner={learner} trains its whole network",
            "use learner=dt (a Decision Transformer), or adapter=full",
        )
    if learner == "dt":  # one model over domains: each task's spaces are checked against it when it loads
        for task in [*tasks, *(t for ts in _extra_tasks(cfg, tasks[0].steps).values() for t in ts)]:
            check_spaces([task])
        return tasks
    spaces = check_spaces(tasks)
    for name, extra_tasks in _extra_tasks(cfg, tasks[0].steps).items():
        check_spaces([tasks[0], *extra_tasks], f"sequence and its extra_eval set {name!r}")
    if learner == "sb3":
        from agents.sb3 import check_agent

        check_agent(OmegaConf.to_object(cfg.agent), spaces[1], tasks[0].name)
        if has_text(spaces[0]):
            raise ConfigError(
                f"task {tasks[0].name!r} observes text ({spaces[0]}), which SB3 policies cannot take",
                "train on it with learner=offline, or use the sequence for data collection (retain collect)",
            )
    elif learner not in ("offline", "lm"):
        raise ConfigError(f"unknown learner {learner!r}", "use learner=sb3, offline, dt or lm")
    return tasks


def build_learner(cfg: DictConfig, tasks: list[Task]):
    """The learner ``cfg.learner`` names over the checked ``tasks`` (its own config and datasets checked too)."""
    evaluation = EvalSettings(
        cfg.eval.episodes or cfg.sequence.eval_episodes, cfg.eval.n_envs, cfg.eval.workers, cfg.eval.end_at_success
    )
    if evaluation.episodes < 1 or evaluation.n_envs < 1 or evaluation.workers < 1:
        raise ConfigError(
            f"eval.episodes={evaluation.episodes}, eval.n_envs={evaluation.n_envs}, eval.workers={evaluation.workers}",
            "each must be at least 1",
        )
    extra = _extra_tasks(cfg, tasks[0].steps)
    if evaluation.workers > 1 and isinstance(check_spaces(tasks[:1])[0], gym.spaces.Dict):
        raise ConfigError(
            "eval.workers > 1 steps envs in worker processes, which batch only array observations (not Dict)",
            "use eval.workers=1 for tasks with Dict observations",
        )
    if cfg.learner.name == "sb3":
        from finetune.sb3_learner import Sb3Learner, Sb3LearnerConfig

        learner_cfg = _learner_config(cfg, Sb3LearnerConfig)
        agent = OmegaConf.to_object(cfg.agent)
        return Sb3Learner(tasks, agent, learner_cfg, evaluation, cfg.sequence.metric, cfg.seed, cfg.device, extra)
    sequence = None if cfg.sequence.from_env else cfg.sequence.name
    if cfg.learner.name == "dt":
        from finetune.adapters import adapter_config
        from finetune.dt_learner import DtLearner, DtLearnerConfig

        adapter = adapter_config(OmegaConf.to_container(cfg.adapter, resolve=True))
        learner_cfg = _learner_config(cfg, DtLearnerConfig)
        if learner_cfg.model.path and learner_cfg.retention and "pretraining" not in extra:
            from finetune.dt_learner import pretraining_tasks

            pretrained = pretraining_tasks(learner_cfg.model.path, tasks[0].steps)
            extra = {**extra, "pretraining": pretrained} if pretrained else extra
        return DtLearner(
            tasks, learner_cfg, adapter, evaluation, cfg.sequence.metric, cfg.seed, cfg.device, sequence, extra
        )
    if cfg.learner.name == "lm":
        from finetune.lm_learner import LmLearner, LmLearnerConfig

        learner_cfg = _learner_config(cfg, LmLearnerConfig)
        return LmLearner(tasks, learner_cfg, evaluation, cfg.sequence.metric, cfg.seed, cfg.device, sequence, extra)
    from finetune.offline_learner import OfflineLearner, OfflineLearnerConfig

    learner_cfg = _learner_config(cfg, OfflineLearnerConfig)
    return OfflineLearner(tasks, learner_cfg, evaluation, cfg.sequence.metric, cfg.seed, cfg.device, sequence, extra)


def schedule_of(cfg: DictConfig) -> Schedule:
    schedule = Schedule(
        during=cfg.eval.during,
        chunks_per_task=cfg.chunks_per_task,
        dense_every=cfg.eval.dense_every,
        dense_until_fraction=cfg.eval.dense_until_fraction,
    )
    schedule.check()
    return schedule


def describe(cfg: DictConfig, learner) -> list[str]:
    """The report's "What was run" lines."""
    lines = [
        f"- sequence: `{cfg.sequence.name}` ({len(learner.tasks)} tasks, metric `{cfg.sequence.metric}`)",
        f"- method: `{cfg.method.name}`; learner: `{cfg.learner.name}`"
        + (f"; adapter: `{cfg.adapter.name}`" if cfg.learner.name == "dt" else ""),
    ]
    return lines + learner.describe()


def _method_label(cfg: DictConfig) -> str:
    """The method's name in reports: the continual method, with the adapter when it is not full tuning
    (``l2m``, ``l2m-oracle``, ``lora+ewc``)."""
    adapter = cfg.adapter.get("name", "full")
    if adapter == "full":
        return cfg.method.name
    if adapter == "l2m":  # its variants are methods of their own in a comparison
        adapter += "-oracle" if cfg.adapter.get("oracle") else ""
        adapter += "-ia3" if cfg.adapter.get("modulation", "lora") == "ia3" else ""
    return adapter if cfg.method.name == "finetune" else f"{adapter}+{cfg.method.name}"


def _learner_label(cfg: DictConfig) -> list[str]:
    """What sets a run's learner apart in reports: its name (but sb3, the default), the encoder it starts from
    (the pretraining objective, frozen or tuned; or one from scratch) and a few-shot demo count (``k=``)."""
    learner = cfg.learner
    parts = [learner.name] if learner.name != "sb3" else []
    encoder = learner.get("encoder") or {}
    if encoder.get("path"):
        from agents.encoders import read_encoder_config

        objective = read_encoder_config(encoder.path)[1].get("objective", "pretrained")
        parts.append(f"{objective} encoder, {'frozen' if encoder.get('freeze', True) else 'tuned'}")
    elif encoder.get("scratch"):
        parts.append("encoder from scratch")
    lm = learner.get("lm") or {}
    if learner.name == "lm":
        body = lm.get("path") or "small LM"
        parts.append(f"{body}{'' if lm.get('pretrained', True) or not lm.get('path') else ' (random init)'}")
        if (lm.get("lora") or {}).get("r"):
            parts.append(f"LoRA r={lm.lora.r}")
        elif lm.get("freeze_lm"):
            parts.append("frozen LM")
        if learner.get("adg", {}).get("enabled"):
            parts.append("active data gathering")
    if learner.get("max_episodes"):
        parts.append(f"k={learner.max_episodes}")
    return parts


def run_sequence(cfg: DictConfig, stop_after: int | None = None) -> dict:
    """Train the sequence, fill R, and write results, summary and report into ``cfg.run_dir``; returns the
    summary. ``stop_after`` (tests) stops after that many units as if the process were killed: ``{"stopped": True}``."""
    started = time.perf_counter()
    cfg.run_dir = str(cfg.run_dir)  # resolve ${now:...} once
    torch.set_num_threads(cfg.threads)
    resolve_device(cfg.device)
    schedule = schedule_of(cfg)
    method = make_method(cfg.method)
    learner = build_learner(cfg, build_tasks(cfg))
    try:
        run_dir = prepare_run_dir(cfg)
        outputs = RunOutputs(
            job="sequence",
            config=to_container(cfg),
            summary={
                "label": " · ".join([_method_label(cfg), cfg.sequence.name, *_learner_label(cfg)]),
                "sequence": cfg.sequence.name,
                "method": _method_label(cfg),
                "adapter": cfg.adapter.name,
                "learner": cfg.learner.name,
                "seed": cfg.seed,
                "metric": cfg.sequence.metric,
            },
            description=describe(cfg, learner),
        )
        runner = Runner(
            learner,
            method,
            run_dir,
            schedule=schedule,
            logger=cfg.logger,
            outputs=outputs,
            resume=cfg.resume,
            progress=cfg.progress,
            started=started,
        )
        results = runner.run(stop_after=stop_after)
        return {"stopped": True} if results["stopped"] else results["summary"]
    finally:
        learner.close()
