"""PackNet (Mallya & Lazebnik 2018): one network, a share of its weights per task, earlier tasks' weights frozen.

While task i trains, only the weights no earlier task owns (free ones) learn. After it, all but the
largest-magnitude 1/(k+1) of those are pruned to zero and set free again (k: tasks still to come; the last
task keeps all), the network retrains for ``retrain_steps`` on task i with only its own weights, and those are
frozen from then on. Weight matrices are shared this way; biases and norm parameters learn on the first task
only, then stay frozen. Task j is evaluated with the weights of tasks ≤ j only (a mask). As Continual World
runs it (continualworld/methods/packnet.py l.25–45, 73–88, 109–156): prune after every task but the last,
100,000 retraining steps after 1M (examples/paper_cl_experiments.sh l.101–120) — here a tenth of the task's
budget unless ``retrain_steps`` says otherwise —, the actor only unless ``critic``.

Frozen means bit-identical: gradients of weights the current phase may not train are zeroed before every
optimizer step and their values put back after it (Adam's moments and weight decay would move them otherwise).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from retain.methods.base import Method, MethodConfig, stepping_parameters

if TYPE_CHECKING:
    from retain.learner import Learner
    from retain.runner import Runner

FREE = -1


@dataclass
class PackNetConfig(MethodConfig):
    name: str = "packnet"
    retrain_steps: int | None = None
    """updates of retraining after each task's pruning (SB3: gradient steps); None: a tenth of the task's
    budget, as Continual World retrains 100k steps after 1M (so a shrunk budget shrinks the retraining too)"""
    critic: bool = False
    """prune and freeze the critic too (SB3 actor-critic agents)"""


class PackNet(Method):
    Config = PackNetConfig

    def __init__(self, cfg: PackNetConfig):
        super().__init__(cfg)
        self.owner: dict[str, torch.Tensor] = {}  # per weight: the task that owns it, FREE if none (yet)
        self.values: dict[str, torch.Tensor] = {}  # what frozen weights must hold
        self.phase = (0, "train")  # (task, "train" | "retrain")

    def _managed(self, learner: Learner) -> dict[str, torch.nn.Parameter]:
        names = set(learner.regularized_parameters(self.cfg.critic))
        return {n: p for n, p in learner.named_parameters() if n in names}

    def before_task(self, run: Runner, task: int) -> bool:
        if not self.owner:
            for name, p in self._managed(run.learner).items():
                self.owner[name] = torch.full(p.shape, FREE, dtype=torch.int16, device=p.device)
        self.phase = (task, "train")
        return False

    def _trainable(self, name: str) -> torch.Tensor | bool:
        task, phase = self.phase
        owner = self.owner[name]
        if owner.dim() < 2:  # biases, norms: the first task trains them
            return task == 0 and phase == "train"
        return owner == (FREE if phase == "train" else task)

    def transform_gradients(self, learner: Learner) -> None:
        for name, p in stepping_parameters(learner, self._managed(learner)).items():
            if p.grad is not None:
                mask = self._trainable(name)
                if mask is False:
                    p.grad.zero_()
                elif mask is not True:
                    p.grad.mul_(mask)

    def after_step(self, learner: Learner) -> None:
        if not self.values:
            return
        with torch.no_grad():
            for name, p in stepping_parameters(learner, self._managed(learner)).items():
                mask = self._trainable(name)
                if mask is False:
                    p.copy_(self.values[name])
                elif mask is not True:
                    p.copy_(torch.where(mask, p, self.values[name]))

    def after_training(self, run: Runner, task: int) -> None:
        learner = run.learner
        left = len(learner.tasks) - 1 - task
        params = self._managed(learner)
        with torch.no_grad():
            for name, p in params.items():
                owner = self.owner[name]
                if owner.dim() < 2:
                    continue
                free = owner == FREE
                keep = free.clone()
                if left > 0 and free.any():  # keep the largest 1/(left+1) of the free weights
                    magnitudes = p.abs()[free]
                    k = max(1, int(round(magnitudes.numel() / (left + 1))))
                    threshold = magnitudes.kthvalue(magnitudes.numel() - k + 1).values
                    keep = free & (p.abs() >= threshold)
                    p.mul_(~(free & ~keep))  # pruned weights: zero, and free for later tasks
                owner[keep] = task
            self.values = {n: p.detach().clone() for n, p in params.items()}
        steps = self.cfg.retrain_steps
        if steps is None:
            steps = max(1, round(0.1 * learner.budget(task)))
        if left > 0 and steps > 0:
            self.phase = (task, "retrain")
            learner.retrain(task, steps)
        self.phase = (task, "frozen")
        self.values = {n: p.detach().clone() for n, p in params.items()}

    def eval_weights(self, run: Runner, current: int, task: int) -> dict[str, torch.Tensor] | None:
        if task >= current or not self.values:
            return None  # the current weights hold every weight of tasks <= current
        weights = run.learner.weights()
        for name, owner in self.owner.items():
            if owner.dim() >= 2:
                weights[name] = weights[name] * ((owner != FREE) & (owner <= task)).to(weights[name].dtype)
        return weights

    def state_dict(self) -> dict:
        return {"owner": self.owner, "values": self.values, "phase": [self.phase[0], self.phase[1]]}

    def load_state_dict(self, state: dict) -> None:
        self.owner, self.values = dict(state.get("owner", {})), dict(state.get("values", {}))
        phase = state.get("phase", [0, "train"])
        self.phase = (int(phase[0]), str(phase[1]))
