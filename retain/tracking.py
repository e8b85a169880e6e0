"""Run tracking: ``metrics.jsonl`` always, TensorBoard and wandb when the ``logger`` config asks.

Metric names carry fixed prefixes: ``train/``, ``eval/<task>/``, ``cl/``, ``perf/``. wandb is
imported only when chosen and runs offline unless the config sets ``wandb_mode: online``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from retain.errors import ConfigError

METRICS_FILE = "metrics.jsonl"
PREFIXES = ("train/", "eval/", "cl/", "perf/")


@dataclass
class LoggerConfig:
    tensorboard: bool = False
    """also write TensorBoard event files under <run_dir>/tensorboard"""
    wandb: bool = False
    """also log to Weights & Biases (offline by default: `wandb sync` uploads later)"""
    wandb_project: str = "retain"
    """wandb project name"""
    wandb_entity: str | None = None
    """wandb entity (team or user); None uses wandb's default"""
    wandb_mode: str = "offline"
    """offline | online | disabled"""


class Tracker:
    """Writes each logged step to every chosen backend.

    ``resume_offset`` (a byte offset into ``metrics.jsonl`` saved in a checkpoint) truncates what
    a killed run logged after its last checkpoint, so a resumed run's file equals an uninterrupted one's.
    """

    def __init__(
        self,
        run_dir: str | Path,
        cfg: Any = None,
        config: dict | None = None,
        resume_offset: int | None = None,
        run_name: str | None = None,
    ):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / METRICS_FILE
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume_offset is not None and self.path.exists():
            with open(self.path, "r+b") as f:
                f.truncate(resume_offset)
        elif resume_offset is None and self.path.exists():
            self.path.unlink()
        self._file = open(self.path, "a", encoding="utf-8")
        self._tb = None
        self._wandb = None
        cfg = cfg or LoggerConfig()
        if cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ConfigError(
                    "logger=tensorboard needs the tensorboard package",
                    "pip install tensorboard (or the project's [tracking] extra)",
                ) from e
            self._tb = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))
        if cfg.wandb:
            try:
                import wandb
            except ImportError as e:
                raise ConfigError(
                    "logger=wandb needs the wandb package", "pip install wandb (or the project's [tracking] extra)"
                ) from e
            if cfg.wandb_mode not in ("offline", "online", "disabled"):
                raise ConfigError(
                    f"logger.wandb_mode={cfg.wandb_mode!r} is not a wandb mode", "use offline, online or disabled"
                )
            # the id is the run directory's, so a resumed run continues its wandb run and no two runs collide
            run_id = hashlib.sha1(str(self.run_dir.resolve()).encode()).hexdigest()[:16]
            self._wandb = wandb.init(
                project=cfg.wandb_project,
                entity=cfg.wandb_entity,
                mode=cfg.wandb_mode,
                dir=str(self.run_dir),
                config=config,
                name=run_name or self.run_dir.name,
                id=run_id,
                resume="allow",
            )

    def offset(self) -> int:
        """Byte offset of everything logged so far (store it in checkpoints)."""
        self._file.flush()
        return self._file.tell()

    def log(self, metrics: dict[str, float], step: int) -> None:
        clean = {}
        for key, value in metrics.items():
            if not key.startswith(PREFIXES):
                raise ValueError(f"metric {key!r} lacks one of the prefixes {PREFIXES}")
            value = float(value)
            clean[key] = value if math.isfinite(value) else None
        self._file.write(json.dumps({"step": int(step), **clean}) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in clean.items():
                if value is not None:
                    self._tb.add_scalar(key, value, int(step))
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in clean.items() if v is not None}, step=int(step))

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def read_metrics(run_dir: str | Path) -> list[dict]:
    """All records of a run's ``metrics.jsonl`` (a truncated last line from a crash is skipped)."""
    path = Path(run_dir) / METRICS_FILE
    records = []
    if not path.exists():
        return records
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def progress_bar(total: int, enabled: bool, desc: str = "", unit: str = "step", initial: int = 0) -> tqdm:
    """A tqdm bar, silent when ``progress=false`` or when stderr is not a terminal under CI."""
    disable = not enabled or bool(os.environ.get("RETAIN_NO_PROGRESS"))
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=disable, dynamic_ncols=True, smoothing=0.1)
