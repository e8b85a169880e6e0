"""The stability gap in reports: tables and a plot of how each evaluated task (and each probe) fared early in
every task after the first, split the way the two literatures measure it.

- **Earlier tasks** (De Lange et al. 2023, "Continual evaluation for lifelong learning: identifying the stability
  gap"): a task trained before drops at the start of a new one, then partly recovers.
- **The target task** (Guo et al. 2024, "Efficient Continual Pre-training by Mitigating the Stability Gap"): the
  new task's own performance (its loss, its probes) first gets worse, then improves.

Every figure is against one baseline: the evaluation at the weights the task starts from (the previous task's
last evaluation, or a fresh one after a branch), on the same fixed validation sample as every curve point;
probes against the same probes there. ``results.json``'s ``stability_gap`` holds them, per task, with ``kind``.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

GAP_PLOT = "stability_gap.png"
WINDOW = 0.3  # the share of each task plotted: the gap opens and closes early
BASELINE = (
    "Baseline: the evaluation at the weights the stage starts from (the previous stage's last evaluation point, or "
    "a fresh one after a branch), on the same fixed validation sample as every point; probes: the same probes there."
)
KINDS = {
    "earlier": "earlier domains and their probes (De Lange et al. 2023)",
    "target": "the stage's own domain and its probes (Guo et al. 2024)",
}


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float | int) else str(value)


def _step(value) -> str:
    return "–" if value is None else f"{value:g}"


def _kind(name: str, gap: dict) -> str:
    """``earlier`` or ``target``: a probe of a domain counts with its domain, a probe of no domain with the
    stage's own; results written before kinds existed hold earlier tasks only."""
    kind = gap.get("kind", "earlier")
    return "target" if kind == "probe" else kind


def gap_lines(res: dict) -> list[str]:
    """One run's stability gaps: a table per kind, every stage after the first."""
    gaps = res.get("stability_gap") or []
    if len(gaps) < 2:
        return []
    stages = res.get("stages") or res["tasks"]
    direction = "higher" if res.get("higher_is_better") else "lower"
    lines = [
        "## Stability gap (steps counted from the stage start)",
        "",
        f"{BASELINE} Depth: how much worse than the baseline the worst point is ({res['metric']}: {direction} is "
        "better; probes: higher is better); regained: the share of the depth made up by the stage's last point; at "
        "the stage end: how much worse than the baseline the last point is (negative: better).",
        "",
    ]
    for kind, title in KINDS.items():
        rows = [
            f"| {stage} | {name.removeprefix('probe:')} | {_fmt(g.get('start'))} | {_fmt(g['depth'])} | "
            f"{_step(g['worst_step'])} | {_step(g['recovery_step'])} | {_fmt(g.get('share_regained'), 2)} | "
            f"{_fmt(g.get('end'))} |"
            for stage, per_task in list(zip(stages, gaps))[1:]
            for name, g in per_task.items()
            if _kind(name, g) == kind
        ]
        if not rows:
            continue
        lines += [
            f"### {title[0].upper() + title[1:]}",
            "",
            "| stage | evaluated | baseline | depth | worst at | back at baseline at | regained | at the stage end |",
            "|---|---|---|---|---|---|---|---|",
            *rows,
            "",
        ]
    lines += [f"![stability gap]({GAP_PLOT})", ""]
    return lines


def _series(run: dict, key: str) -> tuple[np.ndarray, np.ndarray]:
    points = [(r["step"], r[key]) for r in run["records"] if r.get(key) is not None]
    return np.array([p[0] for p in points], dtype=float), np.array([p[1] for p in points], dtype=float)


def _probe_keys(run: dict) -> list[str]:
    return [k for k in (run["results"].get("probe_curves") or {}) if k.endswith("knowledge_accuracy")]


def plot_gaps(runs: list[dict], groups: dict[str, list[dict]], path: Path) -> bool:
    """One column per stage after the first: each domain's change from its baseline over the first ``WINDOW`` of
    the stage (top) and each knowledge probe's (bottom), the mean over a group's seeds. False when nothing to plot."""
    res = runs[0]["results"]
    bounds = [0, *res.get("task_boundaries", [])]
    stages = res.get("stages") or res["tasks"]
    if len(stages) < 2 or len(bounds) < len(stages) + 1:
        return False
    probes = _probe_keys(runs[0])
    rows = 2 if probes else 1
    cols = len(stages) - 1
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.0 * rows), squeeze=False)
    for i in range(1, len(stages)):
        start, end = bounds[i], bounds[i] + WINDOW * (bounds[i + 1] - bounds[i])
        panels = [(axes[0][i - 1], [f"eval/{t}/{res['metric']}" for t in res["tasks"]], res["metric"])]
        if probes:
            panels.append((axes[1][i - 1], [f"eval/{k}" for k in probes], "accuracy"))
        for ax, keys, unit in panels:
            for label, members in groups.items():
                for key in keys:
                    deltas = defaultdict(list)
                    for run in members:
                        steps, values = _series(run, key)
                        base = values[steps <= start]
                        if not len(base):
                            continue
                        for s, v in zip(steps, values):
                            if start < s <= end:
                                deltas[s].append(v - base[-1])
                    if deltas:
                        xs = sorted(deltas)
                        name = key.split("/", 1)[1].removesuffix(f"/{res['metric']}")
                        tag = f"{name} · {label}" if len(groups) > 1 else name
                        ax.plot([x - start for x in xs], [np.mean(deltas[x]) for x in xs], marker=".", label=tag)
            ax.axhline(0.0, color="grey", lw=0.8)
            ax.set_title(f"stage {stages[i]}: change from its start")
            ax.set_xlabel(f"{res.get('unit', 'steps')} into the stage")
            ax.set_ylabel(f"Δ {unit}")
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
