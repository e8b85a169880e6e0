"""Contrastive learning without actions ("Cont", SimCLR-like): two random shifts of the same oₜ are the
positive pair, the batch's other observations the negatives; separate projectors, L2-normalized, InfoNCE at
temperature 1 (Brandfonbrener et al. use n = 0: the pair is two views of one frame). On states, where there is
no augmentation, the positive is oₜ₊ₙ instead (a temporal pair, as ATC's)."""

from __future__ import annotations

from pretrain.objectives.base import Objective, info_nce, mlp


class Contrastive(Objective):
    name = "contrastive"
    uses_actions = False

    def __init__(self, encoder, act_dim, settings):
        super().__init__(encoder, act_dim, settings)
        latent = encoder.dim
        self.anchor = mlp(latent, settings.hidden, latent)
        self.positive = mlp(latent, settings.hidden, latent)

    def loss(self, batch):
        second = batch["obs"] if self.encoder.pixels else batch["next"]
        loss, metrics = info_nce(
            self.anchor(self.encode(batch["obs"])), self.positive(self.encode(second)), self.settings.temperature
        )
        return loss, {"contrastive_accuracy": metrics["accuracy"]}
