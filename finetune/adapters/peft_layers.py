"""LoRA (Hu et al. 2021) and (IA)^3 (Liu et al. 2022) through peft, injected into the Decision Transformer's
GPT-2 blocks. GPT-2's attention projection is one fused ``Conv1D`` (``c_attn``: Q, K and V), so peft's LoRA
adapts all three (``fan_in_fan_out``, as GPT-2's Conv1D stores its weight transposed); (IA)^3 rescales the
attention projection's and the feed-forward output's activations."""

from __future__ import annotations

from finetune.adapters.base import AdapterConfig


def apply_lora(model, cfg: AdapterConfig) -> None:
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(
        r=cfg.rank, lora_alpha=cfg.alpha, target_modules=["c_attn"], fan_in_fan_out=True, lora_dropout=0.0
    )
    inject_adapter_in_model(config, model.transformer)


def apply_ia3(model, cfg: AdapterConfig) -> None:
    from peft import IA3Config, inject_adapter_in_model

    config = IA3Config(target_modules=["c_attn", "mlp.c_proj"], feedforward_modules=["mlp.c_proj"], fan_in_fan_out=True)
    inject_adapter_in_model(config, model.transformer)
