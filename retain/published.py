"""Published results that retain's reports print next to a run's own, so a reader sees how far they are.

Continual World (Wołczyk et al., NeurIPS 2021), CW20 with SAC at 1M steps per task: average success at the end,
forgetting and forward transfer (AUC-normalized, against single-task training from scratch), mean and 95%
bootstrap interval over seeds, from the authors' own report (awarelab/continual_world,
examples/results/report_2021_12_15__20_06_56/results.csv). Methods keyed by retain's names: CW's
``finetuning`` is ``finetune``, ``reservoir`` (its replay) ``replay``, ``mtl`` (multi-task, no CL) ``multitask``.
The paper's main table is CW20; its CW10 numbers are in its appendix, not here.
"""

from __future__ import annotations

SOURCE = "Continual World (Wołczyk et al. 2021), CW20, SAC, 1M steps per task: mean [95% CI]"

# metric: (mean, low, high)
CONTINUAL_WORLD_CW20: dict[str, dict[str, tuple[float, float, float]]] = {
    "finetune": {
        "average": (0.0545, 0.0529, 0.0564),
        "forgetting": (0.7342, 0.7204, 0.7479),
        "forward_transfer": (0.2018, 0.1698, 0.2310),
    },
    "l2": {
        "average": (0.4334, 0.3915, 0.4729),
        "forgetting": (0.0171, 0.0045, 0.0313),
        "forward_transfer": (-0.7295, -0.8438, -0.6235),
    },
    "ewc": {
        "average": (0.6034, 0.5658, 0.6376),
        "forgetting": (0.0211, -0.0018, 0.0524),
        "forward_transfer": (-0.1847, -0.2460, -0.1312),
    },
    "mas": {
        "average": (0.5113, 0.4901, 0.5339),
        "forgetting": (0.0028, -0.0121, 0.0171),
        "forward_transfer": (-0.5202, -0.5817, -0.4692),
    },
    "packnet": {
        "average": (0.8032, 0.7869, 0.8193),
        "forgetting": (-0.0026, -0.0114, 0.0052),
        "forward_transfer": (0.1797, 0.1400, 0.2143),
    },
    "replay": {
        "average": (0.1214, 0.0923, 0.1485),
        "forgetting": (0.0748, 0.0542, 0.0960),
        "forward_transfer": (-1.3375, -1.4272, -1.2643),
    },
    "agem": {
        "average": (0.0701, 0.0648, 0.0761),
        "forgetting": (0.7137, 0.6993, 0.7288),
        "forward_transfer": (0.1507, 0.1206, 0.1793),
    },
    "multitask": {"average": (0.5477, 0.5288, 0.5657)},
}

# the sequences whose runs are shown beside Continual World's CW20 numbers
CONTINUAL_WORLD_SEQUENCES = ("cw10", "cw20")


def published(sequence: str | None, method: str | None) -> dict[str, tuple[float, float, float]] | None:
    """Continual World's published CW20 numbers for ``method`` when ``sequence`` is one of its sequences."""
    if sequence not in CONTINUAL_WORLD_SEQUENCES or method is None:
        return None
    return CONTINUAL_WORLD_CW20.get(method)
