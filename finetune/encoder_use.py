"""A pretrained encoder under the offline learner (few-shot imitation, Brandfonbrener et al. 2023's protocol):
``learner.encoder.path=<model folder of retain pretrain objective=idm|...>``.

- ``freeze=true`` (the paper's protocol): every dataset is encoded once by the encoder (eval mode, no
  augmentation) and the BC policy is a head on the latent; at evaluation each observation is encoded first.
  The learner's weights — what methods regularize and checkpoints hold — are the head's; the encoder never
  changes (``retain.checkpoint`` would not need it).
- ``freeze=false``: the encoder is the policy's observation encoder and trains end to end with the head.
- ``scratch=true`` (no path): the same architecture (``arch``) freshly initialized and trained end to end —
  the "from scratch" row of the comparison.

With ``history`` > 1 the learner stacks each dataset's observations (the first of an episode repeated before
it, as ``FrameStackObservation`` pads at reset) and its evaluation envs stack theirs (``EnvSpec.frame_stack``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
import torch

from agents.encoders import (
    Encoder,
    EncoderConfig,
    build_encoder,
    check_fits,
    load_encoder,
    read_encoder_config,
    stacked_space,
)
from retain.errors import ConfigError


@dataclass
class EncoderUse:
    """``learner.encoder``: the observation encoder of learner=offline's policy."""

    path: str | None = None
    """a pretrained encoder folder (``<run_dir>/model`` of ``retain pretrain objective=idm|bc|fd|...``); null:
    the policy's own encoder (``learner.policy``), or a fresh one of ``arch`` with scratch=true"""
    freeze: bool = True
    """keep the pretrained encoder fixed and train a head on its latent (the paper's protocol)"""
    scratch: bool = False
    """no path: a freshly initialized encoder of ``arch``, trained end to end (the "from scratch" baseline)"""
    arch: EncoderConfig = field(default_factory=EncoderConfig)
    """scratch=true: its architecture (as objective.encoder)"""
    root: str = "runs/pretrain/idm_pointmass"
    """where the ``representation/`` group's options find pretrained encoders (``<objective>_seed0/model``, as
    the pretraining presets' sweeps write them); not read otherwise"""


def check_use(use: EncoderUse) -> None:
    if use.path and use.scratch:
        raise ConfigError("learner.encoder.path and learner.encoder.scratch=true", "use one: pretrained or scratch")


def history(use: EncoderUse) -> int:
    """Observations per input of the encoder ``use`` names (1 without one)."""
    check_use(use)
    if use.path:
        return read_encoder_config(use.path)[0].history
    return use.arch.history if use.scratch else 1


def build(use: EncoderUse, frame_space: gym.Space, where: str, device: torch.device) -> Encoder | None:
    """The encoder ``use`` asks for, fitted to ``frame_space`` (one observation), or None (the policy's own)."""
    if use.path:
        encoder = load_encoder(use.path)
    elif use.scratch:
        encoder = build_encoder(use.arch, frame_space)
    else:
        return None
    check_fits(encoder, stacked_space(frame_space, encoder.cfg.history), where)
    if use.freeze and use.path:
        encoder.requires_grad_(False)
    return encoder.to(device)


def fresh_copy(use: EncoderUse, encoder: Encoder, frame_space: gym.Space) -> Encoder:
    """The encoder a new trainable policy starts from: the pretrained weights, or (scratch) a new draw from the
    caller's seeded generator."""
    if use.scratch:
        return build_encoder(use.arch, frame_space).to(next(encoder.parameters()).device)
    return copy.deepcopy(encoder)


def describe(use: EncoderUse, encoder: Encoder | None) -> list[str]:
    if encoder is None:
        return []
    c = encoder.cfg
    arch = f"{c.kind}, latent {c.latent}, history {c.history}"
    if use.scratch:
        return [f"- encoder: from scratch ({arch}), trained end to end"]
    objective = getattr(encoder, "meta", {}).get("objective", "?")
    how = "frozen (the data encoded once, a head trained on the latent)" if use.freeze else "trained end to end"
    return [f"- encoder: `{use.path}` (objective `{objective}`, {arch}), {how}"]


@torch.no_grad()
def encode_all(encoder: Encoder, obs: torch.Tensor, batch: int = 2048) -> torch.Tensor:
    """Every row of ``obs`` through the (frozen, eval-mode) encoder, in batches."""
    encoder.eval()
    return torch.cat([encoder(obs[i : i + batch]) for i in range(0, len(obs), batch)]) if len(obs) else obs


def latent_space(encoder: Encoder) -> gym.spaces.Box:
    return gym.spaces.Box(-1.0, 1.0, shape=(encoder.dim,), dtype=np.float32)
