"""Policies trained from data: an observation encoder, an MLP trunk and an action head.

``build_policy(observation_space, action_space, cfg)`` fits the network to the spaces:

- observations: a flat ``Box`` goes in as is; an image ``Box`` (H×W×C, uint8) through a small conv net;
  a ``Dict`` (e.g. BabyAI's image + direction + mission) through one encoder per key, concatenated —
  ``Discrete`` keys one-hot, text keys as hashed word ids (``envs.text``) through a bag of embeddings;
- actions: ``Box`` — a tanh-squashed mean in the action bounds with a learned, state-independent log-std
  (``loss="mse"`` on the mean, or ``"nll"``: Gaussian negative log-likelihood); ``Discrete`` — logits
  (cross-entropy).

``policy(obs, actions)`` is the behaviour-cloning loss of a batch; ``policy.act(obs)`` the deterministic
action (mean or argmax). Observations are batched tensors (a dict of them for ``Dict`` spaces). With
``n_tasks > 0`` the policy also takes each row's task index and sees it one-hot next to the observation's
features (Continual World gives its agents the task id this way); index -1 (a task outside the sequence)
is all zeros. With ``heads > 1`` the output layer has one head per task and each row reads its task's head
(Continual World's multi-head setting).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import gymnasium as gym
import torch
import torch.nn.functional as F
from torch import nn

from retain.errors import ConfigError

LOSSES = ("auto", "mse", "nll", "ce")


@dataclass
class PolicyConfig:
    """A behaviour-cloning policy's network."""

    hidden: list[int] = field(default_factory=lambda: [256, 256])
    """widths of the MLP trunk"""
    activation: str = "ReLU"
    """a torch.nn activation by name"""
    conv_channels: list[int] = field(default_factory=lambda: [32, 64, 64])
    """channels of the image encoder's conv layers (stride 2 each)"""
    text_embedding: int = 64
    """width of the bag of word embeddings for text observations"""
    log_std_init: float = -1.0
    """initial log standard deviation of continuous actions (loss=nll)"""


def _activation(name: str) -> type[nn.Module]:
    if not isinstance(getattr(nn, name, None), type):
        raise ConfigError(f"policy activation {name!r} is not a torch.nn module", "use e.g. ReLU, Tanh or GELU")
    return getattr(nn, name)


def is_image(space: gym.Space) -> bool:
    return isinstance(space, gym.spaces.Box) and len(space.shape) == 3 and space.dtype == "uint8"


def is_tokens(space: gym.Space) -> bool:
    """Hashed word ids of a text observation (``envs.text.TextTokens``): a 1-D integer Box."""
    return isinstance(space, gym.spaces.Box) and len(space.shape) == 1 and space.dtype.kind in "iu"


class ImageEncoder(nn.Module):
    """uint8 H×W×C frames → conv layers (3×3, stride 2) → a flat feature vector."""

    def __init__(self, space: gym.spaces.Box, channels: list[int], activation: type[nn.Module]):
        super().__init__()
        h, w, c = space.shape
        layers, last = [], c
        for out in channels:
            layers += [nn.Conv2d(last, out, 3, stride=2, padding=1), activation()]
            last = out
        self.conv = nn.Sequential(*layers, nn.Flatten())
        with torch.no_grad():
            self.dim = int(self.conv(torch.zeros(1, c, h, w)).shape[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.permute(0, 3, 1, 2).float() / 255.0)


class TokenEncoder(nn.Module):
    """Hashed word ids (0 = padding) → the mean of their embeddings."""

    def __init__(self, space: gym.spaces.Box, dim: int):
        super().__init__()
        self.bag = nn.EmbeddingBag(int(space.high.max()) + 1, dim, mode="mean", padding_idx=0)
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bag(x.long())


class OneHot(nn.Module):
    def __init__(self, space: gym.spaces.Discrete):
        super().__init__()
        self.n = self.dim = int(space.n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.one_hot(x.long().reshape(-1), self.n).float()


class Flat(nn.Module):
    def __init__(self, space: gym.spaces.Box):
        super().__init__()
        self.dim = int(math.prod(space.shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float().reshape(len(x), -1)


def _encoder(space: gym.Space, cfg: PolicyConfig, activation: type[nn.Module]) -> nn.Module:
    if is_image(space):
        return ImageEncoder(space, cfg.conv_channels, activation)
    if is_tokens(space):
        return TokenEncoder(space, cfg.text_embedding)
    if isinstance(space, gym.spaces.Discrete):
        return OneHot(space)
    if isinstance(space, gym.spaces.Box):
        return Flat(space)
    raise ConfigError(
        f"observation space {space} is not supported by the BC policy",
        "use Box (flat or uint8 images), Discrete, Dict of those, or text as hashed tokens (envs.text)",
    )


class ObservationEncoder(nn.Module):
    """One encoder per observation (per key of a Dict space), concatenated."""

    def __init__(self, space: gym.Space, cfg: PolicyConfig, activation: type[nn.Module]):
        super().__init__()
        self.keys = list(space.spaces) if isinstance(space, gym.spaces.Dict) else None
        spaces = space.spaces if self.keys else {"obs": space}
        self.parts = nn.ModuleDict({k: _encoder(s, cfg, activation) for k, s in spaces.items()})
        self.dim = sum(p.dim for p in self.parts.values())

    def forward(self, obs) -> torch.Tensor:
        if self.keys is None:
            return self.parts["obs"](obs)
        return torch.cat([self.parts[k](obs[k]) for k in self.keys], dim=-1)


class BCPolicy(nn.Module):
    """Encoder → MLP trunk → action head; see the module docstring."""

    def __init__(
        self,
        observation_space: gym.Space,
        action_space: gym.Space,
        cfg: PolicyConfig,
        loss: str = "auto",
        n_tasks: int = 0,
        heads: int = 1,
        encoder: nn.Module | None = None,
    ):
        super().__init__()
        activation = _activation(cfg.activation)
        # a given encoder (a pretrained or fresh ``agents.encoders.Encoder``, with its ``dim``) replaces the default
        self.encoder = encoder if encoder is not None else ObservationEncoder(observation_space, cfg, activation)
        self.n_tasks, self.heads = n_tasks, heads
        layers, last = [], self.encoder.dim + n_tasks
        for width in cfg.hidden:
            layers += [nn.Linear(last, width), activation()]
            last = width
        self.trunk = nn.Sequential(*layers)
        self.discrete = isinstance(action_space, gym.spaces.Discrete)
        if self.discrete:
            self.head = nn.Linear(last, heads * int(action_space.n))
        elif isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1:
            if not (action_space.is_bounded("both")):
                raise ConfigError(f"action space {action_space} is unbounded", "BC policies squash into finite bounds")
            self.head = nn.Linear(last, heads * action_space.shape[0])
            self.log_std = nn.Parameter(torch.full((action_space.shape[0],), float(cfg.log_std_init)))
            self.register_buffer("low", torch.as_tensor(action_space.low, dtype=torch.float32))
            self.register_buffer("high", torch.as_tensor(action_space.high, dtype=torch.float32))
        else:
            raise ConfigError(f"action space {action_space} is not supported", "use Discrete or a 1-D Box")
        self.loss_kind = check_loss(loss, self.discrete)

    def _features(self, obs, task: torch.Tensor | None) -> torch.Tensor:
        features = self.encoder(obs)
        if not self.n_tasks:
            return features
        if task is None:
            raise ValueError("this policy is conditioned on the task: pass each row's task index")
        onehot = F.one_hot(task.long().clamp_min(0), self.n_tasks).float() * (task >= 0).unsqueeze(-1)
        return torch.cat([features, onehot.to(features.dtype)], dim=-1)

    def _raw(self, obs, task: torch.Tensor | None = None) -> torch.Tensor:
        """Logits, or the action mean before its tanh squashing."""
        out = self.head(self.trunk(self._features(obs, task)))
        if self.heads > 1:  # one head per task: each row reads its task's (a task outside the sequence: head 0)
            if task is None:
                raise ValueError("this policy has one head per task: pass each row's task index")
            out = out.view(len(out), self.heads, -1)[
                torch.arange(len(out), device=out.device), task.long().clamp_min(0)
            ]
        return out

    def _out(self, obs, task: torch.Tensor | None = None) -> torch.Tensor:
        out = self._raw(obs, task)
        if self.discrete:
            return out
        return self.low + (torch.tanh(out) + 1.0) * 0.5 * (self.high - self.low)

    def forward(self, obs, actions: torch.Tensor, task: torch.Tensor | None = None) -> torch.Tensor:
        """The behaviour-cloning loss of a batch (``forward``, so ``torch.compile`` compiles the training step)."""
        out = self._out(obs, task)
        if self.loss_kind == "ce":
            return F.cross_entropy(out, actions.long().reshape(-1))
        if self.loss_kind == "mse":
            return F.mse_loss(out, actions.float())
        std = self.log_std.exp()
        return -torch.distributions.Normal(out, std).log_prob(actions.float()).sum(-1).mean()

    def gaussian(self, obs, task: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per row, the mean and std of the Gaussian over actions (continuous actions)."""
        out = self._out(obs, task)
        return out, self.log_std.exp().expand_as(out)

    def log_likelihood(self, obs, actions: torch.Tensor, task: torch.Tensor | None = None) -> torch.Tensor:
        """Per-row log-likelihood of ``actions`` under the policy (Gaussian with the learned std; categorical)."""
        out = self._out(obs, task)
        if self.discrete:
            return F.log_softmax(out, -1).gather(-1, actions.long().reshape(-1, 1)).squeeze(-1)
        return torch.distributions.Normal(out, self.log_std.exp()).log_prob(actions.float()).sum(-1)

    def output_norm(self, obs, task: torch.Tensor | None = None) -> torch.Tensor:
        """Per-row squared norm of the outputs: logits, or the mean (before squashing, as Continual World takes
        SAC's: a squashed mean at the action bounds has no gradient left) and log-std of the action distribution."""
        out = self._raw(obs, task)
        norm = out.pow(2).sum(-1)
        return norm if self.discrete else norm + self.log_std.pow(2).sum()

    @torch.no_grad()
    def act(self, obs, task: torch.Tensor | None = None) -> torch.Tensor:
        out = self._out(obs, task)
        return out.argmax(-1) if self.discrete else out


def check_loss(loss: str, discrete: bool) -> str:
    """The loss ``loss`` resolves to for discrete or continuous actions (``auto``: ce, or mse)."""
    if loss not in LOSSES:
        raise ConfigError(f"unknown BC loss {loss!r}", f"use one of {', '.join(LOSSES)}")
    if loss == "auto":
        return "ce" if discrete else "mse"
    if (loss == "ce") != discrete:
        want = "ce" if discrete else "mse or nll"
        raise ConfigError(f"loss={loss} does not fit {'discrete' if discrete else 'continuous'} actions", f"use {want}")
    return loss


def build_policy(
    observation_space: gym.Space,
    action_space: gym.Space,
    cfg: PolicyConfig,
    loss: str = "auto",
    n_tasks: int = 0,
    heads: int = 1,
    encoder: nn.Module | None = None,
) -> BCPolicy:
    return BCPolicy(observation_space, action_space, cfg, loss, n_tasks, heads, encoder)
