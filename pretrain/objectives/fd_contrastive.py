"""Implicit forward dynamics ("FD-i"): a contrastive forward model. The anchor [φ(oₜ), ActionEncoder(aₜ)] and
the positive φ(oₜ₊ₙ) go through separate projectors (MLP → L2-normalized); InfoNCE with the batch's other
next states as negatives, temperature 1 (Brandfonbrener et al.'s values; one encoder, no momentum target)."""

from __future__ import annotations

import torch

from pretrain.objectives.base import ActionEncoder, Objective, info_nce, mlp


class ContrastiveForward(Objective):
    name = "fd_contrastive"

    def __init__(self, encoder, act_dim, settings):
        super().__init__(encoder, act_dim, settings)
        latent = encoder.dim
        self.action = ActionEncoder(act_dim, latent, settings.hidden)
        self.anchor = mlp(2 * latent, settings.hidden, latent)
        self.positive = mlp(latent, settings.hidden, latent)

    def loss(self, batch):
        anchor = self.anchor(torch.cat([self.encode(batch["obs"]), self.action(batch["action"])], dim=-1))
        positive = self.positive(self.encode(batch["next"]))
        loss, metrics = info_nce(anchor, positive, self.settings.temperature)
        return loss, {"contrastive_accuracy": metrics["accuracy"]}
