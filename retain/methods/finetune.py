"""Sequential fine-tuning: one model keeps training task after task — the forgetting baseline."""

from __future__ import annotations

from dataclasses import dataclass

from retain.methods.base import Method, MethodConfig


@dataclass
class FinetuneConfig(MethodConfig):
    name: str = "finetune"


class Finetune(Method):
    """Changes nothing: the learner trains on each task in turn with the weights the last one left."""

    Config = FinetuneConfig
