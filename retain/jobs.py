"""The job table: every ``retain <job>``, the function that runs it and the schema typing its config.

Jobs are imported lazily by name, so ``retain --help`` stays fast and ``retain/`` depends on the feature
packages only through this table.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf


@dataclass(frozen=True)
class Job:
    target: str
    """module:function running the job"""
    schema: str | None
    """module:dataclass typing its config (None: the job parses its own arguments)"""
    help: str


JOBS: dict[str, Job] = {
    "demo": Job(
        "finetune.demo:run_demo",
        "finetune.demo:DemoJobConfig",
        "the default sequence with `finetune` and `reset`, compared in one report",
    ),
    "sequence": Job(
        "finetune.sequence:run_sequence",
        "finetune.sequence:SequenceJobConfig",
        "continual learning over a task sequence (online RL with SB3, or offline from datasets); fills R",
    ),
    "collect": Job(
        "envs.collect:run_collect",
        "envs.collect:CollectJobConfig",
        "roll experts out on tasks and write Minari datasets (offline data)",
    ),
    "pretrain": Job(
        "pretrain.job:run_pretrain",
        "pretrain.job:PretrainJobConfig",
        "pretrain a shared module on multi-task offline data (objective=dt|idm|bc|fd|...); writes a model folder",
    ),
    "label": Job(
        "pretrain.label:run_label",
        "pretrain.label:LabelJobConfig",
        "pseudo-label action-free observations with an inverse-dynamics model (VPT); loop.enabled=true: the loop",
    ),
    "cpt": Job(
        "pretrain.cpt.job:run_cpt",
        "pretrain.cpt.job:CptJobConfig",
        "continual pretraining of a language model over stages; forgetting per text domain",
    ),
    "cpt-eval": Job(
        "pretrain.cpt.harness:main",
        None,
        "lm-evaluation-harness on a cpt model: the biography probes as local tasks, plus any harness task (retain[harness])",
    ),
    "residual": Job(
        "finetune.residual_job:run_residual",
        "finetune.residual_job:ResidualJobConfig",
        "add an instruction residual: target + alpha*(instruct - base) as a model folder (demo=true: the demo)",
    ),
    "data": Job(
        "envs.data_cli:main", None, "list datasets, or show one's episodes, steps, returns, success and spaces"
    ),
    "report": Job("retain.report:main", None, "rebuild report.md and plots of run directories, or compare runs"),
}


def _load(ref: str):
    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)


def register_job_schemas(only: str | None = None) -> None:
    """Put each job's typed config schema (or only job ``only``'s) in Hydra's ConfigStore as ``<job>_schema``.

    One job's is enough to run it, and importing only its module keeps, e.g., ``retain cpt`` free of SB3.
    """
    if not OmegaConf.has_resolver("retain_suffix"):
        OmegaConf.register_new_resolver("retain_suffix", lambda name: f"_{name}" if name else "")
    for name, job in JOBS.items():
        if job.schema and only in (None, name):
            ConfigStore.instance().store(name=f"{name}_schema", node=_load(job.schema))


def load_job(name: str):
    """The function running job ``name``."""
    return _load(JOBS[name].target)
