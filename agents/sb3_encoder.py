"""A pretrained observation encoder (``agents.encoders``, what ``retain pretrain`` writes) as the features
extractor of an SB3 policy (PPO, A2C, SAC, TD3), frozen or tuned with it.

``encoder_policy_kwargs(path, freeze)`` gives the policy kwargs; every extractor instance SB3 builds (SAC
and TD3 build one each for the actor, the critic and their targets) loads the same pretrained weights.

Four things make SB3 and the encoder agree:

- **Pretrained weights stay pretrained.** PPO and A2C (``ortho_init``) re-initialize their features extractor
  with ``module.apply(init_weights)`` after building it; ``PretrainedEncoder.apply`` does not reach the encoder.

- **Frozen means untouchable.** A frozen encoder's weights are registered as buffers, not parameters, so
  ``policy.parameters()`` — what SB3 hands its optimizers, what SAC/TD3's Polyak update of the target
  networks iterates, and what continual methods regularize — never contains them. (``requires_grad=False``
  alone would keep Adam off them, but the Polyak update would rewrite the target's copy with
  ``x·(1-τ) + τ·x``, which is not ``x`` in floating point.) They stay in ``state_dict()``, so checkpoints and
  weight swaps carry them. A frozen encoder runs in eval mode and without autograd.
- **Pixels are scaled once.** SB3's ``preprocess_obs`` divides uint8 image observations by 255 when the
  policy's ``normalize_images`` is true, and ``Encoder`` divides uint8 pixels by 255 itself; so a conv
  encoder's policy takes ``normalize_images=False`` (``encoder_policy_kwargs`` sets it), and the encoder gets
  the 0..255 values as floats.
- **Channel-last frames.** SB3 wraps an env whose observations are channel-last images (H×W×C uint8) in
  ``VecTransposeImage`` (``BaseAlgorithm._wrap_env``: ``is_image_space`` and not
  ``is_image_space_channels_first``), so the policy sees C×H×W; the extractor permutes those back to the
  encoder's H×W×C. Stacked frames (``history`` > 1: ``(history, H, W, C)``) are not image spaces to SB3 and
  arrive untransposed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn

from agents.encoders import Encoder, check_fits, input_shape, load_encoder, read_encoder_config


def _freeze(encoder: nn.Module) -> None:
    """Every parameter of ``encoder`` becomes a buffer of the same name (same ``state_dict`` keys)."""
    for module in encoder.modules():
        for name, param in list(module._parameters.items()):
            if param is not None:
                del module._parameters[name]
                module.register_buffer(name, param.detach().requires_grad_(False))


def _channels_first(space: gym.spaces.Box, frame: tuple[int, ...]) -> gym.spaces.Box | None:
    """``space`` as the encoder's H×W×C frames when it is their C×H×W transpose (SB3's ``VecTransposeImage``),
    else None."""
    if len(frame) != 3 or not isinstance(space, gym.spaces.Box) or len(space.shape) != 3:
        return None
    h, w, c = frame
    if tuple(space.shape) != (c, h, w):
        return None
    return gym.spaces.Box(space.low.transpose(1, 2, 0), space.high.transpose(1, 2, 0), dtype=space.dtype)


class PretrainedEncoder(BaseFeaturesExtractor):
    """The encoder saved at ``path`` as SB3's features extractor: ``features_dim`` is its latent width.

    ``freeze``: its weights never change (see the module docstring); false: they train with the policy, from
    the pretrained values.
    """

    def __init__(self, observation_space: gym.Space, path: str, freeze: bool = True):
        encoder = load_encoder(path)
        transposed = None  # an exact fit wins (a 3×3×3 frame is its own transpose, and SB3 leaves it alone)
        if encoder.cfg.history == 1 and getattr(observation_space, "shape", None) != input_shape(encoder.cfg):
            transposed = _channels_first(observation_space, tuple(encoder.cfg.frame_shape))
        check_fits(encoder, observation_space if transposed is None else transposed, f"encoder {path}")
        super().__init__(observation_space, encoder.dim)
        self.path, self.freeze, self.transposed = str(path), bool(freeze), transposed is not None
        if self.freeze:
            _freeze(encoder)
            encoder.eval()
        self.encoder: Encoder = encoder

    def apply(self, fn) -> PretrainedEncoder:
        """``fn`` on this module only: PPO/A2C's ``ortho_init`` re-initializes the extractor with
        ``features_extractor.apply(init_weights)``, which would overwrite the pretrained weights."""
        fn(self)
        return self

    def train(self, mode: bool = True) -> PretrainedEncoder:
        super().train(mode)
        if self.freeze:  # SB3 switches the whole policy to training mode for each update
            self.encoder.eval()
        return self

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        if self.transposed:  # C×H×W (VecTransposeImage) → the encoder's H×W×C
            observations = observations.permute(0, 2, 3, 1)
        if not self.freeze:
            return self.encoder(observations)
        with torch.no_grad():
            return self.encoder(observations)


def encoder_policy_kwargs(path: str | Path, freeze: bool = True) -> dict[str, Any]:
    """SB3 policy kwargs that make the encoder at ``path`` the policy's features extractor (and, for a pixel
    encoder, keep SB3 from scaling pixels that the encoder scales itself)."""
    cfg, _ = read_encoder_config(path)
    kwargs: dict[str, Any] = {
        "features_extractor_class": PretrainedEncoder,
        "features_extractor_kwargs": {"path": str(path), "freeze": bool(freeze)},
    }
    if np.dtype(cfg.frame_dtype) == np.uint8:  # pixels: the encoder takes them as 0..255 (a conv one scales them)
        kwargs["normalize_images"] = False
    return kwargs
