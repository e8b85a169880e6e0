"""L2: a uniform quadratic pull to the parameters after the previous task (Continual World's "L2").

Ω = 1 for every regularized parameter, added up over finished tasks as Continual World does
(continualworld/methods/l2.py l.13–23 with regularization.py l.41–58). Coefficient 1e5 as in Continual World's
paper runs (examples/paper_cl_experiments.sh l.21–40), for SAC on Meta-World; other learners need their own scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from retain.methods.regularization import Regularization, RegularizationConfig

if TYPE_CHECKING:
    from retain.runner import Runner


@dataclass
class L2Config(RegularizationConfig):
    name: str = "l2"
    coef: float = 1e5


class L2(Regularization):
    Config = L2Config

    def importance(self, run: Runner, task: int, names: list[str]) -> dict[str, torch.Tensor]:
        params = dict(run.learner.named_parameters())
        return {n: torch.ones_like(params[n]) for n in names}
