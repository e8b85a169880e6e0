"""``retain pretrain objective=idm|bc|fd|fd_contrastive|contrastive``: an observation encoder pretrained on
multi-task offline data (``pretrain.encoder_learner``), written to ``<run_dir>/model/`` (safetensors + JSON
config), which the offline learner (``learner.encoder.path=``), the SB3 learner and ``retain label`` load.

Everything is checked before the run directory is written: the objective's config, every task's dataset
(found, one observation frame and action space across tasks) and the encoder's architecture.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from envs.spec import TaskConfig, task_configs
from pretrain.encoder_learner import EncoderPretrainConfig, EncoderPretrainLearner
from retain.config import to_container
from retain.errors import ConfigError
from retain.methods import make_method
from retain.rundir import prepare_run_dir
from retain.runner import Runner, RunOutputs, Schedule

MODEL_DIR = "model"


def objective_config(cfg: DictConfig) -> EncoderPretrainConfig:
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(EncoderPretrainConfig), cfg.objective))
    except OmegaConfBaseException as e:
        raise ConfigError(
            f"objective {cfg.objective.get('name')}: {str(e).splitlines()[0]}",
            "see configs/objective/idm.yaml for the keys representation objectives take",
        ) from e


def pretraining_tasks(cfg: DictConfig) -> list[TaskConfig]:
    """The sequence's tasks (or the one task of ``cfg.env`` for sequence=single), names checked."""
    tasks = task_configs(cfg)
    names = [t.name for t in tasks]
    if not tasks or len(set(names)) != len(names) or any("/" in n or not n for n in names):
        raise ConfigError(f"pretraining tasks {names}", "give the sequence distinct task names without '/'")
    return tasks


def run_encoder_pretraining(cfg: DictConfig, stop_after: int | None = None) -> dict:
    started = time.perf_counter()
    cfg.run_dir = str(cfg.run_dir)
    torch.set_num_threads(cfg.threads)
    if cfg.parallel != "none":
        raise ConfigError(f"parallel={cfg.parallel} for objective={cfg.objective.name}", "use parallel=none")
    if cfg.eval.during not in ("all", "none"):
        raise ConfigError(f"eval.during={cfg.eval.during!r}", "use all or none (pretraining has one row)")
    schedule = Schedule(during=cfg.eval.during, chunks_per_task=cfg.chunks_per_task)
    schedule.check()
    objective = objective_config(cfg)
    sequence = None if cfg.sequence.from_env else cfg.sequence.name
    learner = EncoderPretrainLearner(pretraining_tasks(cfg), objective, cfg.seed, cfg.device, sequence)
    try:
        run_dir = prepare_run_dir(cfg)
        outputs = RunOutputs(
            job="pretrain",
            config=to_container(cfg),
            summary={
                "label": f"{objective.name} · {cfg.sequence.name}",
                "objective": objective.name,
                "sequence": cfg.sequence.name,
                "seed": cfg.seed,
                "metric": "loss",
            },
            description=[f"- objective `{objective.name}` on `{cfg.sequence.name}`", *learner.describe()],
        )
        runner = Runner(
            learner,
            make_method(OmegaConf.create({"name": "finetune"})),
            Path(run_dir),
            schedule=schedule,
            logger=cfg.logger,
            outputs=outputs,
            resume=cfg.resume,
            progress=cfg.progress,
            started=started,
        )
        results = runner.run(stop_after=stop_after)
        if results["stopped"]:
            return {"stopped": True}
        learner.export(Path(run_dir) / MODEL_DIR)
        return {**results["summary"], "model": str(Path(run_dir) / MODEL_DIR)}
    finally:
        learner.close()
