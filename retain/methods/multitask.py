"""Joint training on every task so far: the reference every continual-learning table reports as its upper
bound. While task i trains, the learner draws from tasks 0..i together (offline: their datasets, equally
weighted; SB3: episodes of a task picked at random per episode; CPT: the stages' mixtures merged), so
what was learned before is rehearsed rather than forgotten. It is not continual learning — it keeps all data."""

from __future__ import annotations

from dataclasses import dataclass

from retain.methods.base import Method, MethodConfig


@dataclass
class MultitaskConfig(MethodConfig):
    name: str = "multitask"


class Multitask(Method):
    Config = MultitaskConfig

    def train_tasks(self, task: int) -> list[int]:
        return list(range(task + 1))
