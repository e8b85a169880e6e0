"""``retain pretrain objective=dt``: the multi-domain Decision Transformer of Learning-to-Modulate, trained on
every pretraining task's episodes at once (expert plus noisier data, so return conditioning has returns to
tell apart), then written to ``<run_dir>/model/`` (``model.safetensors`` + ``config.json`` with every task's
target return), which ``retain sequence learner=dt learner.model.path=...`` loads.

Pretraining is the Decision Transformer learner over all tasks as one row of the continual runner: every
batch draws its rows' tasks uniformly, every task is scored at the evaluation points, and the runner gives
checkpoints, exact resume, ``results.json`` (a 1 x K matrix: success per pretraining task) and the report.
``parallel=ddp`` under ``torchrun --nproc_per_node=N`` trains with DDP: every process draws the same global
batch and trains on its rows (``rank::N``); the loss averages per window, so the averaged gradient is the
one-process gradient of the whole batch. Every process evaluates (the same envs, the same scores); the main
one writes.
(So this objective imports the learner from ``finetune/``: tuning and pretraining share one training loop.)
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from retain.config import to_container
from retain.device import resolve_device
from retain.errors import ConfigError
from retain.methods import make_method
from retain.rundir import prepare_run_dir
from retain.runner import Runner, RunOutputs, Schedule
from retain.training.distributed import init_parallel, shutdown

MODEL_DIR = "model"


def _learner_config(cfg: DictConfig):
    from omegaconf.errors import OmegaConfBaseException

    from finetune.dt_learner import DtLearnerConfig

    raw = OmegaConf.to_container(cfg.objective, resolve=True)
    raw.pop("name", None)
    raw["updates_per_task"] = raw.pop("updates", DtLearnerConfig.updates_per_task)
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(DtLearnerConfig), raw))
    except OmegaConfBaseException as e:
        raise ConfigError(
            f"objective dt: {str(e).splitlines()[0]}", "see configs/objective/dt.yaml for its keys"
        ) from e


def run_dt_pretraining(cfg: DictConfig, stop_after: int | None = None) -> dict:
    from finetune.env_tasks import EvalSettings, sequence_tasks

    started = time.perf_counter()
    cfg.run_dir = str(cfg.run_dir)
    torch.set_num_threads(cfg.threads)
    if cfg.eval.during not in ("all", "none"):
        raise ConfigError(f"eval.during={cfg.eval.during!r}", "use all or none (pretraining has one row)")
    if cfg.parallel not in ("none", "ddp"):
        raise ConfigError(f"parallel={cfg.parallel!r} for objective=dt", "use parallel=ddp (or none)")
    schedule = Schedule(during=cfg.eval.during, chunks_per_task=cfg.chunks_per_task)
    schedule.check()
    tasks = sequence_tasks(cfg)
    learner_cfg = _learner_config(cfg)
    evaluation = EvalSettings(
        cfg.eval.episodes or cfg.sequence.eval_episodes, cfg.eval.n_envs, cfg.eval.workers, cfg.eval.end_at_success
    )
    parallel = init_parallel(cfg.parallel, resolve_device(cfg.device))
    try:
        return _pretrain(cfg, tasks, learner_cfg, evaluation, schedule, parallel, started, stop_after)
    finally:
        shutdown()


def _pretrain(cfg, tasks, learner_cfg, evaluation, schedule, parallel, started: float, stop_after) -> dict:
    from finetune.adapters import AdapterConfig
    from finetune.dt_learner import DtPretrainLearner

    learner = DtPretrainLearner(
        tasks,
        learner_cfg,
        AdapterConfig(name="full"),
        evaluation,
        cfg.sequence.metric,
        cfg.seed,
        cfg.device,
        cfg.sequence.name,
        parallel=parallel,
    )
    try:
        if parallel.is_main:  # every process has checked its config and data; one writes the run directory
            prepare_run_dir(cfg)
        parallel.barrier()
        run_dir = Path(cfg.run_dir)
        outputs = RunOutputs(
            job="pretrain",
            config=to_container(cfg),
            summary={
                "label": f"dt · {cfg.sequence.name}",
                "objective": "dt",
                "sequence": cfg.sequence.name,
                "seed": cfg.seed,
                "metric": cfg.sequence.metric,
            },
            description=[f"- objective `dt` on `{cfg.sequence.name}` ({len(tasks)} tasks)", *learner.describe()],
        )
        runner = Runner(
            learner,
            make_method(OmegaConf.create({"name": "finetune"})),
            run_dir,
            schedule=schedule,
            logger=cfg.logger,
            outputs=outputs,
            resume=cfg.resume,
            progress=cfg.progress and parallel.is_main,
            parallel=parallel,
            started=started,
        )
        results = runner.run(stop_after=stop_after)
        if results["stopped"]:
            return {"stopped": True}
        if not parallel.is_main:
            return {"job": "pretrain", "steps": results["global_step"]}
        learner.export(run_dir / MODEL_DIR)
        return {**results["summary"], "model": str(run_dir / MODEL_DIR)}
    finally:
        learner.close()
