"""Observation encoders φ that pretraining objectives learn and policies reuse: an MLP for states, a conv net
with a spatial softmax for pixels, both ending in a normalized latent.

- ``kind="mlp"``: flat observations → MLP (``hidden``) → ``latent``;
- ``kind="conv"``: uint8 H×W×C frames scaled to [0, 1] → 3×3 conv layers with GELU (Brandfonbrener et al.'s
  D4PG-style stack: channels 32, 64, 128, 256, strides 2, 2, 1, 1, no padding) → a 1×1 conv to ``keypoints``
  maps → a spatial softmax (Levine et al. 2016: per map, the expected image coordinates of its activation, so
  the net outputs *where* things are) → linear → ``latent``;
- both end in LayerNorm then tanh (the "normalized 64-d latent" of Brandfonbrener et al. 2023), so objectives
  that compare latents (contrastive, forward dynamics in latent space) cannot shrink or blow up the scale.

``history`` > 1 stacks that many consecutive observations (the oldest first) as the encoder's input: an
encoder of one frame cannot see velocity. The input space is then ``(history, *frame)`` — what gymnasium's
``FrameStackObservation`` gives (``EnvSpec.frame_stack``) — and pixels are stacked along channels.

An encoder is a shareable folder: ``model.safetensors`` + ``config.json`` (``model_type: retain_encoder``,
the architecture, the frame shape and dtype, and what pretrained it), written atomically by ``save_encoder``
and read by ``load_encoder``, which turns a bad path or a damaged file into a one-line error.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from retain.errors import ConfigError

WEIGHTS, CONFIG = "model.safetensors", "config.json"
MODEL_TYPE = "retain_encoder"
KINDS = ("auto", "mlp", "conv")


@dataclass
class EncoderConfig:
    """The encoder's architecture (the frame fields are filled from the data's observation space)."""

    kind: str = "auto"
    """auto (conv for uint8 images, mlp for flat observations) | mlp | conv"""
    latent: int = 64
    """width of the normalized latent φ(o)"""
    hidden: list[int] = field(default_factory=lambda: [256, 256])
    """mlp: hidden widths"""
    channels: list[int] = field(default_factory=lambda: [32, 64, 128, 256])
    """conv: channels of the 3x3 conv layers"""
    strides: list[int] = field(default_factory=lambda: [2, 2, 1, 1])
    """conv: the stride of each conv layer"""
    keypoints: int = 256
    """conv: maps the spatial softmax turns into (x, y) keypoints"""
    history: int = 1
    """consecutive observations stacked as one input (>1 lets a pixel encoder see velocity)"""
    frame_shape: list[int] = field(default_factory=list)
    """one observation's shape (filled by ``encoder_config``)"""
    frame_dtype: str = "float32"
    """one observation's dtype: uint8 (pixels) | float32"""


def is_frame_image(shape, dtype) -> bool:
    return len(shape) == 3 and np.dtype(dtype) == np.uint8


def encoder_config(cfg: EncoderConfig, frame_space: gym.Space) -> EncoderConfig:
    """``cfg`` completed for observations of ``frame_space`` (one frame, before stacking), checked."""
    if not isinstance(frame_space, gym.spaces.Box):
        raise ConfigError(
            f"the encoder takes Box observations (state or pixels), not {frame_space}",
            "pretrain encoders on state or pixel tasks (BabyAI has the LM policy instead)",
        )
    image = is_frame_image(frame_space.shape, frame_space.dtype)
    kind = cfg.kind if cfg.kind != "auto" else ("conv" if image else "mlp")
    if kind not in KINDS[1:]:
        raise ConfigError(f"encoder kind {cfg.kind!r}", "use auto, mlp or conv")
    if kind == "conv" and not image:
        raise ConfigError(f"a conv encoder takes uint8 HxWxC frames, not {frame_space}", "use kind=mlp or auto")
    if kind == "conv" and (len(cfg.strides) != len(cfg.channels) or not cfg.channels or cfg.keypoints < 1):
        raise ConfigError(
            f"conv encoder channels={list(cfg.channels)}, strides={list(cfg.strides)}, keypoints={cfg.keypoints}",
            "give one stride per conv layer, at least one layer, and keypoints >= 1",
        )
    if cfg.history < 1 or cfg.latent < 1:
        raise ConfigError(f"encoder history={cfg.history}, latent={cfg.latent}", "use history >= 1 and latent >= 1")
    return EncoderConfig(
        kind=kind,
        latent=cfg.latent,
        hidden=list(cfg.hidden),
        channels=list(cfg.channels),
        strides=list(cfg.strides),
        keypoints=cfg.keypoints,
        history=cfg.history,
        frame_shape=[int(d) for d in frame_space.shape],
        frame_dtype=str(np.dtype(frame_space.dtype)),
    )


def input_shape(cfg: EncoderConfig) -> tuple[int, ...]:
    """The shape of one encoder input: a frame, or ``(history, *frame)``."""
    frame = tuple(cfg.frame_shape)
    return frame if cfg.history == 1 else (cfg.history, *frame)


class SpatialSoftmax(nn.Module):
    """(B, C, H, W) feature maps → (B, 2C): per channel, the softmax-weighted mean x and y in [-1, 1]."""

    def __init__(self, height: int, width: int):
        super().__init__()
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
        self.register_buffer("grid", torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        attention = F.softmax(x.flatten(2), dim=-1)  # (B, C, HW)
        return (attention @ self.grid).flatten(1)  # (B, C, 2) → (B, 2C)


class Encoder(nn.Module):
    """φ: observations (``input_shape(cfg)``, batched) → ``(B, latent)``; see the module docstring."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg, self.dim = cfg, cfg.latent
        self.pixels = cfg.kind == "conv"
        if self.pixels:
            h, w, c = cfg.frame_shape
            layers, last = [], c * cfg.history
            for out, stride in zip(cfg.channels, cfg.strides, strict=True):
                layers += [nn.Conv2d(last, out, 3, stride=stride), nn.GELU()]
                last = out
            self.body = nn.Sequential(*layers, nn.Conv2d(last, cfg.keypoints, 1))
            with torch.no_grad():
                _, _, fh, fw = self.body(torch.zeros(1, c * cfg.history, h, w)).shape
            self.pool = SpatialSoftmax(fh, fw)
            width = 2 * cfg.keypoints
        else:
            layers, width = [], int(np.prod(cfg.frame_shape)) * cfg.history
            for out in cfg.hidden:
                layers += [nn.Linear(width, out), nn.GELU()]
                width = out
            self.body = nn.Sequential(*layers)
        self.project = nn.Linear(width, cfg.latent)
        self.norm = nn.LayerNorm(cfg.latent)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        n = len(obs)
        if self.pixels:
            h, w, c = self.cfg.frame_shape
            x = obs.reshape(n, -1, h, w, c).permute(0, 1, 4, 2, 3).reshape(n, -1, h, w).float() / 255.0
            features = self.pool(self.body(x))
        else:
            features = self.body(obs.reshape(n, -1).float())
        return torch.tanh(self.norm(self.project(features)))


def build_encoder(cfg: EncoderConfig, frame_space: gym.Space) -> Encoder:
    return Encoder(encoder_config(cfg, frame_space))


def save_encoder(
    encoder: Encoder,
    folder: str | Path,
    meta: dict[str, Any] | None = None,
    heads: dict[str, dict[str, torch.Tensor]] | None = None,
) -> Path:
    """``model.safetensors`` + ``config.json`` (the architecture and ``meta``: objective, pretraining tasks),
    plus ``<name>.safetensors`` per entry of ``heads`` (e.g. the inverse-dynamics head ``retain label`` uses),
    written as one folder that appears whole or not at all."""
    from safetensors.torch import save_file

    from retain.io import atomic_path

    folder = Path(folder)
    weights = {k: v.detach().contiguous().cpu() for k, v in encoder.state_dict().items()}
    with atomic_path(folder, directory=True) as tmp:
        save_file(weights, str(tmp / WEIGHTS), metadata={"format": "pt", "retain": MODEL_TYPE})
        for name, state in (heads or {}).items():
            save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp / f"{name}.safetensors"))
        config = {"model_type": MODEL_TYPE, **asdict(encoder.cfg), "meta": meta or {}}
        (tmp / CONFIG).write_text(json.dumps(config, indent=2))
    return folder


def read_encoder_config(folder: str | Path) -> tuple[EncoderConfig, dict[str, Any]]:
    """The architecture and meta of the encoder folder ``folder``, checked."""
    path = Path(folder).expanduser() / CONFIG
    fix = "pass the model/ folder of a `retain pretrain objective=<idm|bc|fd|fd_contrastive|contrastive>` run"
    if not path.is_file():
        raise ConfigError(f"no encoder at {folder} ({CONFIG} missing)", fix)
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read {path}: {e}", fix) from e
    if not isinstance(raw, dict) or raw.get("model_type") != MODEL_TYPE:
        raise ConfigError(f"{path} is not a retain encoder (model_type {raw.get('model_type')!r})", fix)
    known = set(EncoderConfig.__dataclass_fields__)
    return EncoderConfig(**{k: v for k, v in raw.items() if k in known}), raw.get("meta", {})


def load_encoder(folder: str | Path) -> Encoder:
    """A pretrained encoder from its folder (what ``save_encoder`` wrote); ``encoder.meta`` holds its meta."""
    from safetensors.torch import load_file

    from retain.checkpoint import check_shapes

    cfg, meta = read_encoder_config(folder)
    encoder = Encoder(cfg)
    path = Path(folder).expanduser() / WEIGHTS
    try:
        weights = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise ConfigError(f"cannot read {path}: {e}", "re-run the pretraining or fix the path") from e
    check_shapes(encoder.state_dict(), weights, str(path))
    encoder.load_state_dict(weights)
    encoder.meta = meta
    return encoder


def check_fits(encoder: Encoder, space: gym.Space, where: str) -> None:
    """``space`` (a task's observations, stacked if the encoder has a history) is what ``encoder`` takes."""
    want = input_shape(encoder.cfg)
    dtype = np.dtype(encoder.cfg.frame_dtype)
    if (
        not isinstance(space, gym.spaces.Box)
        or tuple(space.shape) != want
        or (dtype == np.uint8) != (np.dtype(space.dtype) == np.uint8)
    ):
        raise ConfigError(
            f"{where}: observations {space} do not fit the encoder (it takes {want} {dtype})",
            "tune it on tasks of the observation kind it was pretrained on (state or pixels, same size)",
        )


def stacked_space(frame: gym.spaces.Box, history: int) -> gym.spaces.Box:
    """The space of ``history`` stacked frames (what ``FrameStackObservation`` gives); the frame if 1."""
    if history == 1:
        return frame
    low = np.repeat(frame.low[None], history, axis=0)
    high = np.repeat(frame.high[None], history, axis=0)
    return gym.spaces.Box(low, high, dtype=frame.dtype)


def stack_history(obs: np.ndarray, episode_starts: np.ndarray, history: int) -> np.ndarray:
    """(N, *frame) observations → (N, history, *frame), the oldest first, each episode's first one repeated
    before it."""
    rows = np.arange(len(obs))
    starts = np.asarray(episode_starts, dtype=np.int64)
    first = starts[np.searchsorted(starts, rows, side="right") - 1]
    index = np.maximum(rows[:, None] - np.arange(history - 1, -1, -1)[None, :], first[:, None])
    return obs[index]
