"""Behaviour-cloning pretraining: predict aₜ from φ(oₜ) on the pooled multi-task data, the task hidden — so
the head can only learn the average over contexts (why Brandfonbrener et al. find it transfers worse than
inverse dynamics). An MLP with dropout and a tanh, MSE."""

from __future__ import annotations

import torch.nn.functional as F

from pretrain.objectives.base import Objective, mlp


class BehaviourCloning(Objective):
    name = "bc"

    def __init__(self, encoder, act_dim, settings):
        super().__init__(encoder, act_dim, settings)
        self.head = mlp(encoder.dim, settings.hidden, act_dim, settings.dropout)

    def loss(self, batch):
        predicted = self.head(self.encode(batch["obs"])).tanh()
        mse = F.mse_loss(predicted, batch["action"])
        return mse, {"action_mse": mse.detach()}
