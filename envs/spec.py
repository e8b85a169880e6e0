"""Typed specs for environments and tasks, as the ``env/`` and ``sequence/`` config groups fill them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class EnvSpec:
    """How to build one environment."""

    name: str = ""
    """short name when the env is a task on its own (sequence=single)"""
    id: str = "???"
    """a gymnasium id (CartPole-v1, FrozenLake-v1, MiniGrid-Empty-5x5-v0) or Meta-World/MT1 with kwargs.env_name=<task>-v3"""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """keyword arguments for gymnasium.make"""
    max_episode_steps: int | None = None
    """episode step limit; None keeps the registered one"""
    success_threshold: float | None = None
    """an episode counts as a success when its return reaches this; None uses info['success'] / info['is_success']"""
    pixels: int | None = None
    """render observations as pixels×pixels×3 uint8 frames (64 or 84); None keeps the env's own observation"""
    pad_obs_to: int | None = None
    """zero-pad flat observations to this many dims (tasks of a sequence then share a space, as in L2M)"""
    pad_action_to: int | None = None
    """accept actions of this many dims and pass the env the dims it has"""
    frame_stack: int | None = None
    """stack this many consecutive observations, the oldest first, padded at reset with the first one
    (gymnasium's ``FrameStackObservation``): encoders with a history read them"""
    text_tokens: bool = False
    """encode text observations (BabyAI missions) as hashed word ids (envs.text), so vectorized envs and
    networks can take them; offline learners set it for their evaluation envs"""
    text_bytes: bool = False
    """encode text observations as UTF-8 bytes (envs.text.TextBytes): lossless, for policies that tokenize the
    text themselves (the LM policy's evaluation envs)"""
    action_history: int | None = None
    """add ``past_actions``, the last this many actions (-1 before the episode's first), to Dict observations
    (envs.registry.ActionHistory): the LM policy's action-history input"""
    one_hot_task: list[int] | None = None
    """[index, count]: append the one-hot id of task ``index`` of ``count`` to (flat Box) observations, as
    Continual World tells its networks the task (the SB3 learner sets it with agent.task_id)"""
    end_at_success: bool = False
    """end an episode at its first success (``info['success']``/``info['is_success']``): scored by success, an
    evaluation then steps less; the retain sequence job sets it for evaluation envs with eval.end_at_success"""
    ref_min_score: float | None = None
    """return of a random policy (D4RL's normalization; envs.d4rl.REF_SCORES has MuJoCo's)"""
    ref_max_score: float | None = None
    """return of an expert policy"""


@dataclass
class TaskConfig:
    """A task of a sequence: a name, the env that defines it, and its training budget."""

    name: str = "???"
    """short name used in metrics (eval/<name>/...) and reports"""
    env: EnvSpec = field(default_factory=EnvSpec)
    steps: int | None = None
    """environment steps to train on this task; None uses the sequence's steps_per_task"""
    dataset: str | None = None
    """offline learners: the dataset to train on (a dataset id, a dataset folder or a D4RL-layout .hdf5 file);
    None: the one `retain collect sequence=<sequence>` writes for this task"""


@dataclass
class SequenceConfig:
    """An ordered list of tasks trained one after another."""

    name: str = "???"
    """the sequence's name"""
    tasks: list[TaskConfig] = field(default_factory=list)
    """the tasks, in training order"""
    from_env: bool = False
    """a one-task sequence made of the job's `env` (sequence=single)"""
    steps_per_task: int = 100_000
    """default training budget of each task (environment steps)"""
    metric: str = "success"
    """the score filled into the results matrix: success | return | normalized_return (needs ref scores per env)"""
    eval_episodes: int = 10
    """episodes per task per evaluation"""


def task_configs(cfg: Any) -> list[TaskConfig]:
    """The typed tasks of a job config: ``cfg.sequence.tasks``, or for ``sequence=single`` the one task of
    ``cfg.env`` (named after it). Not checked here: each job checks what it needs."""
    from omegaconf import OmegaConf

    if cfg.sequence.from_env:
        env = OmegaConf.to_object(cfg.env)
        return [TaskConfig(name=env.name or "task", env=env)]
    return [OmegaConf.to_object(t) for t in cfg.sequence.tasks]
