"""A-GEM (Chaudhry et al. 2019): keep an episodic memory of every finished task and, before each optimizer
step, project the gradient so that it does not increase the loss on a batch from that memory.

If g·g_ref < 0 for the training gradient g and the memory batch's gradient g_ref, then g ← g − (g·g_ref /
g_ref·g_ref) g_ref; otherwise g is left as it is. Memory: 10,000 samples per task drawn uniformly from the task's
data (offline: the dataset; SB3: the replay buffer; CPT: token windows), a memory batch of 128 drawn from the
whole memory, as Continual World runs it (continualworld/methods/agem.py l.25–28, 67–70;
examples/paper_cl_experiments.sh l.141–160). The reference gradient is the learner's own training loss on the
memory batch (``learner.loss``; SB3 SAC: the actor's loss when the actor steps, the critics' when they do —
SB3 steps them apart, where Continual World projects their concatenation once).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from retain.methods.base import Method, MethodConfig, stepping_parameters

if TYPE_CHECKING:
    from retain.learner import Learner
    from retain.runner import Runner


@dataclass
class AGEMConfig(MethodConfig):
    name: str = "agem"
    memory_per_task: int = 10_000
    """samples kept from every finished task"""
    batch_size: int = 128
    """memory samples per reference gradient"""


def project(grad: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """A-GEM's projection of ``grad`` against ``reference`` (both flat): unchanged when they do not conflict."""
    dot = torch.dot(grad, reference)
    if dot >= 0:
        return grad
    return grad - dot / torch.dot(reference, reference).clamp_min(1e-12) * reference


class AGEM(Method):
    Config = AGEMConfig

    def __init__(self, cfg: AGEMConfig):
        super().__init__(cfg)
        self.memories: list[dict[str, torch.Tensor]] = []
        self.calls = 0  # reference batches drawn so far: seeds the next one, so a resumed run draws the same

    def after_task(self, run: Runner, task: int) -> None:
        if task < len(run.learner.tasks) - 1:
            self.memories.append(run.learner.memory(task, self.cfg.memory_per_task))

    def transform_gradients(self, learner: Learner) -> None:
        if not self.memories:
            return
        params = [
            p for p in stepping_parameters(learner, dict(learner.named_parameters())).values() if p.grad is not None
        ]
        if not params:
            return
        generator = torch.Generator().manual_seed(1_000_003 * self.calls + 17)
        self.calls += 1
        batch = learner.memory_batch(self.memories, self.cfg.batch_size, generator)
        with torch.enable_grad():
            reference = torch.autograd.grad(learner.loss(batch), params, allow_unused=True)
        reference = torch.cat(
            [(r if r is not None else torch.zeros_like(p)).flatten() for r, p in zip(reference, params)]
        )
        grad = torch.cat([p.grad.flatten() for p in params])
        projected = project(grad, reference.to(grad.dtype))
        if projected is not grad:
            offset = 0
            for p in params:
                p.grad.copy_(projected[offset : offset + p.numel()].view_as(p.grad))
                offset += p.numel()

    def state_dict(self) -> dict:
        return {"memories": self.memories, "calls": self.calls}

    def load_state_dict(self, state: dict) -> None:
        self.memories, self.calls = list(state.get("memories", [])), int(state.get("calls", 0))
