"""Language models and tokenizers for continual pretraining: any transformers causal LM, from a local
path, a hub name (when the hub is reachable), or a config (random init, for tests and tiny demos);
and a byte-level BPE tokenizer trained here when no pretrained one is given, so defaults run offline.

Remote code is never trusted unless the config says so (``trust_remote_code: false`` by default).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retain.errors import ConfigError


def llama_config(
    hidden_size: int = 128,
    layers: int = 4,
    heads: int | None = None,
    kv_heads: int | None = None,
    intermediate_size: int | None = None,
    max_positions: int = 512,
    **extra: Any,
) -> dict[str, Any]:
    """The transformers config dict (``model_type: llama``) of a randomly initialised Llama, for ``ModelConfig.config``.

    ``heads`` defaults to one per 32 dims of width, ``kv_heads`` to ``heads`` (no grouped-query attention),
    ``intermediate_size`` to 3x the width; ``extra`` adds any other Llama config key (``vocab_size``,
    ``tie_word_embeddings``, ...). The defaults are the offline default model (``configs/model/tiny_llama.yaml``).
    """
    heads = heads or max(1, hidden_size // 32)
    return {
        "model_type": "llama",
        "hidden_size": hidden_size,
        "intermediate_size": intermediate_size or 3 * hidden_size,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads or heads,
        "max_position_embeddings": max_positions,
        **extra,
    }


@dataclass
class ModelConfig:
    """Which language model to train, and its tokenizer."""

    name_or_path: str | None = None
    """a local folder or hub name of a pretrained causal LM; None builds one from `config` (random init)"""
    config: dict[str, Any] = field(default_factory=llama_config)
    """transformers config keys of a randomly initialised model (model_type picks the architecture)"""
    tokenizer: str | None = None
    """a local folder or hub name of a tokenizer; None uses name_or_path's, or trains a BPE tokenizer on the data"""
    vocab_size: int = 4096
    """vocabulary of a tokenizer trained here"""
    trust_remote_code: bool = False
    """allow model code from the checkpoint's repository (never on by default)"""


def _pretrained_error(what: str, name: str, error: Exception) -> ConfigError:
    local = Path(name).expanduser()
    if local.exists():
        return ConfigError(
            f"{what} {name} cannot be loaded ({type(error).__name__}: {str(error).splitlines()[0]})",
            "check the folder holds a transformers checkpoint",
        )
    return ConfigError(
        f"{what} {name!r} is neither a local folder nor reachable on the hub ({type(error).__name__})",
        "pass a local path (the hub is not reachable offline), or model.name_or_path=null to build one from model.config",
    )


def load_tokenizer(cfg: ModelConfig, corpus_files: list[str | Path] | None = None, cache_dir: str | Path | None = None):
    """The tokenizer of ``cfg``; with none given, a BPE tokenizer trained on ``corpus_files`` (saved to ``cache_dir``)."""
    from transformers import AutoTokenizer

    name = cfg.tokenizer or cfg.name_or_path
    if name:
        try:
            return AutoTokenizer.from_pretrained(name, trust_remote_code=cfg.trust_remote_code)
        except (OSError, ValueError) as e:
            raise _pretrained_error("tokenizer", name, e) from e
    if not corpus_files:
        raise ConfigError(
            "no tokenizer given and no text to train one on", "set model.tokenizer, or give the stage data sources"
        )
    return train_tokenizer(corpus_files, cfg.vocab_size, cache_dir)


def train_tokenizer(files: list[str | Path], vocab_size: int, out_dir: str | Path | None = None):
    """A byte-level BPE tokenizer (GPT-2 style) trained on ``files``, with ``<|endoftext|>`` as EOS/BOS/PAD.

    Saved to ``out_dir`` (when given) so a run and its resumption share one tokenizer.
    """
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    if out_dir is not None and (Path(out_dir) / "tokenizer.json").exists():
        return PreTrainedTokenizerFast.from_pretrained(str(out_dir))
    bpe = ByteLevelBPETokenizer()
    bpe.train([str(f) for f in files], vocab_size=vocab_size, min_frequency=2, special_tokens=["<|endoftext|>"])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>", bos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )
    if out_dir is not None:
        tokenizer.save_pretrained(str(out_dir))
    return tokenizer


def load_model(cfg: ModelConfig, tokenizer=None, seed: int = 0):
    """A causal LM: pretrained from ``name_or_path``, or randomly initialised from ``config`` with the
    tokenizer's vocabulary (seeded, so two runs start from the same weights)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if cfg.name_or_path:
        try:
            return AutoModelForCausalLM.from_pretrained(cfg.name_or_path, trust_remote_code=cfg.trust_remote_code)
        except (OSError, ValueError) as e:
            raise _pretrained_error("model", cfg.name_or_path, e) from e
    kwargs = dict(cfg.config)
    model_type = kwargs.pop("model_type", None)
    if not model_type:
        raise ConfigError(
            "model.config needs a model_type (llama, gpt2, gpt_neox, ...)", "add model.config.model_type=llama"
        )
    if tokenizer is not None:
        kwargs.update(
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    try:
        config = AutoConfig.for_model(model_type, **kwargs)
    except (ValueError, KeyError) as e:
        raise ConfigError(
            f"model.config is not a valid {model_type} config ({e})",
            "check the keys against the transformers docs of that model",
        ) from e
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config, trust_remote_code=cfg.trust_remote_code)
