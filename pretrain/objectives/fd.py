"""Explicit forward dynamics ("FD-e", reconstruction): decode oₜ₊ₙ from φ(oₜ) and an encoding of aₜ, MSE.

Pixels: the latent and the action code go through a linear layer to a feature map an eighth of the frame's size, and
transposed convolutions (4×4, stride 2, GELU) up to the frame, the target the next frame scaled to [-0.5, 0.5] (the
newest frame of the next input when there is a history). States: an MLP to the next observation. No
augmentation (as in the paper: a reconstruction target must stay aligned with its input).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pretrain.objectives.base import ActionEncoder, Objective, mlp

DECODER_CHANNELS = (64, 32, 16)
"""transposed-conv channels, each layer doubling the map's size"""


class PixelDecoder(nn.Module):
    def __init__(self, inputs: int, frame_shape: list[int]):
        super().__init__()
        h, w, c = frame_shape
        ups = len(DECODER_CHANNELS)
        self.size, self.base = (h, w), (math.ceil(h / 2**ups), math.ceil(w / 2**ups))
        self.start = nn.Linear(inputs, DECODER_CHANNELS[0] * self.base[0] * self.base[1])
        layers, last = [], DECODER_CHANNELS[0]
        for out in (*DECODER_CHANNELS[1:], c):
            layers += [nn.GELU(), nn.ConvTranspose2d(last, out, 4, stride=2, padding=1)]
            last = out
        self.up = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.start(z).view(len(z), DECODER_CHANNELS[0], *self.base)
        x = self.up(x)
        if tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
        return x.permute(0, 2, 3, 1)  # (B, H, W, C)


class ForwardDynamics(Objective):
    name = "fd"
    augments = False

    def __init__(self, encoder, act_dim, settings):
        super().__init__(encoder, act_dim, settings)
        latent, frame = encoder.dim, encoder.cfg.frame_shape
        self.action = ActionEncoder(act_dim, latent, settings.hidden)
        if encoder.pixels:
            self.decoder = PixelDecoder(2 * latent, frame)
        else:
            self.decoder = mlp(2 * latent, settings.hidden, math.prod(frame))

    def _target(self, frames: torch.Tensor) -> torch.Tensor:
        frame = self.encoder.cfg.frame_shape
        newest = frames.reshape(len(frames), -1, *frame)[:, -1]
        return newest.float() / 255.0 - 0.5 if self.encoder.pixels else newest.float().reshape(len(frames), -1)

    def loss(self, batch):
        z = torch.cat([self.encode(batch["obs"]), self.action(batch["action"])], dim=-1)
        predicted = self.decoder(z)
        mse = F.mse_loss(predicted, self._target(batch["next"]))
        return mse, {"reconstruction_mse": mse.detach()}
