"""``retain pretrain objective=<name>``: pretrain a shared module once on multi-task offline data and write it
as a shareable folder (safetensors + JSON config) that the tuning jobs load.

Objectives: ``dt`` — the multi-domain Decision Transformer of Learning-to-Modulate (``pretrain/dt.py``);
``idm``, ``bc``, ``fd``, ``fd_contrastive``, ``contrastive`` — an observation encoder by inverse dynamics and
its rivals (Brandfonbrener et al. 2023; ``pretrain/objectives/``, trained by ``pretrain/encoder_learner.py``).
The job checks everything before it writes, trains on the continual runner (checkpoints, exact resume,
evaluation of every pretraining task, report) and exports ``<run_dir>/model/``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig

from envs.spec import EnvSpec, SequenceConfig
from retain.config import RunConfig
from retain.errors import ConfigError

OBJECTIVES = {
    "dt": "pretrain.dt:run_dt_pretraining",
    **{
        name: "pretrain.encoder_job:run_encoder_pretraining"
        for name in ("idm", "bc", "fd", "fd_contrastive", "contrastive")
    },
}


@dataclass
class PretrainEvalConfig:
    episodes: int | None = None
    """episodes per pretraining task per evaluation (null: the sequence's eval_episodes)"""
    n_envs: int = 16
    during: str = "all"
    """pretraining tasks scored at each evaluation point: all | none (they are always scored at the end)"""
    workers: int = 1
    end_at_success: bool = True
    """evaluation episodes end at their first success (a success rate in fewer steps)"""


@dataclass
class PretrainJobConfig(RunConfig):
    """``retain pretrain``: one module pretrained on many tasks."""

    objective: dict[str, Any] = field(default_factory=lambda: {"name": "dt"})
    """what is pretrained and how (configs/objective/)"""
    sequence: SequenceConfig = field(default_factory=SequenceConfig)
    """the pretraining tasks (their datasets come from `retain collect sequence=<same>`)"""
    env: EnvSpec = field(default_factory=EnvSpec)
    """the task of sequence=single"""
    agent: dict[str, Any] = field(default_factory=dict)
    """unused (task lists may name an SB3 agent for online runs)"""
    eval: PretrainEvalConfig = field(default_factory=PretrainEvalConfig)
    chunks_per_task: int = 5
    """evaluation + checkpoint points over the pretraining"""
    parallel: str = "none"
    """none | ddp: data parallelism under `torchrun --nproc_per_node=N retain pretrain ...` (each process trains
    on its rows of every batch; the same command runs in one process without torchrun)"""


def run_pretrain(cfg: DictConfig, stop_after: int | None = None) -> dict:
    """Run the objective ``cfg.objective.name``; returns the job's summary."""
    import importlib

    name = cfg.objective.get("name")
    if name not in OBJECTIVES:
        raise ConfigError(f"unknown objective {name!r}", f"use objective={' | '.join(OBJECTIVES)}")
    module, function = OBJECTIVES[name].split(":")
    return getattr(importlib.import_module(module), function)(cfg, stop_after)
