"""What every representation objective shares: its config, the encoder φ it trains, small MLP heads, the
action encoder, the pixel augmentation, and the ``loss(batch) -> (loss, metrics)`` contract.

Actions arrive scaled to [-1, 1] from the action space's bounds (``pretrain.encoder_learner``), so heads that
predict actions end in tanh, as Brandfonbrener et al.'s do. Augmentation (a random shift of up to
``augment_pad`` pixels, the same for the frames of one history, independent per sample and per view) draws
from torch's global generator, which the trainer seeds per chunk: a resumed chunk draws the same shifts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from agents.encoders import Encoder


@dataclass
class ObjectiveSettings:
    """The heads and loss knobs of every objective (Brandfonbrener et al. 2023's values as defaults)."""

    n_step: int = 1
    """inverse dynamics and forward dynamics: the pair is (o_t, o_{t+n})"""
    hidden: list[int] = field(default_factory=lambda: [256, 256])
    """widths of the heads' MLPs (action predictors, action encoder, projectors)"""
    dropout: float = 0.1
    """dropout in the action-predicting heads"""
    augment_pad: int = 4
    """pixels: random shifts of up to this many pixels (the paper pads 84-px frames by 8); 0: off"""
    temperature: float = 1.0
    """contrastive objectives: the InfoNCE temperature on L2-normalized projections"""


def mlp(inputs: int, hidden: list[int], outputs: int, dropout: float = 0.0) -> nn.Sequential:
    layers, width = [], inputs
    for out in hidden:
        layers += [nn.Linear(width, out), nn.GELU()] + ([nn.Dropout(dropout)] if dropout else [])
        width = out
    return nn.Sequential(*layers, nn.Linear(width, outputs))


class ActionEncoder(nn.Module):
    """Actions → the latent width, LayerNorm, tanh (as the encoder's latent)."""

    def __init__(self, act_dim: int, latent: int, hidden: list[int]):
        super().__init__()
        self.net = nn.Sequential(mlp(act_dim, hidden, latent), nn.LayerNorm(latent), nn.Tanh())

    def forward(self, actions: torch.Tensor) -> torch.Tensor:
        return self.net(actions)


def random_shift(frames: torch.Tensor, pad: int, frame_shape: list[int]) -> torch.Tensor:
    """uint8/float frames (B, [history,] H, W, C) shifted by up to ``pad`` pixels (edge-padded), per sample;
    returned as float in [0, 255] in the same layout."""
    h, w, c = frame_shape
    n = len(frames)
    x = frames.reshape(n, -1, h, w, c).permute(0, 1, 4, 2, 3).reshape(n, -1, h, w).float()
    x = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    shift = torch.randint(0, 2 * pad + 1, (n, 2))
    rows = torch.arange(h)[None, :] + shift[:, :1]  # (n, h)
    cols = torch.arange(w)[None, :] + shift[:, 1:]  # (n, w)
    index = torch.arange(n)[:, None, None]
    x = x.permute(0, 2, 3, 1)[index, rows[:, :, None], cols[:, None, :]]  # (n, h, w, history*c)
    return x.reshape(n, h, w, -1, c).permute(0, 3, 1, 2, 4).reshape(frames.shape)


class Objective(nn.Module):
    """An encoder and the heads its objective trains; ``loss(batch)`` is one training (or validation) loss."""

    name = "?"
    uses_actions = True
    augments = True
    """whether training batches get random shifts (pixels only)"""

    def __init__(self, encoder: Encoder, act_dim: int, settings: ObjectiveSettings):
        super().__init__()
        self.encoder, self.act_dim, self.settings = encoder, act_dim, settings

    def view(self, frames: torch.Tensor) -> torch.Tensor:
        """One augmented view of ``frames`` while training (pixels, ``augment_pad`` > 0), else the frames."""
        pad = self.settings.augment_pad
        if self.training and self.augments and self.encoder.pixels and pad > 0:
            return random_shift(frames, pad, self.encoder.cfg.frame_shape)
        return frames

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.view(frames))

    def loss(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.loss(batch)


def info_nce(anchors: torch.Tensor, positives: torch.Tensor, temperature: float) -> tuple[torch.Tensor, dict]:
    """One-directional InfoNCE with in-batch negatives on L2-normalized projections; also the top-1 accuracy
    of finding each anchor's positive in the batch."""
    logits = F.normalize(anchors, dim=-1) @ F.normalize(positives, dim=-1).T / temperature
    labels = torch.arange(len(logits), device=logits.device)
    loss = F.cross_entropy(logits, labels)
    return loss, {"accuracy": (logits.argmax(-1) == labels).float().mean()}
