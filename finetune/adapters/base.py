"""What every adaptation method shares: its config, and the module face the Decision Transformer calls.

An adaptation changes the *model* (what is trained, what is added), so it composes with the continual
methods of ``retain/methods`` (which act on whatever parameters are trainable): ``adapter=lora method=ewc``.
A method that only freezes (full, head) or adds peft layers needs no module; prompts and pools are an
``Adaptation`` set as ``model.adaptation``, called by the model around every forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class AdapterConfig:
    """``adapter=<name>``: how the pretrained model is tuned (configs/adapter/)."""

    name: str = "full"
    """full | head | lora | ia3 | prompt | prefix | adapters | l2p | l2m"""
    rank: int = 8
    """LoRA rank (lora; each L2M pool entry)"""
    alpha: float = 16.0
    """LoRA scaling numerator: deltas are scaled by alpha / rank"""
    prompt_length: int = 5
    """tokens per prompt (prompt, prefix, each L2P pool entry)"""
    bottleneck: int = 16
    """hidden width of the bottleneck adapters (adapters)"""
    pool_size: int = 30
    """entries in the pool (L2M: 30; L2P: 100)"""
    top_k: int = 1
    """entries each input selects (L2M: 1; L2P: 5)"""
    modulation: str = "lora"
    """what an L2M pool entry holds: lora (Q, V and the feed-forward activation) | ia3 (rescaling vectors)"""
    oracle: bool = False
    """L2M with the task id choosing the entry instead of the learned keys (the paper's oracle)"""
    count_penalty: bool = True
    """from the second task on, selection favours entries chosen less often so far (L2M)"""
    key_loss: float = 0.5
    """weight of the key loss, -key_loss * mean cos(query, selected key)"""
    train_head: bool = False
    """also train the action head (PEFT methods keep it frozen by default, as L2M does)"""
    lr: float | None = None
    """learning rate of the parameters the adapter adds (pools, prompts, LoRA, ...); null: the learner's lr.
    Small PEFT modules usually want a larger rate than full fine-tuning"""


class Adaptation(nn.Module):
    """Called by the Decision Transformer: ``begin`` before the transformer runs (returns tokens to put in
    front of the window, or None, and sets up routing), ``end`` after it; ``aux_loss`` is added to the
    training loss; ``start_task`` runs at every task switch."""

    def begin(self, states: torch.Tensor, mask: torch.Tensor, task: torch.Tensor | None) -> torch.Tensor | None:
        return None

    def end(self) -> None:
        pass

    def aux_loss(self) -> torch.Tensor | None:
        return None

    def start_task(self, task: int) -> None:
        pass

    # an adaptation may also define ``past(batch) -> (transformers Cache, length)``: per-layer keys and
    # values put in front of the window (prefix tuning)


def freeze_all_but(model: nn.Module, keep) -> None:
    """Freeze every parameter whose name ``keep(name)`` rejects."""
    for name, p in model.named_parameters():
        p.requires_grad_(bool(keep(name)))


def query(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """L2M's query: the attention-masked mean of the window's state-token embeddings, ``(B, d)`` in fp32."""
    m = mask.unsqueeze(-1).float()
    return (states.float() * m).sum(1) / m.sum(1).clamp_min(1.0)
