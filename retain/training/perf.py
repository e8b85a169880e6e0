"""Throughput accounting for the CPT trainer: FLOPs per token, the accelerator's peak, model FLOPs utilization.

MFU (PaLM, Chowdhery et al. 2022, appendix B) = achieved FLOP/s / peak FLOP/s, where a training token costs
6·N FLOPs in the matmuls of N parameters (forward 2N, backward 4N) plus 12·L·d·T in attention
(L layers, width d, context T). Embedding lookups are not matmuls, so N excludes the input embedding unless
it is tied to the output head (then it *is* the head's matmul).

Peak FLOP/s are the dense bf16 tensor-core figures of the vendor's data sheets; on a CPU or an unlisted GPU
the peak is unknown and MFU is not logged unless ``train.peak_tflops`` says what it is.
"""

from __future__ import annotations

import torch

# Dense (no sparsity) bf16 peak TFLOP/s, from NVIDIA's data sheets; matched against the device name.
PEAK_BF16_TFLOPS = {
    "H200": 989.0,
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,  # SXM
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10G": 70.0,
    "A10": 125.0,
}


def flops_per_token(model: torch.nn.Module, seq_len: int) -> float:
    """Training FLOPs per token of a causal LM: 6·N (N: the parameters that take part in matmuls) + 12·L·d·T."""
    n = sum(p.numel() for p in model.parameters())
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if embeddings is not None and (output is None or output.weight is not embeddings.weight):
        n -= embeddings.weight.numel()  # a lookup, not a matmul (unless tied to the head)
    config = getattr(model, "config", None)
    layers = getattr(config, "num_hidden_layers", 0)
    width = getattr(config, "hidden_size", 0)
    return 6.0 * n + 12.0 * layers * width * seq_len


def peak_flops(device: torch.device, peak_tflops: float | None = None) -> float | None:
    """The device's peak FLOP/s: ``peak_tflops`` when given, else the table's bf16 figure for a known GPU."""
    if peak_tflops:
        return peak_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, tflops in PEAK_BF16_TFLOPS.items():  # longest names first where they overlap (H100 NVL before H100)
        if key in name:
            return tflops * 1e12
    return None
