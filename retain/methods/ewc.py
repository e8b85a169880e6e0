"""EWC (Kirkpatrick et al. 2017): the pull to the previous parameters weighted by the diagonal Fisher.

Ω_p = mean over samples of max((∂ log p(y|x) / ∂θ_p)², 1e-5): the empirical Fisher of the finished task's
data — the log-likelihood of the dataset's actions (offline), of the replay buffer's actions under the SAC
actor or of the rollout's under PPO (SB3), of the tokens (CPT) — one gradient per sample, clipped from below
at 1e-5 as Continual World clips its per-sample Fisher (continualworld/methods/ewc.py l.65–69), averaged over
10 batches of 256 (regularization.py l.60–74) and added up over tasks. Continual World computes the Fisher of
its Gaussian policy in closed form (ewc.py l.26–40); the empirical Fisher of the data's actions is the
variant every learner here can give. Coefficient 1e4 (examples/paper_cl_experiments.sh l.41–60).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from retain.methods.regularization import Regularization, RegularizationConfig, per_sample_importance

if TYPE_CHECKING:
    from retain.runner import Runner


@dataclass
class EWCConfig(RegularizationConfig):
    name: str = "ewc"
    coef: float = 1e4
    fisher_floor: float = 1e-5
    """lower clip of every per-sample squared gradient (Continual World's)"""


class EWC(Regularization):
    Config = EWCConfig

    def importance(self, run: Runner, task: int, names: list[str]) -> dict[str, torch.Tensor]:
        floor = self.cfg.fisher_floor
        return per_sample_importance(
            run.learner,
            task,
            names,
            run.learner.log_likelihood,
            lambda g: g.pow(2).clamp_min(floor),
            self.cfg.batches,
            self.cfg.batch_size,
        )
