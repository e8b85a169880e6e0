"""The config system: typed schemas behind the Hydra tree in ``configs/``, and composition
without Hydra's app runner (for tests, notebooks and jobs that call other jobs)."""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from retain.jobs import register_job_schemas
from retain.tracking import LoggerConfig


def config_dir() -> Path:
    """The ``configs/`` tree shipped with the project (works from any working directory)."""
    return Path(str(importlib.resources.files("configs")))


@dataclass
class RunConfig:
    """Keys every job takes."""

    seed: int = 0
    """root seed; every task, chunk and evaluation derives its own seed from it"""
    run_dir: str = "???"
    """where the job writes (default runs/<job>/<date>_<time>[_<name>])"""
    name: str = ""
    """optional suffix of the default run directory"""
    resume: bool = False
    """continue the run in run_dir from its latest checkpoint"""
    progress: bool = True
    """show progress bars"""
    traceback: bool = False
    """print full tracebacks on errors (debug=true sets it)"""
    device: str = "auto"
    """auto | cpu | cuda"""
    threads: int = 1
    """torch intra-op threads; small networks run fastest on one thread per process"""
    logger: LoggerConfig = field(default_factory=LoggerConfig)


def load_config(job: str, overrides: list[str] | None = None) -> DictConfig:
    """Compose the primary config of ``job`` with Hydra overrides, as the CLI would (minus the app runner)."""
    register_job_schemas(job)
    if GlobalHydra.instance().is_initialized():
        return compose(config_name=job, overrides=list(overrides or []))
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3", job_name=job):
        return compose(config_name=job, overrides=list(overrides or []))


def to_container(cfg: Any) -> Any:
    """A plain, resolved dict/list copy of a config node (for JSON, wandb and checkpoints)."""
    if isinstance(cfg, DictConfig) or OmegaConf.is_config(cfg):
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    return cfg


def check_common(cfg: Any) -> None:
    """The keys every job takes, checked before any work: ConfigError naming the key and the fix."""
    from retain.device import resolve_device
    from retain.errors import ConfigError

    if int(cfg.threads) < 1:
        raise ConfigError(f"threads={cfg.threads}", "use threads >= 1 (torch intra-op threads per process)")
    resolve_device(cfg.device)
    mode = cfg.logger.wandb_mode
    if mode not in ("offline", "online", "disabled"):
        raise ConfigError(f"logger.wandb_mode={mode!r} is not a wandb mode", "use offline, online or disabled")
