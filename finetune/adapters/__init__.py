"""Adaptation methods: how a pretrained Decision Transformer is tuned onto new tasks (``adapter=<name>``).

One small file each; ``apply_adapter`` adds what the method adds and leaves only its parameters trainable.

| adapter | trains | built with |
|---|---|---|
| full | everything | — |
| head | the action head | — |
| lora | LoRA on every block's fused QKV projection | peft |
| ia3 | (IA)^3 vectors on attention and feed-forward | peft |
| prompt | ``prompt_length`` prompt tokens | own (peft's wraps word embeddings) |
| prefix | per-layer key/value prefixes | own (``prefix.py``) |
| adapters | bottleneck adapters after each feed-forward | own (peft has none) |
| l2p | a pool of prompts chosen by learned keys | own (``l2p.py``) |
| l2m | a pool of LoRA or (IA)^3 modulations chosen by learned keys (or the task id) | own (``l2m.py``) |
"""

from __future__ import annotations

from dataclasses import fields

from finetune.adapters.base import AdapterConfig, freeze_all_but
from retain.errors import ConfigError

ADAPTERS = ("full", "head", "lora", "ia3", "prompt", "prefix", "adapters", "l2p", "l2m")
PEFT_MARKS = ("lora_", "ia3_")


def is_added(name: str) -> bool:
    """Whether parameter ``name`` is one an adapter added (not part of the pretrained network)."""
    return name.startswith("adaptation.") or any(m in name for m in PEFT_MARKS)


def check_adapter(cfg: AdapterConfig) -> None:
    if cfg.name not in ADAPTERS:
        raise ConfigError(f"unknown adapter {cfg.name!r}", f"use one of {', '.join(ADAPTERS)}")
    for key in ("rank", "prompt_length", "bottleneck", "pool_size", "top_k"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"adapter.{key}={getattr(cfg, key)}", f"use adapter.{key} >= 1")
    if cfg.lr is not None and not cfg.lr > 0:
        raise ConfigError(f"adapter.lr={cfg.lr}", "use a positive rate, or null for the learner's lr")


def apply_adapter(model, cfg: AdapterConfig) -> None:
    """Add ``cfg.name``'s parameters to ``model`` and make them (and only them, plus the head with
    ``train_head``) trainable."""
    check_adapter(cfg)
    name = cfg.name
    if name == "full":
        freeze_all_but(model, lambda n: not n.startswith("transformer.wte"))
        return
    if name == "lora":
        from finetune.adapters.peft_layers import apply_lora as add
    elif name == "ia3":
        from finetune.adapters.peft_layers import apply_ia3 as add
    elif name == "prompt":
        from finetune.adapters.prompt import apply as add
    elif name == "prefix":
        from finetune.adapters.prefix import apply as add
    elif name == "adapters":
        from finetune.adapters.bottleneck import apply as add
    elif name == "l2p":
        from finetune.adapters.l2p import apply as add
    elif name == "l2m":
        from finetune.adapters.l2m import apply as add
    else:  # head
        add = None
    if add is not None:
        add(model, cfg)
    freeze_all_but(
        model,
        lambda n: (
            n.startswith("adaptation.")
            or any(m in n for m in PEFT_MARKS)
            or ((cfg.train_head or name == "head") and n.startswith("head."))
        ),
    )


def adapter_config(raw: dict) -> AdapterConfig:
    known = {f.name for f in fields(AdapterConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"adapter has no keys {unknown}", f"adapter keys: {', '.join(sorted(known))}")
    return AdapterConfig(**raw)
