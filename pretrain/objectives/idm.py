"""Inverse dynamics (Brandfonbrener et al. 2023): predict aₜ from φ(oₜ) and φ(oₜ₊ₙ).

One encoder gives both latents (gradients through both, no target network); their concatenation goes
through an MLP with dropout and a tanh to the action, trained with MSE. With n > 1 only the first action of
the n is predicted. Each frame gets its own random shift. The head is kept with the encoder so that
``retain label`` can pseudo-label action-free data with it (VPT).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pretrain.objectives.base import Objective, mlp


class InverseDynamics(Objective):
    name = "idm"

    def __init__(self, encoder, act_dim, settings):
        super().__init__(encoder, act_dim, settings)
        latent = encoder.dim
        self.head = mlp(2 * latent, settings.hidden, act_dim, settings.dropout)

    def predict(self, obs: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        """The action (in [-1, 1]) taken at ``obs`` that led, n steps later, to ``after``."""
        return torch.tanh(self.head(torch.cat([self.encode(obs), self.encode(after)], dim=-1)))

    def loss(self, batch):
        predicted = self.predict(batch["obs"], batch["next"])
        mse = F.mse_loss(predicted, batch["action"])
        return mse, {"action_mse": mse.detach()}
