"""Experience replay: a share of every batch drawn from earlier tasks' data.

Offline learners and CPT draw ``share`` of every batch's rows from the finished tasks' data (perfect memory:
all of it; or ``memory_per_task`` rows/tokens kept per task; ``per_task`` caps each earlier task's share of a
batch), split evenly over them; SB3 off-policy agents
keep every earlier task's transitions in their replay buffer instead (Continual World's "perfect memory" /
reservoir runs: examples/paper_cl_experiments.sh l.121–140, buffer of 2e7 with batch 512 — give the agent a
buffer that holds the whole sequence).
"""

from __future__ import annotations

from dataclasses import dataclass

from retain.errors import ConfigError
from retain.methods.base import Method, MethodConfig


@dataclass
class ReplayConfig(MethodConfig):
    name: str = "replay"
    share: float = 0.5
    """the part of every batch drawn from earlier tasks (offline, CPT); SB3 off-policy agents keep the buffer"""
    per_task: float | None = None
    """at most this share of a batch from any one earlier task (None: share split evenly over them)"""
    memory_per_task: int | None = None
    """a budget: replay draws from this many rows (offline) or tokens (CPT) kept from each earlier task, a
    fixed seeded draw; None: from all of its data (perfect memory). SB3 agents size their buffer instead"""


class Replay(Method):
    Config = ReplayConfig

    def __init__(self, cfg: ReplayConfig):
        super().__init__(cfg)
        if not 0.0 < cfg.share < 1.0:
            raise ConfigError(f"method.share={cfg.share} is not in (0, 1)", "use e.g. method.share=0.5")
        if cfg.per_task is not None and not 0.0 < cfg.per_task <= cfg.share:
            raise ConfigError(f"method.per_task={cfg.per_task}", "use a value in (0, method.share], or null")
        if cfg.memory_per_task is not None and cfg.memory_per_task < 1:
            raise ConfigError(f"method.memory_per_task={cfg.memory_per_task}", "use a positive size, or null")

    def replay_memory(self) -> int | None:
        return self.cfg.memory_per_task

    def replay(self, task: int) -> dict[int, float]:
        if task == 0:
            return {}
        each = self.cfg.share / task
        if self.cfg.per_task is not None:
            each = min(each, self.cfg.per_task)
        return {j: each for j in range(task)}
