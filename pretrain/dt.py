"""``retain pretrain objective=dt``: the multi-domain Decision Transformer of Learning-to-Modulate, trained on
every pretraining task's episodes at once (expert plus noisier data, so return conditioning has returns to
tell apart), then written to ``<run_dir>/model/`` (``model.safetensors`` + ``config.json`` with every task's
target return), which ``retain sequence learner=dt learner.model.path=...`` loads.

Pretraining is the Decision Transformer learner over all tasks as one row of the continual runner: every
batch draws its rows' tasks uniformly, every task is scored at the evaluation points, and the runner gives
checkpoints, exact resume, ``results.json`` (a 1 x K matrix: success per pretraining task) and the report.
(So this objective imports the learner from ``finetune/``: tuning and pretraining share one training loop.)
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from retain.config import to_container
from retain.errors import ConfigError
from retain.methods import make_method
from retain.rundir import prepare_run_dir
from retain.runner import Runner, RunOutputs, Schedule

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
    from finetune.adapters import AdapterConfig
    from finetune.dt_learner import DtPretrainLearner
    from finetune.env_tasks import EvalSettings, sequence_tasks

    started = time.perf_counter()
    cfg.run_dir = str(cfg.run_dir)
    torch.set_num_threads(cfg.threads)
    if cfg.eval.during not in ("all", "none"):
        raise ConfigError(f"eval.during={cfg.eval.during!r}", "use all or none (pretraining has one row)")
    schedule = Schedule(during=cfg.eval.during, chunks_per_task=cfg.chunks_per_task)
    schedule.check()
    tasks = sequence_tasks(cfg)
    learner_cfg = _learner_config(cfg)
    evaluation = EvalSettings(
        cfg.eval.episodes or cfg.sequence.eval_episodes, cfg.eval.n_envs, cfg.eval.workers, cfg.eval.end_at_success
    )
    learner = DtPretrainLearner(
        tasks,
        learner_cfg,
        AdapterConfig(name="full"),
        evaluation,
        cfg.sequence.metric,
        cfg.seed,
        cfg.device,
        cfg.sequence.name,
    )
    try:
        run_dir = prepare_run_dir(cfg)
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
