"""The task-sequence runner for online continual RL with Stable-Baselines3.

It is the one place that switches tasks, calls the method's hooks, evaluates every task after
each one and fills the results matrix R. Training runs in chunks; at every chunk boundary the
runner evaluates, checkpoints, and re-derives every random seed from (seed, task, chunk), so a run
killed at any point and resumed with ``resume=true`` ends with exactly the results of an
uninterrupted run (on CPU).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import KVWriter, Logger
from stable_baselines3.common.vec_env import VecEnv

from agents.sb3 import AgentConfig, build_model, check_agent, load_model_state, model_state, rollout_size
from envs.evaluation import METRICS, TaskEvaluator, eval_vec_env, evaluate, make_vec_env
from envs.registry import check_env_spec, make_env
from envs.spec import EnvSpec, SequenceConfig, TaskConfig
from finetune.methods import Method, MethodConfig, make_method
from retain.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from retain.config import RunConfig, to_container
from retain.device import resolve_device
from retain.errors import ConfigError, UserError
from retain.metrics import continual_metrics
from retain.report import write_report
from retain.rundir import CHECKPOINTS, prepare_run_dir, write_results, write_summary
from retain.seeding import derive_seed, seed_everything
from retain.tracking import Tracker, progress_bar


@dataclass
class EvalConfig:
    """How tasks are evaluated."""

    episodes: int | None = None
    """episodes per task per evaluation; None uses the sequence's eval_episodes"""
    n_envs: int = 16
    """parallel envs per evaluation (vectorized)"""
    during: str = "all"
    """tasks evaluated at each chunk boundary, for learning curves: all | current | none"""
    workers: int = 1
    """>1: evaluate all tasks at once, their envs stepped in this many processes (slow envs such as Meta-World)"""


@dataclass
class SequenceJobConfig(RunConfig):
    """``retain sequence``: online continual RL over a task sequence."""

    sequence: SequenceConfig = field(default_factory=SequenceConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    env: EnvSpec = field(default_factory=EnvSpec)
    """the env of single-task runs (sequence=single)"""
    eval: EvalConfig = field(default_factory=EvalConfig)
    chunks_per_task: int = 10
    """evaluation + checkpoint points per task"""


@dataclass
class Task:
    name: str
    env: EnvSpec
    steps: int


class SequenceContext:
    """What methods see: the tasks, the current model, and how to build or re-target one."""

    def __init__(self, cfg: DictConfig, tasks: list[Task]):
        self.cfg = cfg
        self.tasks = tasks
        self.agent: AgentConfig = OmegaConf.to_object(cfg.agent)
        self.model: BaseAlgorithm | None = None
        self.model_task = 0
        self.global_step = 0
        self.chunk_start_timesteps = 0
        self._fresh: dict[int, dict[str, torch.Tensor]] = {}
        self._eval_envs: dict[int, VecEnv] = {}
        self._task_evaluator: TaskEvaluator | None = None
        self.seconds = {"train": 0.0, "eval": 0.0, "checkpoint": 0.0}

    def eval_env(self, task_index: int, episodes: int) -> VecEnv:
        """Evaluation envs of a task, built once and reseeded at every evaluation."""
        if task_index not in self._eval_envs:
            self._eval_envs[task_index] = eval_vec_env(self.tasks[task_index].env, episodes, self.cfg.eval.n_envs)
        return self._eval_envs[task_index]

    def task_evaluator(self, episodes: int) -> TaskEvaluator:
        """All tasks' evaluation envs in ``eval.workers`` processes, built once."""
        if self._task_evaluator is None:
            specs = [t.env for t in self.tasks]
            self._task_evaluator = TaskEvaluator(specs, episodes, self.cfg.eval.n_envs, self.cfg.eval.workers)
        return self._task_evaluator

    def close(self) -> None:
        for venv in self._eval_envs.values():
            venv.close()
        if self._task_evaluator is not None:
            self._task_evaluator.close()
        if self.model is not None and self.model.env is not None:
            self.model.env.close()

    def _train_env(self, task_index: int):
        return make_vec_env(self.tasks[task_index].env, self.agent.n_envs, self.agent.vec_env)

    def new_model(self, task_index: int) -> BaseAlgorithm:
        """A freshly initialised model on task ``task_index`` (seeded by the task, not by history)."""
        if self.model is not None and self.model.env is not None:
            self.model.env.close()
        self.model_task = task_index
        return build_model(
            self.agent, self._train_env(task_index), derive_seed(self.cfg.seed, "model", task_index), self.cfg.device
        )

    def fresh_weights(self, task_index: int) -> dict[str, torch.Tensor]:
        """The initial policy weights ``new_model(task_index)`` would have (cached; no training envs kept)."""
        if task_index not in self._fresh:
            agent = OmegaConf.to_object(self.cfg.agent)
            if "buffer_size" in agent.hyperparams:
                agent.hyperparams["buffer_size"] = 1  # only the policy is wanted, not a 1M-step buffer
            env = make_vec_env(self.tasks[task_index].env, agent.n_envs)
            model = build_model(agent, env, derive_seed(self.cfg.seed, "model", task_index), "cpu")
            self._fresh[task_index] = {k: v.detach().clone() for k, v in model.policy.state_dict().items()}
            env.close()
        return self._fresh[task_index]

    def switch_env(self, task_index: int) -> None:
        """Point the current model at task ``task_index``'s training envs."""
        if self.model_task == task_index and self.model.env is not None:
            return
        self.model.env.close()
        self.model.set_env(self._train_env(task_index), force_reset=True)
        self.model_task = task_index


def build_tasks(cfg: DictConfig) -> list[Task]:
    """The sequence's tasks, checked up front: ids exist, spaces agree, the agent fits, names are unique."""
    seq = cfg.sequence
    if seq.from_env:
        env = OmegaConf.to_object(cfg.env)
        seq_tasks = [TaskConfig(name=env.name or "task", env=env)]
    else:
        seq_tasks = [OmegaConf.to_object(t) for t in seq.tasks]
    if not seq_tasks:
        raise ConfigError(f"sequence {seq.name!r} has no tasks", "choose sequence=<name> or list sequence.tasks")
    if seq.metric not in METRICS:
        raise ConfigError(f"sequence.metric={seq.metric!r} is not supported", f"use one of {', '.join(METRICS)}")
    tasks = []
    for t in seq_tasks:
        if "/" in t.name or not t.name:
            raise ConfigError(f"task name {t.name!r} is not usable in metric names", "use a short name without '/'")
        steps = t.steps if t.steps is not None else seq.steps_per_task
        if steps <= 0:
            raise ConfigError(f"task {t.name!r} has a budget of {steps} steps", "give each task a positive budget")
        if seq.metric == "normalized_return" and (t.env.ref_min_score is None or t.env.ref_max_score is None):
            raise ConfigError(
                f"metric normalized_return needs reference scores, and task {t.name!r} has none",
                "set env.ref_min_score and env.ref_max_score (random and expert returns)",
            )
        tasks.append(Task(t.name, t.env, int(steps)))
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ConfigError(f"task names repeat in sequence {seq.name!r}: {names}", "give every task a distinct name")
    agent = OmegaConf.to_object(cfg.agent)
    resolve_device(cfg.device)
    reference = None
    for task in tasks:
        check_env_spec(task.env)
        env = make_env(task.env, monitor=False)()
        spaces = (env.observation_space, env.action_space)
        env.close()
        if reference is None:
            reference = (task.name, spaces)
            check_agent(agent, spaces[1], task.name)
            if _has_text(spaces[0]):
                raise ConfigError(
                    f"task {task.name!r} observes text ({spaces[0]}), which SB3 policies cannot take",
                    "train on it with an LM policy, or use the sequence for data collection (retain collect)",
                )
        elif spaces != reference[1]:
            raise ConfigError(
                f"task {task.name!r} has spaces {spaces[0]} / {spaces[1]} but {reference[0]!r} has {reference[1][0]} / {reference[1][1]}",
                "tasks of one sequence must share observation and action spaces",
            )
    return tasks


def _has_text(space) -> bool:
    import gymnasium as gym

    if isinstance(space, gym.spaces.Text):
        return True
    return isinstance(space, gym.spaces.Dict) and any(_has_text(s) for s in space.spaces.values())


def chunk_plan(steps: int, rollout: int, chunks: int) -> list[int]:
    """Split a task's budget into chunks of whole training iterations (learn() never stops mid-iteration)."""
    iterations = max(1, math.ceil(steps / rollout))
    chunks = max(1, min(chunks, iterations))
    base, extra = divmod(iterations, chunks)
    return [(base + (1 if c < extra else 0)) * rollout for c in range(chunks)]


class _TrackerWriter(KVWriter):
    """Forwards SB3's logger records to retain's tracker under retain's metric prefixes."""

    RENAME = {
        "rollout/ep_rew_mean": "train/ep_return_mean",
        "rollout/ep_len_mean": "train/ep_length_mean",
        "rollout/success_rate": "train/success_rate",
        "time/fps": "perf/fps",
    }

    def __init__(self, tracker: Tracker, ctx: SequenceContext):
        self.tracker, self.ctx = tracker, ctx

    def write(self, key_values: dict, key_excluded: dict, step: int = 0) -> None:
        metrics = {}
        for key, value in key_values.items():
            name = self.RENAME.get(key, key if key.startswith("train/") else None)
            if name is not None and isinstance(value, int | float | np.floating | np.integer):
                metrics[name] = float(value)
        if metrics:
            self.tracker.log(metrics, self.ctx.global_step + step - self.ctx.chunk_start_timesteps)

    def close(self) -> None:
        pass


class _ProgressCallback(BaseCallback):
    def __init__(self, bar):
        super().__init__()
        self.bar = bar

    def _on_training_start(self) -> None:
        self._last = self.model.num_timesteps

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        self.bar.update(self.model.num_timesteps - self._last)
        self._last = self.model.num_timesteps


def _evaluate_tasks(
    ctx: SequenceContext, method: Method, current: int, indices: list[int], episodes: int
) -> dict[int, dict]:
    """Evaluate tasks ``indices`` while training task ``current`` (-1: before the sequence); the
    method chooses the weights each task is evaluated with."""
    model = ctx.model
    own = {k: v.detach().clone() for k, v in model.policy.state_dict().items()}
    weights = {j: method.eval_weights(ctx, current, j) for j in indices}

    def predict(j: int, obs):
        if j >= 0:
            model.policy.load_state_dict(weights[j] if weights[j] is not None else own)
        return model.predict(obs, deterministic=True)[0]

    seeds = {j: derive_seed(ctx.cfg.seed, "eval", j) for j in indices}
    try:
        if ctx.cfg.eval.workers > 1 and len(indices) == len(ctx.tasks):
            same = all(w is None for w in weights.values())
            results = dict(
                zip(indices, ctx.task_evaluator(episodes)(predict, [seeds[j] for j in indices], same_policy=same))
            )
        else:
            results = {
                j: evaluate(
                    lambda obs, j=j: predict(j, obs),
                    ctx.tasks[j].env,
                    episodes,
                    seeds[j],
                    venv=ctx.eval_env(j, episodes),
                )
                for j in indices
            }
    finally:
        model.policy.load_state_dict(own)
    metric = ctx.cfg.sequence.metric
    return {
        j: {
            "score": r.score(metric, ctx.tasks[j].env),
            "metrics": r.as_metrics(f"eval/{ctx.tasks[j].name}", ctx.tasks[j].env),
        }
        for j, r in results.items()
    }


def _save(run_dir: Path, ctx: SequenceContext, method: Method, tracker: Tracker, position: dict, R, initial) -> None:
    weights, state, arrays = model_state(ctx.model)
    state["runner"] = {
        **position,
        "model_task": ctx.model_task,
        "global_step": ctx.global_step,
        "metrics_offset": tracker.offset(),
        "R": R,
        "initial": initial,
    }
    state["method"] = method.state_dict()
    save_checkpoint(
        run_dir / CHECKPOINTS,
        ctx.global_step,
        weights,
        state,
        meta={"job": "sequence", "config": to_container(ctx.cfg)},
        arrays=arrays,
    )


def run_sequence(cfg: DictConfig) -> dict:
    """Train the sequence, fill R, and write results, summary and report into ``cfg.run_dir``."""
    started = time.perf_counter()
    cfg.run_dir = str(cfg.run_dir)  # resolve ${now:...} once
    torch.set_num_threads(cfg.threads)
    tasks = build_tasks(cfg)
    T = len(tasks)
    episodes = cfg.eval.episodes or cfg.sequence.eval_episodes
    if cfg.eval.during not in ("all", "current", "none"):
        raise ConfigError(f"eval.during={cfg.eval.during!r}", "use all, current or none")
    run_dir = prepare_run_dir(cfg)

    ctx = SequenceContext(cfg, tasks)
    method = make_method(OmegaConf.to_object(cfg.method))
    rollout = rollout_size(ctx.agent)
    plans = [chunk_plan(t.steps, rollout, cfg.chunks_per_task) for t in tasks]
    resume = _load_resume(run_dir) if cfg.resume else None
    tracker = Tracker(
        run_dir,
        cfg.logger,
        config=to_container(cfg),
        resume_offset=resume[1]["runner"]["metrics_offset"] if resume else None,
    )
    try:
        if resume:
            weights, state, arrays, where = resume
            pos = state["runner"]
            ctx.model = ctx.new_model(pos["model_task"])
            load_model_state(ctx.model, weights, state, arrays, where)
            method.load_state_dict(state["method"])
            ctx.global_step = pos["global_step"]
            R, initial = pos["R"], pos["initial"]
            start_task, start_chunk = pos["task"], pos["chunk"]
        else:
            ctx.model = ctx.new_model(0)
            R = [[math.nan] * T for _ in range(T)]
            scores = _evaluate_tasks(ctx, method, -1, list(range(T)), episodes)
            initial = [scores[j]["score"] for j in range(T)]
            tracker.log({k: v for j in range(T) for k, v in scores[j]["metrics"].items()}, 0)
            start_task, start_chunk = 0, 0

        logger = Logger(folder=None, output_formats=[_TrackerWriter(tracker, ctx)])
        bar = progress_bar(
            sum(sum(p) for p in plans),
            cfg.progress,
            desc=f"{cfg.sequence.name}/{cfg.method.name}",
            initial=ctx.global_step,
        )
        for i in range(start_task, T):
            if start_chunk == 0:
                method.before_task(ctx, i)
            else:
                ctx.switch_env(i)
            for c in range(start_chunk, len(plans[i])):
                _train_chunk(ctx, logger, bar, i, c, plans[i][c], tracker)
                last = c == len(plans[i]) - 1
                indices = (
                    list(range(T)) if last or cfg.eval.during == "all" else [i] if cfg.eval.during == "current" else []
                )
                if indices:
                    t0 = time.perf_counter()
                    scores = _evaluate_tasks(ctx, method, i, indices, episodes)
                    logged = {k: v for j in indices for k, v in scores[j]["metrics"].items()}
                    logged["perf/eval_seconds"] = time.perf_counter() - t0
                    ctx.seconds["eval"] += logged["perf/eval_seconds"]
                    tracker.log(logged, ctx.global_step)
                    bar.set_postfix_str(f"task {tasks[i].name} {cfg.sequence.metric}={scores[i]['score']:.2f}")
                if last:
                    R[i] = [scores[j]["score"] for j in range(T)]
                    method.after_task(ctx, i)
                    tracker.log(
                        {"cl/task_index": i, "cl/average_so_far": float(np.mean(R[i][: i + 1]))}, ctx.global_step
                    )
                position = {"task": i + 1, "chunk": 0} if last else {"task": i, "chunk": c + 1}
                t0 = time.perf_counter()
                _save(run_dir, ctx, method, tracker, position, R, initial)
                ctx.seconds["checkpoint"] += time.perf_counter() - t0
            start_chunk = 0
        bar.close()

        metrics = continual_metrics(R, initial, higher_is_better=True)
        tracker.log({f"cl/{k}": v for k, v in metrics.items() if k != "per_task" and v is not None}, ctx.global_step)
        boundaries = list(np.cumsum([sum(p) for p in plans]).tolist())
        results = {
            "tasks": [t.name for t in tasks],
            "matrix": R,
            "initial": initial,
            "higher_is_better": True,
            "metric": cfg.sequence.metric,
            "metrics": metrics,
            "task_boundaries": boundaries,
        }
        write_results(run_dir, results)
        elapsed = time.perf_counter() - started
        summary = {
            "job": "sequence",
            "sequence": cfg.sequence.name,
            "method": cfg.method.name,
            "agent": ctx.agent.algo,
            "seed": cfg.seed,
            "metric": cfg.sequence.metric,
            "steps": ctx.global_step,
            "wall_time_s": elapsed,
            **{f"{k}_seconds": v for k, v in ctx.seconds.items()},
            **{k: v for k, v in metrics.items() if k != "per_task"},
        }
        write_summary(run_dir, summary)
    finally:
        tracker.close()
        ctx.close()
    write_report(run_dir)
    return summary


def _train_chunk(ctx: SequenceContext, logger: Logger, bar, i: int, c: int, steps: int, tracker: Tracker) -> None:
    model = ctx.model
    chunk_seed = derive_seed(ctx.cfg.seed, "train", i, c)
    seed_everything(chunk_seed)
    model.set_random_seed(chunk_seed)  # global RNGs, the action space, and the envs' next reset
    model._last_obs = None  # makes learn() reset the freshly seeded envs
    model.set_logger(logger)
    ctx.chunk_start_timesteps = model.num_timesteps
    t0 = time.perf_counter()
    model.learn(steps, reset_num_timesteps=False, callback=_ProgressCallback(bar), log_interval=1)
    seconds = time.perf_counter() - t0
    ctx.seconds["train"] += seconds
    ctx.global_step += model.num_timesteps - ctx.chunk_start_timesteps
    ctx.chunk_start_timesteps = model.num_timesteps
    tracker.log({"perf/train_steps_per_second": steps / max(seconds, 1e-9)}, ctx.global_step)


def _load_resume(run_dir: Path):
    path = latest_checkpoint(run_dir / CHECKPOINTS)
    if path is None:
        raise UserError(
            f"resume=true but {run_dir} has no complete checkpoint yet", "start it again without resume=true"
        )
    weights, state, _meta, arrays = load_checkpoint(path)
    if "runner" not in state:
        raise UserError(
            f"checkpoint {path} was not written by the sequence runner", "resume it with the job that wrote it"
        )
    return weights, state, arrays, str(path)
