"""EWC (Kirkpatrick et al. 2017): the pull to the previous parameters weighted by the diagonal Fisher.

For a Gaussian policy N(μ(x), σ(x)) (SAC, PPO on Box actions, offline BC), Continual World's closed form
(continualworld/methods/ewc.py l.26–69): per sample, Σ_k ((∂μ_k/∂θ)² + 2 (∂σ_k/∂θ)²) / (σ_k² + 1e-6), with
μ before squashing, clipped from below at 1e-5, averaged over 10 batches of 256 of the finished task's data
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
from retain.methods.regularization import Regularization, RegularizationConfig, per_sample_importance

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
            return gaussian_fisher(learner, task, names, floor, self.cfg.batches, self.cfg.batch_size)
        if self.cfg.fisher == "gaussian":
            raise ConfigError(
                "method.fisher=gaussian needs a Gaussian policy, and this learner's model is not one",
                "use method.fisher=auto or empirical",
            )
        return per_sample_importance(
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
    """Continual World's Fisher of a Gaussian policy on ``batches`` of the task's data (see the module doc).

    Samples are drawn one at a time (batches of one row), so each sample's backward pass runs through its own
    small graph rather than its whole batch's; its 2·A output gradients (μ_k and σ_k) come from one vectorized
    backward pass (``is_grads_batched``)."""
    params = dict(learner.named_parameters())
    wanted = [(n, params[n]) for n in names if params[n].requires_grad]
    total = {n: torch.zeros_like(p) for n, p in wanted}
    count = 0
    for batch in learner.method_batches(task, batches * batch_size, 1):
        with torch.enable_grad():
            mean, std = learner.gaussian(batch)
            outputs = torch.cat([mean, std], dim=-1)  # rows × 2A
            A = mean.shape[-1]
            scale = 1.0 / (std.detach() ** 2 + 1e-6)
            basis = torch.eye(2 * A, dtype=outputs.dtype, device=outputs.device)
            for s in range(len(outputs)):
                grads = torch.autograd.grad(
                    outputs[s],
                    [p for _, p in wanted],
                    grad_outputs=basis,
                    retain_graph=True,
                    is_grads_batched=True,
                    allow_unused=True,
                )
                weight = torch.cat([scale[s], 2.0 * scale[s]])  # (∂μ)²/σ² + 2 (∂σ)²/σ²
                for (n, _), g in zip(wanted, grads):
                    if g is None:  # the sample's outputs do not depend on it: the floor, as after clipping
                        total[n] += floor
                    else:
                        total[n] += (g.pow(2) * weight.view(-1, *[1] * (g.dim() - 1))).sum(0).clamp_min(floor)
        count += len(outputs)
    out = {n: t / max(count, 1) for n, t in total.items()}
    return {n: out.get(n, torch.full_like(params[n], floor)) for n in names}
