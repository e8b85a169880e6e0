"""EWC (Kirkpatrick et al. 2017): the pull to the previous parameters weighted by the diagonal Fisher.

For a Gaussian policy N(μ(x), σ(x)) (SAC, PPO on Box actions, offline BC), Continual World's closed form
(continualworld/methods/ewc.py l.26–69): per sample, Σ_k ((∂μ_k/∂θ)² + 2 (∂σ_k/∂θ)²) / (σ_k² + 1e-6), with
μ before squashing, clipped from below at 1e-5 — and, with ``critic=true``, (∂Q/∂θ)² for SAC's critics (l.71–79), averaged over 10 batches of 256 of the finished task's data
(regularization.py l.60–74) and added up over tasks. Where the model is not Gaussian (discrete actions,
language models) — or with ``fisher=empirical`` — the empirical Fisher: per sample, (∂ log p(y|x) / ∂θ)² of the
data's own targets, clipped and averaged the same way. Coefficient 1e4 (examples/paper_cl_experiments.sh
l.41–60).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from retain.errors import ConfigError
from retain.methods.regularization import Regularization, RegularizationConfig, sample_average, score_importance

if TYPE_CHECKING:
    from retain.learner import Learner
    from retain.runner import Runner


FISHERS = ("auto", "gaussian", "empirical")


@dataclass
class EWCConfig(RegularizationConfig):
    name: str = "ewc"
    coef: float = 1e4
    fisher_floor: float = 1e-5
    """lower clip of every sample's Fisher (Continual World's)"""
    fisher: str = "auto"
    """gaussian: Continual World's closed form for a Gaussian policy | empirical: squared score of the data's
    targets | auto: gaussian where the learner's model is a Gaussian policy, else empirical"""


class EWC(Regularization):
    Config = EWCConfig

    def __init__(self, cfg: EWCConfig):
        if cfg.fisher not in FISHERS:
            raise ConfigError(f"method.fisher={cfg.fisher!r}", f"use one of {', '.join(FISHERS)}")
        super().__init__(cfg)

    def importance(self, run: Runner, task: int, names: list[str]) -> dict[str, torch.Tensor]:
        learner, floor = run.learner, self.cfg.fisher_floor
        if self.cfg.fisher != "empirical" and _is_gaussian(learner):
            critics = set(getattr(learner, "critic_parameters", list)()) & set(names)
            actor = [n for n in names if n not in critics]
            omega = gaussian_fisher(learner, task, actor, floor, self.cfg.batches, self.cfg.batch_size)
            if critics:  # Continual World's critic Fisher: (∂Q/∂θ)² of the data's actions, not clipped
                square = lambda g: g.pow(2)  # noqa: E731
                q = learner.critic_values
                omega |= score_importance(
                    learner, task, sorted(critics), q, square, self.cfg.batches, self.cfg.batch_size
                )
            return {n: omega[n] for n in names}
        if self.cfg.fisher == "gaussian":
            raise ConfigError(
                "method.fisher=gaussian needs a Gaussian policy, and this learner's model is not one",
                "use method.fisher=auto or empirical",
            )
        return score_importance(
            learner,
            task,
            names,
            learner.log_likelihood,
            lambda g: g.pow(2).clamp_min(floor),
            self.cfg.batches,
            self.cfg.batch_size,
        )


def _is_gaussian(learner: Learner) -> bool:
    """Whether the learner's model is a Gaussian policy it can give ``gaussian(batch) -> (mean, std)`` of."""
    return bool(getattr(learner, "is_gaussian", lambda: False)())


def gaussian_fisher(
    learner: Learner, task: int, names: list[str], floor: float, batches: int, batch_size: int
) -> dict[str, torch.Tensor]:
    """Continual World's Fisher of a Gaussian policy, averaged over samples of the task's data (see the module
    doc); a sample's 2·A output gradients (μ_k and σ_k) come from one vectorized backward pass."""

    def per_sample(batch, params):
        mean, std = learner.gaussian(batch)  # one row: 1 × A each
        outputs = torch.cat([mean, std], dim=-1)[0]
        basis = torch.eye(len(outputs), dtype=outputs.dtype, device=outputs.device)
        grads = torch.autograd.grad(outputs, params, grad_outputs=basis, is_grads_batched=True, allow_unused=True)
        scale = 1.0 / (std[0].detach() ** 2 + 1e-6)
        weight = torch.cat([scale, 2.0 * scale])  # (∂μ)²/σ² + 2 (∂σ)²/σ², summed over the output dims
        return [
            torch.full_like(p, floor)  # the sample's outputs do not depend on it: the floor, as after clipping
            if g is None
            else (g.pow(2) * weight.view(-1, *[1] * (g.dim() - 1))).sum(0).clamp_min(floor)
            for p, g in zip(params, grads)
        ]

    return sample_average(learner, task, names, per_sample, batches, batch_size)
