"""The multi-domain Decision Transformer of Learning-to-Modulate (Schmied et al. 2023) on transformers' GPT-2.

Every timestep of a context window becomes four tokens, in the order ``[return-to-go, state, action,
reward]``, each embedded into the model width and summed with a learned timestep embedding:

- **state**: zero-padded to the largest observation size of any domain (``state_dim``), one linear token;
- **return-to-go** and **reward**: one linear token each (scaled by ``rtg_scale``);
- **action**: every dimension min-max binned into ``n_bins`` bins over [-1, 1] (actions are mapped there
  from the action space's bounds first); the token is the sum of one embedding per (dimension, bin), and a
  dimension the domain does not have uses a shared pad embedding.

The transformer (``GPT2Model`` fed ``inputs_embeds``, so any GPT-2 size loads) reads the window causally;
the hidden state of each state token predicts that timestep's action as ``act_dim`` categorical
distributions over the bins (cross-entropy per dimension, padded dimensions and padded timesteps masked).
At evaluation the action is each dimension's most likely bin centre, with the return-to-go started at the
task's target return (L2M: twice the best return in its data).

Adaptation methods (``finetune/adapters``) plug in through ``adaptation``: a module that may prepend tokens
(prompts) and route each row through modulation weights, chosen from a query made of the state tokens'
embeddings — L2M's pool selects by it.

``kind="continuous"`` is the single-domain Decision Transformer of Chen et al. (2021) as transformers ships it
(``DecisionTransformerModel``: return-to-go, state and action tokens, continuous actions through a tanh, MSE),
behind the same interface (``ContinuousDT``), for one domain's continuous control.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

WEIGHTS, CONFIG = "model.safetensors", "config.json"
TOKENS_PER_STEP = 4  # return-to-go, state, action, reward
RTG, STATE, ACTION, REWARD = range(TOKENS_PER_STEP)


KINDS = ("multidomain", "continuous")


@dataclass
class DTConfig:
    """The network; the defaults are the tiny size of tests and CPU presets (L2M: 6 layers x 768, 12 heads)."""

    kind: str = "multidomain"
    """multidomain: L2M's tokens and binned actions (DecisionTransformer) | continuous: transformers'
    DecisionTransformerModel, one domain, MSE on continuous actions (ContinuousDT)"""
    state_dim: int = 39
    """observations are zero-padded to this size (the largest of any domain; Meta-World: 39)"""
    act_dim: int = 4
    """action dimensions of the widest domain (Meta-World: 4; DMControl's up to 6)"""
    n_bins: int = 64
    """bins per action dimension over [-1, 1]"""
    context: int = 5
    """timesteps in the window the model reads (L2M: 5)"""
    n_layer: int = 2
    n_head: int = 2
    n_embd: int = 64
    dropout: float = 0.1
    activation: str = "gelu"
    """the feed-forward activation (transformers' names): exact GELU is one fused kernel; at the tiny size a CPU
    update took 28.0 ms with it and 38.9 ms with GPT-2's tanh approximation (gelu_new), side by side"""
    max_timestep: int = 1000
    """the largest episode step the timestep embedding covers"""
    max_prefix: int = 32
    """room for prepended tokens (prompt tuning, L2P) in GPT-2's position table"""
    rtg_scale: float = 1000.0
    """returns-to-go and rewards are divided by this"""
    task_targets: dict[str, float] = field(default_factory=dict)
    """target return-to-go per task at evaluation (2x the best return in its data)"""
    task_dims: dict[str, list[int]] = field(default_factory=dict)
    """per task: its observation size and action dimensions (for loading it onto new domains)"""
    pretrain_tasks: dict[str, dict] = field(default_factory=dict)
    """the tasks it was pretrained on, {name: env spec}: tuning jobs score them again (retention)"""


def window_mean(entries: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The mean of ``entries`` (B, K, A) over each window's ``valid`` ones, then over windows."""
    valid = valid.to(entries.dtype)
    per_window = (entries * valid).flatten(1).sum(1) / valid.flatten(1).sum(1).clamp_min(1.0)
    return per_window.mean()


class DecisionTransformer(nn.Module):
    """See the module docstring. ``forward`` is the training loss; ``action_logits`` what acting uses."""

    def __init__(self, cfg: DTConfig):
        super().__init__()
        from transformers import GPT2Config, GPT2Model

        self.cfg = cfg
        d = cfg.n_embd
        gpt = GPT2Config(
            vocab_size=1,  # tokens come in as inputs_embeds
            bos_token_id=None,
            eos_token_id=None,
            n_positions=TOKENS_PER_STEP * cfg.context + cfg.max_prefix,
            n_embd=d,
            n_layer=cfg.n_layer,
            n_head=cfg.n_head,
            n_inner=4 * d,
            activation_function=cfg.activation,
            resid_pdrop=cfg.dropout,
            embd_pdrop=cfg.dropout,
            attn_pdrop=cfg.dropout,
        )
        self.transformer = GPT2Model(gpt)
        self.transformer.wte.weight.requires_grad_(False)  # unused: inputs are embeddings
        self.embed_state = nn.Linear(cfg.state_dim, d)
        self.embed_rtg = nn.Linear(1, d)
        self.embed_reward = nn.Linear(1, d)
        self.embed_action = nn.Embedding(cfg.act_dim * cfg.n_bins + 1, d)  # the last one: a missing dimension
        self.embed_timestep = nn.Embedding(cfg.max_timestep, d)
        self.embed_ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, cfg.act_dim * cfg.n_bins)
        self.register_buffer("bin_offsets", torch.arange(cfg.act_dim) * cfg.n_bins, persistent=False)
        self.adaptation: nn.Module | None = None
        self.discrete = True  # for continual methods: outputs are categorical (EWC's empirical Fisher)
        self.loss_kind = "ce"

    # -- tokens ------------------------------------------------------------------------------------------

    def embed(self, obs: dict[str, torch.Tensor], actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The window as ``(B, 4K, d)`` token embeddings and the ``(B, K, d)`` state embeddings (L2M's query)."""
        time = self.embed_timestep(obs["timesteps"].clamp(0, self.cfg.max_timestep - 1))
        states = self.embed_state(obs["states"])
        pad = self.cfg.act_dim * self.cfg.n_bins
        index = torch.where(actions >= 0, actions + self.bin_offsets, torch.full_like(actions, pad))
        tokens = torch.stack(
            [
                self.embed_rtg(obs["rtg"].unsqueeze(-1)) + time,
                states + time,
                self.embed_action(index).sum(-2) + time,
                self.embed_reward(obs["rewards"].unsqueeze(-1)) + time,
            ],
            dim=2,
        )  # B, K, 4, d
        b, k = actions.shape[:2]
        return self.embed_ln(tokens.reshape(b, k * TOKENS_PER_STEP, -1)), states

    def hidden(self, obs: dict[str, torch.Tensor], actions: torch.Tensor, task: torch.Tensor | None) -> torch.Tensor:
        """The state tokens' last hidden states, ``(B, K, d)``."""
        tokens, states = self.embed(obs, actions)
        mask = obs["mask"].repeat_interleave(TOKENS_PER_STEP, dim=1).to(tokens.dtype)
        prefix = 0
        if self.adaptation is not None:
            extra = self.adaptation.begin(states, obs["mask"], task)
            if extra is not None:  # prompts go in front of the window, always attended
                prefix = extra.shape[1]
                tokens = torch.cat([extra.to(tokens.dtype), tokens], dim=1)
                mask = torch.cat([torch.ones(mask.shape[0], prefix, dtype=mask.dtype, device=mask.device), mask], 1)
        past = self.adaptation.past(tokens.shape[0]) if hasattr(self.adaptation, "past") else None
        kwargs = {}
        if past is not None:  # prefix tuning: per-layer keys and values in front, always attended
            cache, length = past
            mask = torch.cat([torch.ones(mask.shape[0], length, dtype=mask.dtype, device=mask.device), mask], 1)
            kwargs = {"cache": cache, "use_cache": True}
        try:
            out = self.transformer(inputs_embeds=tokens, attention_mask=mask, **kwargs).last_hidden_state
        finally:
            if self.adaptation is not None:
                self.adaptation.end()
        b, k = actions.shape[:2]
        return out[:, prefix:].reshape(b, k, TOKENS_PER_STEP, -1)[:, :, STATE]

    def logits(self, obs, actions, task=None) -> torch.Tensor:
        """``(B, K, act_dim, n_bins)``: each timestep's action distribution, from its state token."""
        h = self.hidden(obs, actions, task)
        return self.head(h).view(*h.shape[:2], self.cfg.act_dim, self.cfg.n_bins)

    def _valid(self, obs, actions) -> torch.Tensor:
        """Which (row, timestep, dimension) entries are real actions: not padding, not a missing dimension."""
        return obs["mask"].unsqueeze(-1) & (actions >= 0)

    # -- what learners and methods call -----------------------------------------------------------------

    def forward(self, obs, actions: torch.Tensor, task: torch.Tensor | None = None) -> torch.Tensor:
        """Cross-entropy over every real action dimension of every timestep, averaged per window and then over
        windows (so N data-parallel processes, each averaging its rows, average to the same loss), plus the
        adaptation's own loss (L2M's key loss), if any."""
        logits = self.logits(obs, actions, task)
        valid = self._valid(obs, actions)
        entries = F.cross_entropy(logits.float().flatten(0, 2), actions.clamp_min(0).flatten(), reduction="none")
        loss = window_mean(entries.view_as(actions), valid)
        aux = self.adaptation.aux_loss() if self.adaptation is not None else None
        return loss if aux is None else loss + aux

    def log_likelihood(self, obs, actions, task=None) -> torch.Tensor:
        """Per row, the log-likelihood of its last timestep's action (EWC's empirical Fisher)."""
        logp = F.log_softmax(self.logits(obs, actions, task)[:, -1].float(), -1)
        last = actions[:, -1]
        picked = logp.gather(-1, last.clamp_min(0).unsqueeze(-1)).squeeze(-1)
        return (picked * (last >= 0)).sum(-1)

    def output_norm(self, obs, task=None, actions: torch.Tensor | None = None) -> torch.Tensor:
        """Per row, the squared norm of the last timestep's logits (MAS)."""
        return self.logits(obs, actions, task)[:, -1].float().pow(2).sum((-1, -2))

    @torch.no_grad()
    def act_bins(self, obs, actions, task=None) -> torch.Tensor:
        """The most likely bin of every dimension at each row's last timestep, ``(B, act_dim)``."""
        return self.logits(obs, actions, task)[:, -1].argmax(-1)

    def bin_centres(self, bins: torch.Tensor) -> torch.Tensor:
        return -1.0 + 2.0 * bins.float() / (self.cfg.n_bins - 1)

    @torch.no_grad()
    def act_unit(self, obs, actions, task=None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(what the context records, the action in [-1, 1])`` at each row's last timestep: bins and centres."""
        bins = self.act_bins(obs, actions, task)
        return bins, self.bin_centres(bins)

    # -- the shareable artifact --------------------------------------------------------------------------

    def save(self, folder: str | Path) -> Path:
        """``model.safetensors`` (the backbone only: adaptation weights belong to the tuning) and
        ``config.json``, written as one folder that appears whole or not at all."""
        from safetensors.torch import save_file

        from retain.io import atomic_path

        folder = Path(folder)
        weights = {k: v.detach().contiguous().cpu() for k, v in backbone_state(self).items()}
        with atomic_path(folder, directory=True) as tmp:
            save_file(weights, str(tmp / WEIGHTS), metadata={"format": "pt", "retain": "decision_transformer"})
            (tmp / CONFIG).write_text(json.dumps({"model_type": "retain_dt", **asdict(self.cfg)}, indent=2))
        return folder


class ContinuousDT(nn.Module):
    """transformers' ``DecisionTransformerModel`` behind the ``DecisionTransformer`` interface: windows come in as
    the same dict, ``actions`` are the continuous actions in [-1, 1] (``(B, K, act_dim)``), the loss is the MSE
    of the predicted actions over real timesteps. GPT-2 blocks (``transformer``) take peft's LoRA and (IA)^3."""

    discrete = False
    loss_kind = "mse"

    def __init__(self, cfg: DTConfig):
        super().__init__()
        from transformers import DecisionTransformerConfig, DecisionTransformerModel

        self.cfg = cfg
        config = DecisionTransformerConfig(
            state_dim=cfg.state_dim,
            act_dim=cfg.act_dim,
            hidden_size=cfg.n_embd,
            n_layer=cfg.n_layer,
            n_head=cfg.n_head,
            n_inner=4 * cfg.n_embd,
            activation_function=cfg.activation,
            max_ep_len=cfg.max_timestep,
            n_positions=3 * cfg.context,
            resid_pdrop=cfg.dropout,
            embd_pdrop=cfg.dropout,
            attn_pdrop=cfg.dropout,
            action_tanh=True,
            bos_token_id=None,
            eos_token_id=None,
        )
        self.model = DecisionTransformerModel(config)
        self.adaptation: nn.Module | None = None

    @property
    def transformer(self) -> nn.Module:
        return self.model.encoder

    def predict(self, obs, actions, task=None) -> torch.Tensor:
        out = self.model(
            states=obs["states"],
            actions=actions.float(),
            rewards=obs["rewards"].unsqueeze(-1),
            returns_to_go=obs["rtg"].unsqueeze(-1),
            timesteps=obs["timesteps"].clamp(0, self.cfg.max_timestep - 1),
            attention_mask=obs["mask"].long(),
            return_dict=True,
        )
        return out.action_preds

    def forward(self, obs, actions: torch.Tensor, task: torch.Tensor | None = None) -> torch.Tensor:
        """Squared error of every action dimension of every real timestep, averaged per window, then over windows."""
        preds = self.predict(obs, actions, task)
        entries = (preds.float() - actions.float()).pow(2)
        return window_mean(entries, obs["mask"].unsqueeze(-1).expand_as(entries))

    def log_likelihood(self, obs, actions, task=None) -> torch.Tensor:
        """A unit Gaussian's log-likelihood (up to a constant) of each row's last action (EWC)."""
        preds = self.predict(obs, actions, task)[:, -1].float()
        return -0.5 * (preds - actions[:, -1].float()).pow(2).sum(-1)

    def output_norm(self, obs, task=None, actions: torch.Tensor | None = None) -> torch.Tensor:
        return self.predict(obs, actions, task)[:, -1].float().pow(2).sum(-1)

    @torch.no_grad()
    def act_unit(self, obs, actions, task=None) -> tuple[torch.Tensor, torch.Tensor]:
        action = self.predict(obs, actions, task)[:, -1].float()
        return action, action

    save = DecisionTransformer.save


def build_dt(cfg: DTConfig) -> nn.Module:
    """The Decision Transformer ``cfg.kind`` names."""
    if cfg.kind not in KINDS:
        from retain.errors import ConfigError

        raise ConfigError(f"model.kind={cfg.kind!r}", f"use one of {', '.join(KINDS)}")
    return DecisionTransformer(cfg) if cfg.kind == "multidomain" else ContinuousDT(cfg)


def backbone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The pretrained network's weights: everything but the adaptation's and peft's added parameters."""
    return {
        k.replace(".base_layer.", "."): v  # peft keeps the wrapped layer's weights under base_layer
        for k, v in model.state_dict().items()
        if not k.startswith("adaptation.") and not any(t in k for t in ("lora_", "ia3_"))
    }


def dt_config(folder: str | Path) -> DTConfig:
    from retain.errors import ConfigError

    path = Path(folder) / CONFIG
    try:
        raw: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"no Decision Transformer config at {path} ({e})", "give the model/ folder `retain pretrain` wrote"
        ) from e
    if raw.pop("model_type", None) != "retain_dt":
        raise ConfigError(
            f"{path} is not a retain Decision Transformer",
            "give the model/ folder `retain pretrain objective=dt` wrote",
        )
    known = DTConfig.__dataclass_fields__
    return DTConfig(**{k: v for k, v in raw.items() if k in known})


def load_dt(folder: str | Path) -> nn.Module:
    """A pretrained Decision Transformer from its folder (what ``DecisionTransformer.save`` wrote)."""
    from safetensors.torch import load_file

    from retain.checkpoint import check_shapes
    from retain.errors import ConfigError

    model = build_dt(dt_config(folder))
    path = Path(folder) / WEIGHTS
    try:
        weights = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise ConfigError(f"cannot read {path}: {e}", "re-run `retain pretrain objective=dt` or fix the path") from e
    check_shapes(backbone_state(model), weights, str(path))
    model.load_state_dict(weights, strict=False)
    return model
