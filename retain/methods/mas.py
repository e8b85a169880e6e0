"""MAS (Aljundi et al. 2018): the pull to the previous parameters weighted by how much the output's norm
depends on each.

Ω_p = mean over samples of |∂ ‖f(x)‖² / ∂θ_p| on the finished task's data, where f(x) are the model's outputs —
for a Gaussian policy its mean and log-std, as Continual World takes them (continualworld/methods/mas.py
l.27–30, 39, 49–50), logits for discrete actions and language models — added up over tasks. Coefficient 1e4
(examples/paper_cl_experiments.sh l.61–80).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from retain.methods.regularization import Regularization, RegularizationConfig, score_importance

if TYPE_CHECKING:
    from retain.runner import Runner


@dataclass
class MASConfig(RegularizationConfig):
    name: str = "mas"
    coef: float = 1e4


class MAS(Regularization):
    Config = MASConfig

    def importance(self, run: Runner, task: int, names: list[str]) -> dict[str, torch.Tensor]:
        return score_importance(
            run.learner,
            task,
            names,
            run.learner.output_norm,
            torch.abs,
            self.cfg.batches,
            self.cfg.batch_size,
        )
