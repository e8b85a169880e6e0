"""``retain collect``: roll experts out on one task or a whole task list and write Minari datasets.

Episodes are split over ``workers`` processes; episode k of task t is seeded from (seed, t, k), so a
dataset depends only on the config, not on how many workers made it. Each task becomes one
dataset (``dataset_id_for``) under RETAIN_DATA with D4RL-style reference scores
(random policy = min, noise-free expert = max), the env spec and the expert's identity.
``check_collect_config`` checks every value and path of the config before any work starts.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from omegaconf import DictConfig

from envs.datasets import dataset_path, episode_buffer, sequence_dataset_id, write_action_free, write_dataset
from envs.experts import NoisyExpert, RandomExpert, Sb3Expert, expert_kind, make_expert, train_sb3_expert
from envs.registry import check_env_spec, make_env
from envs.spec import EnvSpec, SequenceConfig, TaskConfig, task_configs
from retain.config import RunConfig, to_container
from retain.errors import ConfigError, DatasetError
from retain.rundir import prepare_run_dir, write_summary
from retain.seeding import derive_seed
from retain.tracking import Tracker, progress_bar


@dataclass
class Sb3ExpertConfig:
    """An SB3 agent trained on the task (or loaded) to serve as the expert."""

    path: str | None = None
    """a folder with policy.safetensors + expert.json from an earlier collect run; None trains one"""
    algo: str = "PPO"
    """SB3 algorithm to train"""
    steps: int = 50_000
    """training steps"""
    hyperparams: dict[str, Any] = field(default_factory=dict)
    """algorithm keyword arguments"""
    policy_kwargs: dict[str, Any] = field(default_factory=dict)
    """policy keyword arguments"""


@dataclass
class ExpertConfig:
    """Who acts, and how much noise is mixed in (expert / medium / random mixes, as D4RL)."""

    kind: str = "auto"
    """auto (the family's scripted expert: metaworld, babyai_bot, pd; else sb3) | metaworld | babyai_bot | pd | sb3 | random"""
    sigma: float = 0.0
    """Gaussian action noise (continuous actions), clipped to the action space"""
    epsilon: float = 0.0
    """probability of a uniformly random action"""
    sb3: Sb3ExpertConfig = field(default_factory=Sb3ExpertConfig)


@dataclass
class DatasetConfig:
    """Where and how datasets are written."""

    namespace: str = "retain"
    """dataset ids are <namespace>/<task>/<quality>-v0"""
    quality: str = "expert"
    """name of the data quality (expert, medium, random, ...)"""
    overwrite: bool = False
    """replace an existing dataset of the same id"""
    action_free: bool = False
    """also write observations only (observations_only.hdf5 next to the dataset), for VPT-style pseudo-labelling"""
    ref_episodes: int = 10
    """episodes of a random policy and of the noise-free expert that set ref_min_score / ref_max_score"""


@dataclass
class CollectJobConfig(RunConfig):
    """``retain collect``: expert rollouts → Minari datasets."""

    sequence: SequenceConfig = field(default_factory=SequenceConfig)
    env: EnvSpec = field(default_factory=EnvSpec)
    """the task of sequence=single"""
    expert: ExpertConfig = field(default_factory=ExpertConfig)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    agent: dict[str, Any] = field(default_factory=dict)
    """not used by collect: sequences name the agent that trains on them"""
    episodes: int = 50
    """episodes per task"""
    workers: int = 2
    """collection processes (1: in this process)"""
    max_episode_steps: int | None = None
    """overrides every task's episode limit (Meta-World's scripted push-back needs 500 steps, not CW's 200)"""


def rollout(env, expert, seed: int, success_threshold: float | None = None) -> dict:
    """One episode: T+1 observations, T actions/rewards/flags, and per-step success: the env's
    ``info["success"]``, or (envs that only pay on success, e.g. BabyAI) the last step once the
    return reaches ``success_threshold``."""
    if hasattr(expert, "seed_episode"):
        expert.seed_episode(seed)
    obs, info = env.reset(seed=seed)
    expert.reset(env, obs, info)
    observations, actions, rewards, terms, truncs, successes = [obs], [], [], [], [], []
    done = False
    while not done:
        action = expert.act(obs, info)
        obs, reward, terminated, truncated, info = env.step(action)
        observations.append(obs)
        actions.append(action)
        rewards.append(float(reward))
        terms.append(bool(terminated))
        truncs.append(bool(truncated))
        successes.append(bool(info.get("success", info.get("is_success", False))))
        done = terminated or truncated
    if success_threshold is not None and sum(rewards) >= success_threshold:
        successes[-1] = True
    return {
        "seed": seed,
        "observations": observations,
        "actions": actions,
        "rewards": rewards,
        "terminations": terms,
        "truncations": truncs,
        "success": successes,
    }


def _expert(spec: EnvSpec, observation_space, action_space, expert_cfg: dict, sb3_path: str | None, seed: int):
    expert = make_expert(expert_cfg["kind"], spec.id, spec.kwargs, observation_space, action_space, seed, sb3_path)
    if expert_cfg["sigma"] or expert_cfg["epsilon"]:
        expert = NoisyExpert(expert, action_space, expert_cfg["sigma"], expert_cfg["epsilon"], seed=seed)
    return expert


_WORKER: dict[str, Any] = {}


def _init_worker(spec: EnvSpec, expert_cfg: dict, sb3_path: str | None, seed: int) -> None:
    """Build the env and expert once per worker process (Meta-World envs take ~0.5 s to build)."""
    import torch

    torch.set_num_threads(1)
    env = make_env(spec, monitor=False)()
    _WORKER.update(
        env=env,
        threshold=spec.success_threshold,
        expert=_expert(spec, env.observation_space, env.action_space, expert_cfg, sb3_path, seed),
    )


def collect_episodes(seeds: list[int]) -> list[dict]:
    """Roll this worker's (noisy) expert out once per seed."""
    return [rollout(_WORKER["env"], _WORKER["expert"], s, _WORKER["threshold"]) for s in seeds]


def _mean_return(spec: EnvSpec, expert, seeds: list[int]) -> float:
    env = make_env(spec, monitor=False)()
    value = float(np.mean([sum(rollout(env, expert, s)["rewards"]) for s in seeds]))
    env.close()
    return value


def _tasks(cfg: DictConfig) -> list[TaskConfig]:
    tasks = task_configs(cfg)
    if not tasks:
        raise ConfigError(
            f"sequence {cfg.sequence.name!r} has no tasks", "choose sequence=<name> or env=<name> with sequence=single"
        )
    if cfg.max_episode_steps is not None:
        for task in tasks:
            task.env.max_episode_steps = int(cfg.max_episode_steps)
    return tasks


def dataset_id_for(cfg: DictConfig, task: str) -> str:
    """``<namespace>/<env name>/<quality>-v0`` for one env, ``<namespace>/<sequence>/<task>/<quality>-v0`` for a
    task list (``envs.datasets.sequence_dataset_id``, which offline learners use to find these datasets)."""
    sequence = None if cfg.sequence.from_env else str(cfg.sequence.name)
    return sequence_dataset_id(str(cfg.dataset.namespace), sequence, task, str(cfg.dataset.quality))


EXPERT_KINDS = ("auto", "metaworld", "babyai_bot", "pd", "sb3", "random")
SB3_ALGOS = ("PPO", "A2C", "DQN", "SAC", "TD3")
SCRIPTED = {"metaworld": "Meta-World/MT1 tasks", "babyai_bot": "BabyAI-* levels", "pd": "the point mass"}


def _check_sb3_folder(path: str) -> Path:
    """The folder ``expert.sb3.path`` names, checked to hold what ``Sb3Expert`` loads; else ConfigError."""
    folder = Path(path).expanduser()
    fix = "pass the experts/<task> folder of an earlier `retain collect expert.kind=sb3` run, or drop expert.sb3.path to train one"
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise ConfigError(f"expert.sb3.path={path} {what}", fix)
    for name in ("policy.safetensors", "expert.json"):
        if not (folder / name).is_file():
            raise ConfigError(f"expert.sb3.path={path} holds no {name}", fix)
    try:
        meta = json.loads((folder / "expert.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"expert.sb3.path={path}: expert.json is not valid JSON ({e})", fix) from e
    missing = [k for k in ("algo", "policy", "policy_kwargs", "steps") if not isinstance(meta, dict) or k not in meta]
    if missing:
        raise ConfigError(f"expert.sb3.path={path}: expert.json lacks {', '.join(missing)}", fix)
    if meta["algo"] not in SB3_ALGOS:
        raise ConfigError(f"expert.sb3.path={path}: expert.json names the unknown algorithm {meta['algo']!r}", fix)
    return folder


def check_collect_config(cfg: DictConfig, tasks: list[TaskConfig]) -> dict[str, tuple]:
    """Check every value and path the config names before any work starts (ConfigError / DatasetError,
    one line each): counts and noise levels, the expert kind for each task's family, the SB3 expert folder
    (loaded against each task's spaces), the dataset ids (valid, distinct, not there yet unless
    ``dataset.overwrite``) and the env ids. Returns each task's (observation_space, action_space)."""
    checks = [
        (cfg.episodes >= 1, f"episodes={cfg.episodes}", "collect at least one episode per task (episodes>=1)"),
        (cfg.workers >= 1, f"workers={cfg.workers}", "use workers>=1 (1 collects in this process)"),
        (
            math.isfinite(cfg.expert.sigma) and cfg.expert.sigma >= 0,
            f"expert.sigma={cfg.expert.sigma}",
            "the action noise is a standard deviation: use expert.sigma>=0",
        ),
        (
            0 <= cfg.expert.epsilon <= 1,
            f"expert.epsilon={cfg.expert.epsilon}",
            "epsilon is the probability of a random action: use 0<=expert.epsilon<=1",
        ),
        (
            cfg.dataset.ref_episodes >= 1,
            f"dataset.ref_episodes={cfg.dataset.ref_episodes}",
            "the reference scores need at least one episode each (dataset.ref_episodes>=1)",
        ),
        (
            cfg.max_episode_steps is None or cfg.max_episode_steps >= 1,
            f"max_episode_steps={cfg.max_episode_steps}",
            "use max_episode_steps>=1, or null to keep each task's limit",
        ),
        (
            cfg.expert.kind in EXPERT_KINDS,
            f"unknown expert.kind={cfg.expert.kind!r}",
            f"use one of {', '.join(EXPERT_KINDS)}",
        ),
    ]
    for ok, problem, fix in checks:
        if not ok:
            raise ConfigError(problem, fix)
    sb3 = cfg.expert.sb3
    sb3_folder = _check_sb3_folder(str(sb3.path)) if sb3.path else None
    kinds = [expert_kind(t.env.id) if cfg.expert.kind == "auto" else cfg.expert.kind for t in tasks]
    if "sb3" in kinds and sb3_folder is None:
        if sb3.algo not in SB3_ALGOS:
            raise ConfigError(f"unknown expert.sb3.algo={sb3.algo!r}", f"use one of {', '.join(SB3_ALGOS)}")
        if sb3.steps < 1:
            raise ConfigError(f"expert.sb3.steps={sb3.steps}", "train the SB3 expert for at least one step")

    ids: dict[str, str] = {}
    for task, kind in zip(tasks, kinds, strict=True):
        if kind in SCRIPTED and expert_kind(task.env.id) != kind:
            raise ConfigError(
                f"expert.kind={kind} drives {SCRIPTED[kind]} only, not task {task.name} ({task.env.id})",
                "use expert.kind=auto (the family's scripted expert, else sb3), sb3 or random",
            )
        dataset_id = dataset_id_for(cfg, task.name)
        if dataset_id in ids:
            raise ConfigError(
                f"tasks {ids[dataset_id]!r} and {task.name!r} would both write {dataset_id}",
                "give the tasks distinct names",
            )
        ids[dataset_id] = task.name
        if not cfg.dataset.overwrite and (existing := dataset_path(dataset_id)) is not None:
            raise DatasetError(
                f"dataset {dataset_id} already exists at {existing}",
                "pass dataset.overwrite=true or choose another dataset name (dataset.quality=...)",
            )
        check_env_spec(task.env)

    spaces: dict[str, tuple] = {}
    for task, kind in zip(tasks, kinds, strict=True):
        probe = make_env(task.env, monitor=False)()
        observation_space, action_space = probe.observation_space, probe.action_space
        probe.close()
        spaces[task.name] = (observation_space, action_space)
        if cfg.expert.sigma > 0 and not isinstance(action_space, gym.spaces.Box):
            raise ConfigError(
                f"expert.sigma={cfg.expert.sigma} needs continuous actions, but task {task.name} has {action_space}",
                "use expert.epsilon for discrete actions (random actions with that probability)",
            )
        if cfg.dataset.action_free and isinstance(observation_space, gym.spaces.Dict):
            raise ConfigError(
                f"task {task.name} has dict observations ({', '.join(observation_space.spaces)})",
                "action-free export takes array observations (state or pixels); drop dataset.action_free=true",
            )
        if kind == "sb3" and sb3_folder is not None:
            try:
                Sb3Expert(sb3_folder, observation_space, action_space)
            except Exception as e:  # a policy of other spaces, a corrupt safetensors file, bad policy_kwargs
                first = " ".join(str(e).split()) or type(e).__name__
                raise ConfigError(
                    f"expert.sb3.path={sb3.path} does not load as an expert for task {task.name} "
                    f"({observation_space} → {action_space}): {first[:300]}",
                    "pass an expert trained on this task, or drop expert.sb3.path to train one",
                ) from e
    return spaces


def _chunks(items: list, n: int) -> list[list]:
    size = max(1, int(np.ceil(len(items) / max(n, 1))))
    return [items[i : i + size] for i in range(0, len(items), size)]


def run_collect(cfg: DictConfig) -> dict:
    """Collect ``episodes`` per task with the configured expert and write one Minari dataset per task."""
    import torch

    started = time.perf_counter()
    torch.set_num_threads(cfg.threads)
    cfg.run_dir = str(cfg.run_dir)
    tasks = _tasks(cfg)
    spaces = check_collect_config(cfg, tasks)  # everything the config names, before the run directory exists
    expert_cfg = to_container(cfg.expert)
    run_dir = prepare_run_dir(cfg)
    summary: dict[str, Any] = {"job": "collect", "datasets": {}}
    with Tracker(run_dir, cfg.logger, config=to_container(cfg)) as tracker:
        bar = progress_bar(cfg.episodes * len(tasks), cfg.progress, desc="collect", unit="episode")
        for t, task in enumerate(tasks):
            summary["datasets"][task.name] = _collect_task(
                cfg, t, task, spaces[task.name], expert_cfg, run_dir, bar, tracker
            )
        bar.close()
    summary["wall_time_s"] = time.perf_counter() - started
    write_summary(run_dir, summary)
    for name, info in summary["datasets"].items():
        print(
            f"{name}: {info['id']}  {info['episodes']} episodes, {info['steps']} steps, return {info['return_mean']:.2f}, success {info['success_rate']:.2f}"
        )
    return summary


def _collect_task(
    cfg: DictConfig, t: int, task: TaskConfig, spaces: tuple, expert_cfg: dict, run_dir: Path, bar, tracker: Tracker
) -> dict:
    spec = task.env
    observation_space, action_space = spaces
    kind = expert_kind(spec.id) if expert_cfg["kind"] == "auto" else expert_cfg["kind"]
    sb3_path = expert_cfg["sb3"]["path"]
    if kind == "sb3" and not sb3_path:
        sb3 = expert_cfg["sb3"]
        sb3_path = str(
            train_sb3_expert(
                make_env(spec),
                run_dir / "experts" / task.name,
                sb3["algo"],
                sb3["steps"],
                derive_seed(cfg.seed, "expert", t),
                sb3["hyperparams"],
                sb3["policy_kwargs"],
            )
        )
    expert_cfg = {**expert_cfg, "kind": kind}

    seeds = [derive_seed(cfg.seed, "collect", t, k) for k in range(cfg.episodes)]
    episodes: dict[int, dict] = {}
    init = (spec, expert_cfg, sb3_path, derive_seed(cfg.seed, "expert-noise", t))
    inherit = cfg.workers == 1 or not spec.pixels
    if inherit:
        _init_worker(*init)  # the env is built before the clock starts, as a raw loop's is
    t0 = time.perf_counter()  # steps_per_second times the rollouts (and, with workers, their start-up)
    if cfg.workers > 1:
        # fork: workers start in milliseconds with the parent's imports (the parent runs one torch thread),
        # and inherit a copy of an env built here once, unless it renders (GL contexts do not survive a fork)
        with ProcessPoolExecutor(
            max_workers=cfg.workers,
            mp_context=mp.get_context("fork"),
            initializer=None if inherit else _init_worker,
            initargs=() if inherit else init,
        ) as pool:
            futures = {pool.submit(collect_episodes, chunk): chunk for chunk in _chunks(seeds, cfg.workers * 8)}
            for future in as_completed(futures):
                for episode in future.result():
                    episodes[episode["seed"]] = episode
                bar.update(len(futures[future]))
        if inherit:
            _WORKER.pop("env").close()
    else:
        for s in seeds:
            episodes[s] = rollout(_WORKER["env"], _WORKER["expert"], s, _WORKER["threshold"])
            bar.update(1)
        _WORKER.pop("env").close()
    ordered = [episodes[s] for s in seeds]  # the dataset's order never depends on worker timing
    seconds = time.perf_counter() - t0

    ref_seeds = [derive_seed(cfg.seed, "reference", t, k) for k in range(cfg.dataset.ref_episodes)]
    ref_min = _mean_return(spec, RandomExpert(action_space, seed=ref_seeds[0]), ref_seeds)
    ref_max = _mean_return(
        spec,
        make_expert(kind, spec.id, spec.kwargs, observation_space, action_space, ref_seeds[0], sb3_path),
        ref_seeds,
    )

    buffers = [
        episode_buffer(
            k,
            e["seed"],
            e["observations"],
            e["actions"],
            e["rewards"],
            e["terminations"],
            e["truncations"],
            {"success": e["success"]},
        )
        for k, e in enumerate(ordered)
    ]
    dataset_id = dataset_id_for(cfg, task.name)
    expert_name = _expert(spec, observation_space, action_space, expert_cfg, sb3_path, 0).name
    path = write_dataset(
        dataset_id,
        buffers,
        observation_space=observation_space,
        action_space=action_space,
        env_spec=spec,
        expert=expert_name,
        ref_min_score=ref_min,
        ref_max_score=ref_max,
        overwrite=cfg.dataset.overwrite,
        extra={
            "task": task.name,
            "sigma": cfg.expert.sigma,
            "epsilon": cfg.expert.epsilon,
            "seed": cfg.seed,
            "episodes": cfg.episodes,
        },
    )
    if cfg.dataset.action_free:
        if isinstance(ordered[0]["observations"][0], dict):
            raise ConfigError(
                f"task {task.name} has dict observations",
                "action-free export takes array observations (state or pixels)",
            )
        write_action_free(
            path / "observations_only.hdf5",
            [np.stack(e["observations"]) for e in ordered],
            {"dataset_id": dataset_id, "expert": expert_name},
        )
    steps = sum(len(e["rewards"]) for e in ordered)
    returns = [sum(e["rewards"]) for e in ordered]
    success = float(np.mean([any(e["success"]) for e in ordered]))
    tracker.log(
        {
            f"perf/{task.name}/steps_per_second": steps / seconds,
            f"eval/{task.name}/return": float(np.mean(returns)),
            f"eval/{task.name}/success": success,
        },
        step=t,
    )
    return {
        "id": dataset_id,
        "path": str(path),
        "episodes": len(ordered),
        "steps": steps,
        "return_mean": float(np.mean(returns)),
        "success_rate": success,
        "ref_min_score": ref_min,
        "ref_max_score": ref_max,
        "steps_per_second": steps / seconds,
        "expert": expert_name,
    }
