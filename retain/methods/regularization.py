"""Quadratic regularization towards the parameters after the previous task: the base of L2, EWC and MAS.

penalty = coef · Σ_p Ω_p (θ_p − θ*_p)² over the regularized parameters (the learner's shared ones; for SAC the
actor's, and the critic's with ``critic=true``), as Continual World adds it to the actor and critic losses
(continualworld/methods/regularization.py l.76–85). After every task but the last, θ* becomes the current
parameters and the task's importance Ω is *added* to the earlier tasks' (l.41–58); no penalty applies during
the first task. The subclasses differ only in Ω: ones (L2), the diagonal Fisher (EWC), or the sensitivity of
the output norm (MAS), the latter two estimated on the task's own data through the learner's ``method_batches``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from retain.methods.base import Method, MethodConfig

if TYPE_CHECKING:
    from retain.learner import Learner
    from retain.runner import Runner


@dataclass
class RegularizationConfig(MethodConfig):
    coef: float = 1.0
    """the penalty's coefficient"""
    critic: bool = False
    """also regularize the critic (SB3 actor-critic agents; Continual World's regularize_critic, default off)"""
    batches: int = 10
    """batches of the finished task's data the importance is estimated on (Continual World: 10 x 256)"""
    batch_size: int = 256
    """samples per batch (each gives its own gradient)"""


class Regularization(Method):
    """A quadratic pull to the previous parameters with importance ``importance(run, task)``."""

    Config = RegularizationConfig

    def __init__(self, cfg: RegularizationConfig):
        super().__init__(cfg)
        self.anchor: dict[str, torch.Tensor] = {}
        self.omega: dict[str, torch.Tensor] = {}

    def importance(self, run: Runner, task: int, names: list[str]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def after_task(self, run: Runner, task: int) -> None:
        if task == len(run.learner.tasks) - 1:
            return  # nothing trains after the last task
        names = run.learner.regularized_parameters(self.cfg.critic)
        params = dict(run.learner.named_parameters())
        new = self.importance(run, task, names)
        for name in names:
            self.omega[name] = self.omega.get(name, 0.0) + new[name].detach()
            self.anchor[name] = params[name].detach().clone()

    def penalty(self, learner: Learner) -> torch.Tensor | None:
        if not self.anchor:
            return None
        total = None
        for name, p in learner.named_parameters():
            if name in self.anchor:
                term = (self.omega[name] * (p - self.anchor[name]) ** 2).sum()
                total = term if total is None else total + term
        return None if total is None else self.cfg.coef * total

    def state_dict(self) -> dict:
        return {"anchor": self.anchor, "omega": self.omega}

    def load_state_dict(self, state: dict) -> None:
        self.anchor, self.omega = dict(state.get("anchor", {})), dict(state.get("omega", {}))


PerSample = Callable[[object, list[torch.nn.Parameter]], list[torch.Tensor | None]]


def sample_average(
    learner: Learner, task: int, names: list[str], per_sample: PerSample, batches: int, batch_size: int
) -> dict[str, torch.Tensor]:
    """The mean over ``batches`` × ``batch_size`` samples of the task's data of ``per_sample(batch, params)``,
    one tensor per parameter (None: zero), for every parameter named in ``names``.

    EWC's Fisher and MAS's importance are averages of per-sample quantities, not of a batch gradient, so the
    samples are drawn one row at a time: each backward pass then runs through one sample's small graph.
    """
    params = dict(learner.named_parameters())
    wanted = [(n, params[n]) for n in names if params[n].requires_grad]
    total = {n: torch.zeros_like(p) for n, p in wanted}
    count = 0
    for batch in learner.method_batches(task, batches * batch_size, 1):
        with torch.enable_grad():
            values = per_sample(batch, [p for _, p in wanted])
        for (n, _), value in zip(wanted, values):
            if value is not None:
                total[n] += value.detach()
        count += 1
    return {n: total[n] / max(count, 1) if n in total else torch.zeros_like(params[n]) for n in names}


def score_importance(
    learner: Learner,
    task: int,
    names: list[str],
    score: Callable[[object], torch.Tensor],
    reduce: Callable[[torch.Tensor], torch.Tensor],
    batches: int,
    batch_size: int,
) -> dict[str, torch.Tensor]:
    """The mean over samples of ``reduce(∂ score(sample) / ∂θ)``: ``score`` is a log-likelihood (EWC's
    empirical Fisher, with ``reduce`` = square) or an output norm (MAS, with ``reduce`` = abs)."""

    def per_sample(batch, params):
        grads = torch.autograd.grad(score(batch).sum(), params, allow_unused=True)
        return [None if g is None else reduce(g) for g in grads]

    return sample_average(learner, task, names, per_sample, batches, batch_size)
