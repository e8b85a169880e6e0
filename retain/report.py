"""Reports rebuilt from a run directory's files alone: ``report.md`` plus PNG plots.

``write_report(run_dir)`` documents one run (metrics table, results matrix, what was run, a
results heatmap and per-task curves). ``compare_runs(run_dirs, out_dir)`` puts several runs side
by side: runs with the same label (method and sequence; for ``retain cpt`` the run's ``name``, or
its stages) are seeds of one condition and are aggregated with a mean and a 90% bootstrap
confidence interval, overall and per task (each task's forgetting and final score, the stability
gap where the runs recorded one).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: reports are written on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402

from retain.aggregate import (  # noqa: E402
    CONFIDENCE,
    METHOD,
    REPS,
    SEED,
    describe,
    estimates,
    fmt_interval,
    fmt_stats,
    probability_of_improvement,
    score_matrix,
)
from retain.errors import UserError  # noqa: E402
from retain.io import write_text_atomic  # noqa: E402
from retain.metrics import METRIC_KEYS, auc_forward_transfer  # noqa: E402
from retain.published import SOURCE, published  # noqa: E402
from retain.report_gaps import BASELINE, GAP_PLOT, gap_lines, plot_gaps  # noqa: E402
from retain.rundir import CONFIG_FILE, RESULTS_FILE, SUMMARY_FILE  # noqa: E402
from retain.tracking import read_metrics  # noqa: E402

HEATMAP = "results_heatmap.png"
CURVES = "curves.png"
MIN_CURVE = 3  # evaluations within a task below which its curve has no area worth the name (AUC transfer)


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and np.isnan(value):
        return "nan"
    return f"{value:.{digits}f}" if isinstance(value, float | int) else str(value)


def load_run(run_dir: str | Path) -> dict:
    """The files of a run directory as one dict (results, summary, config, metrics records)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(
            f"run directory {run_dir} does not exist", "pass the path of a run directory (runs/<job>/<date>_<time>)"
        )
    results_path = run_dir / RESULTS_FILE
    if not results_path.exists():
        raise UserError(
            f"{run_dir} has no {RESULTS_FILE} (the run did not finish, or is not a sequence/cpt run)",
            "resume it with resume=true run_dir=<dir>, or pass a finished run",
        )
    try:
        results = json.loads(results_path.read_text())
        summary = json.loads((run_dir / SUMMARY_FILE).read_text()) if (run_dir / SUMMARY_FILE).exists() else {}
        config = yaml.safe_load((run_dir / CONFIG_FILE).read_text()) if (run_dir / CONFIG_FILE).exists() else {}
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise UserError(
            f"{run_dir} holds a corrupt results/summary/config file ({e})", "re-run the job, or remove the damaged run"
        ) from e
    for key in ("tasks", "matrix", "metric", "higher_is_better", "metrics"):
        if key not in results:
            raise UserError(f"{results_path} lacks the key {key!r}", "it was not written by retain; re-run the job")
    return {
        "dir": run_dir,
        "results": results,
        "summary": summary,
        "config": config or {},
        "records": read_metrics(run_dir),
    }


# Overrides that do not change what a run computes, or that tell seeds of one condition apart.
_NOT_A_CONDITION = ("seed", "run_dir", "name", "resume", "progress", "device", "threads", "logger", "debug", "hydra")


def _condition_overrides(run: dict) -> list[str]:
    """The command-line overrides Hydra recorded for the run (``.hydra/overrides.yaml``), seed and
    housekeeping keys left out: what a sweep varied, when the run has no ``name``."""
    path = Path(run["dir"]) / ".hydra" / "overrides.yaml"
    try:
        overrides = yaml.safe_load(path.read_text()) if path.exists() else []
    except yaml.YAMLError:
        return []
    return condition_overrides(overrides or [])


def condition_overrides(overrides: list[str]) -> list[str]:
    """``key=value`` overrides that change what a run computes (seed and housekeeping keys left out)."""
    keys = [str(o).lstrip("+~").split("=", 1) for o in overrides]
    return [f"{k}={v}" for k, *rest in keys for v in rest if k.split(".")[0].split("/")[0] not in _NOT_A_CONDITION]


def label_of(run: dict) -> str:
    """The condition a run belongs to; runs with one label are seeds of it. The job names it in
    ``summary.json`` (``label``: e.g. method · sequence, or a cpt run's ``name``); without one, the run's
    ``name``, else the overrides it was launched with (seed left out)."""
    cfg, summary = run["config"], run["summary"]
    return summary.get("label") or cfg.get("name") or " ".join(_condition_overrides(run)) or "?"


def _curves(run: dict) -> dict[str, tuple[list[int], list[float]]]:
    metric = run["results"]["metric"]
    out = {}
    for task in run["results"]["tasks"]:
        key = f"eval/{task}/{metric}"
        points = [(r["step"], r[key]) for r in run["records"] if r.get(key) is not None]
        out[task] = ([p[0] for p in points], [p[1] for p in points])
    return out


def plot_heatmap(run: dict, path: Path, title: str | None = None) -> None:
    res = run["results"]
    R = np.asarray(res["matrix"], dtype=float)
    T = len(res["tasks"])
    rows = res.get("stages") or res["tasks"]  # R's rows: tasks, or stages (CPT, one pretraining row)
    R = R.reshape(len(rows), T) if R.size else np.full((len(rows), T), np.nan)
    fig, ax = plt.subplots(figsize=(max(3.0, 1.2 + 0.9 * T), max(2.6, 1.0 + 0.8 * len(rows))))
    cmap = "viridis" if res["higher_is_better"] else "viridis_r"
    im = ax.imshow(R, cmap=cmap, aspect="auto")
    for i in range(len(rows)):
        for j in range(T):
            ax.text(
                j,
                i,
                _fmt(R[i, j], 2),
                ha="center",
                va="center",
                color="w" if im.norm(R[i, j]) < 0.5 else "k",
                fontsize=8,
            )
    ax.set_xticks(range(T), res["tasks"], rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), [f"after {t}" for t in rows])
    ax.set_xlabel(f"evaluated task ({res['metric']})")
    ax.set_title(title or f"Results matrix R — {label_of(run)}")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_curves(runs: list[dict], path: Path) -> None:
    """One panel per task; one line per label (the mean over its seeds, shaded min–max);
    dashed lines mark task boundaries."""
    tasks = runs[0]["results"]["tasks"]
    groups: dict[str, list[dict]] = defaultdict(list)
    for run in runs:
        groups[label_of(run)].append(run)
    cols = min(len(tasks), 3)
    rows = int(np.ceil(len(tasks) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False, sharey=True)
    for k, task in enumerate(tasks):
        ax = axes[k // cols][k % cols]
        for label, members in groups.items():
            curves = [_curves(run).get(task, ([], [])) for run in members]
            steps = sorted(set.intersection(*(set(c[0]) for c in curves)))  # steps every seed evaluated at
            if not steps:
                continue
            values = np.array([[dict(zip(*c))[s] for s in steps] for c in curves])
            ax.plot(
                steps,
                values.mean(axis=0),
                marker=".",
                label=f"{label} (n={len(members)})" if len(groups) > 1 or len(members) > 1 else None,
            )
            if len(members) > 1:
                ax.fill_between(steps, values.min(axis=0), values.max(axis=0), alpha=0.2)
        for b in runs[0]["results"].get("task_boundaries", [])[:-1]:
            ax.axvline(b, color="grey", ls="--", lw=0.8)
        ax.set_title(task)
        ax.set_xlabel(runs[0]["results"].get("unit", "steps"))
        ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 0))
        ax.set_ylabel(runs[0]["results"]["metric"])
    for k in range(len(tasks), rows * cols):
        axes[k // cols][k % cols].axis("off")
    if len(groups) > 1 or len(runs) > 1:
        axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _matrix_table(res: dict) -> list[str]:
    lines = ["| after \\ eval | " + " | ".join(res["tasks"]) + " |", "|---" * (len(res["tasks"]) + 1) + "|"]
    if res.get("initial") is not None:
        lines.append("| initial | " + " | ".join(_fmt(v) for v in res["initial"]) + " |")
    for task, row in zip(res["tasks"], res["matrix"]):
        lines.append(f"| {task} | " + " | ".join(_fmt(v) for v in row) + " |")
    return lines


def _config_lines(run: dict) -> list[str]:
    """What was run: the lines the job wrote (``summary.json``'s ``description``), then seed, steps, time."""
    cfg, summary = run["config"], run["summary"]
    lines = list(summary.get("description") or [])
    lines.append(
        f"- seed: {cfg.get('seed', '?')}; steps: {summary.get('steps', '?')}; "
        f"wall time: {_fmt(summary.get('wall_time_s'), 1)} s"
    )
    return lines


def write_report(run_dir: str | Path) -> Path:
    """Write ``report.md``, the heatmap and the curves of one run from its files."""
    run = load_run(run_dir)
    out = Path(run_dir)
    metrics = run["results"]["metrics"]
    plot_heatmap(run, out / HEATMAP)
    plot_curves([run], out / CURVES)
    plot_gaps([run], {label_of(run): [run]}, out / GAP_PLOT)
    direction = (
        "higher is better"
        if run["results"]["higher_is_better"]
        else "lower is better; differences are oriented so positive forgetting means worse"
    )
    lines = [
        f"# retain report — {label_of(run)}",
        "",
        "## What was run",
        *_config_lines(run),
        "",
        f"## Continual metrics ({run['results']['metric']}, {direction})",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    lines += [f"| {k} | {_fmt(metrics.get(k))} |" for k in METRIC_KEYS]
    lines += [
        "",
        "## Results matrix R[after task i, evaluated on task j]",
        "",
        *_matrix_table(run["results"]),
        "",
        f"![results heatmap]({HEATMAP})",
        "",
        *gap_lines(run["results"]),
        *_extra_lines(run["results"]),
        *_probe_lines(run["results"]),
        *_round_lines(run["summary"], run["results"]),
        "## Per-task curves (dashed: task boundaries)",
        "",
        f"![curves]({CURVES})",
        "",
    ]
    write_text_atomic(out / "report.md", "\n".join(lines))
    return out / "report.md"


def _extra_lines(res: dict) -> list[str]:
    """Each extra evaluation set (e.g. pretraining tasks): its scores before the sequence and after every task,
    and how much of them the sequence cost (``retain.metrics.retention_metrics``)."""
    lines = []
    rows = res.get("stages") or res["tasks"]
    for name, extra in (res.get("extra") or {}).items():
        m = extra["metrics"]
        lines += [
            f"## Extra evaluation set `{name}` ({res['metric']}; not trained in the sequence)",
            "",
            f"forgetting (initial − final, oriented so positive is worse): {_fmt(m.get('forgetting'))}; "
            f"max forgetting: {_fmt(m.get('max_forgetting'))}; average: {_fmt(m.get('initial_average'))} before, "
            f"{_fmt(m.get('average'))} after",
            "",
            "| after \\ eval | " + " | ".join(extra["tasks"]) + " |",
            "|---" * (len(extra["tasks"]) + 1) + "|",
        ]
        if extra.get("initial") is not None:
            lines.append("| initial | " + " | ".join(_fmt(v) for v in extra["initial"]) + " |")
        lines += [f"| {task} | " + " | ".join(_fmt(v) for v in row) + " |" for task, row in zip(rows, extra["matrix"])]
        lines.append("")
    return lines


def _round_lines(summary: dict, res: dict) -> list[str]:
    """Active data gathering (``learner=lm learner.adg.enabled=true``): each task's score before it and after
    each round of gathering and training."""
    rounds = summary.get("rounds")
    if not rounds:
        return []
    tasks = {k: v for k, v in rounds.items() if isinstance(v, dict)}
    first = next(iter(tasks.values()))["rounds"]
    before = dict(zip(res["tasks"], res.get("initial") or []))
    lines = [
        f"## {res['metric']} after each round of data gathering ({rounds['episodes_per_round']} episodes and "
        f"{rounds['per_round_updates']} updates per round, no expert demos)",
        "",
        "| task | before | " + " | ".join(f"round {r}" for r in first) + " |",
        "|---" * (len(first) + 2) + "|",
    ]
    lines += [
        f"| {task} | {_fmt(before.get(task))} | " + " | ".join(_fmt(v) for v in t["score"]) + " |"
        for task, t in tasks.items()
    ]
    return [*lines, ""]


def _probe_lines(res: dict) -> list[str]:
    """Probe scores (e.g. knowledge accuracy) before training and after each stage."""
    probes = res.get("probes") or {}
    if not probes.get("stages"):
        return []
    keys = sorted({k for row in [probes.get("initial", {}), *probes["stages"]] for k in row})
    stages = res.get("stages") or res["tasks"]
    lines = ["## Probes", "", "| after | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for name, row in [("(start)", probes.get("initial", {})), *zip(stages, probes["stages"])]:
        lines.append(f"| {name} | " + " | ".join(_fmt(row.get(k)) for k in keys) + " |")
    return [*lines, ""]


def _auc_transfer(run: dict, reference: dict) -> float | None:
    """Continual World's AUC forward transfer of ``run`` against a ``reset`` run of the same sequence."""
    res = run["results"]
    if res["metric"] != "success" or reference["results"]["tasks"] != res["tasks"]:
        return None
    bounds = [0, *res.get("task_boundaries", [])]
    ref_bounds = [0, *reference["results"].get("task_boundaries", [])]
    if len(bounds) != len(res["tasks"]) + 1 or len(ref_bounds) != len(bounds):
        return None

    def window(r, b, j):
        steps, values = _curves(r)[res["tasks"][j]]
        return [v for s, v in zip(steps, values) if b[j] < s <= b[j + 1]]

    curves = [window(run, bounds, j) for j in range(len(res["tasks"]))]
    refs = [window(reference, ref_bounds, j) for j in range(len(res["tasks"]))]
    if any(len(c) < MIN_CURVE for c in curves + refs):
        return None  # a task evaluated only at its end has no training curve to take the area of
    return auc_forward_transfer(curves, refs)


# Where each continual metric's per-task values live in ``results.json`` (``metrics.per_task``), with their sign:
# the scores a group is aggregated over, runs × tasks (only the tasks where the metric is defined: every earlier
# task for forgetting, every later one for forward transfer).
_TASK_SCORES = {
    "average": ("final", 1.0),
    "plasticity": ("just_after", 1.0),
    "forgetting": ("forgetting", 1.0),
    "max_forgetting": ("max_forgetting", 1.0),
    "backward_transfer": ("forgetting", -1.0),  # = −forgetting, task by task
    "forward_transfer": ("forward_transfer", 1.0),
}
_ALL_KEYS = (*METRIC_KEYS, "auc_forward_transfer")


def _task_scores(metrics: dict, key: str) -> list[float] | float | None:
    """One run's scores for ``key``: its per-task values, else (results written without them) its single value."""
    source, sign = _TASK_SCORES[key]
    values = [sign * v for v in (metrics.get("per_task") or {}).get(source) or [] if v is not None]
    return values or metrics.get(key)


def _matrix(rows: list) -> np.ndarray:
    """runs × tasks from one entry per run; runs × 1 (each run's mean) where the runs' task counts differ."""
    try:
        return score_matrix(rows)
    except ValueError:
        return score_matrix([float(np.mean(r)) if isinstance(r, list) else r for r in rows])


def _cell(stats: dict | None, kind: str = "mean") -> str:
    return fmt_stats(stats, kind)


def _num(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


# The knowledge probes of retain cpt's summaries: seen people (the headline), never-seen people, the chance level.
KNOWLEDGE = ("knowledge_accuracy", "knowledge_unseen_accuracy", "knowledge_chance")


def _per_task_matrices(members: list[dict]) -> tuple[dict, dict]:
    """Per task over the seeds of one group: forgetting and final score; the knowledge-probe accuracy and each
    earlier task's stability gap in every later stage, where the runs recorded them (``retain cpt``). Returns the
    score matrices (runs × 1) by key, and what the stability gaps count rather than average."""
    tasks = members[0]["results"]["tasks"]
    per = [m["results"]["metrics"]["per_task"] for m in members]
    matrices: dict = {
        ("forgetting", t): score_matrix([p["forgetting"][j] for p in per]) for j, t in enumerate(tasks[:-1])
    }
    matrices.update({("final", t): score_matrix([p["final"][j] for p in per]) for j, t in enumerate(tasks)})
    for key in KNOWLEDGE:
        matrices[key] = score_matrix([m["summary"].get(key) for m in members])
    counts: dict = {}
    gaps = [m["results"].get("stability_gap") for m in members]
    if all(gaps):
        stages = members[0]["results"].get("stages") or members[0]["summary"].get("stages") or tasks
        for i in range(1, len(gaps[0])):
            for name, first in gaps[0][i].items():
                kind = first.get("kind", "earlier")
                if kind not in ("earlier", "target", "probe") or not all(name in g[i] for g in gaps):
                    continue
                found = [g[i][name] for g in gaps]
                key = f"{name.removeprefix('probe:')} in {stages[i]}"
                worst = [f["worst_step"] for f in found if f["worst_step"] is not None]
                shares = [f.get("share_regained") for f in found if f.get("share_regained") is not None]
                matrices[("gap", key, "depth")] = score_matrix([f["depth"] for f in found])
                matrices[("gap", key, "start")] = score_matrix([f.get("start") for f in found])
                counts[key] = {
                    "kind": "target" if kind == "probe" else kind,
                    "worst_step": float(np.median(worst)) if worst else None,
                    "share_regained": float(np.median(shares)) if shares else None,
                    "recovered": sum(f["recovery_step"] is not None for f in found if f["depth"] > 0),
                    "with_gap": sum(f["depth"] > 0 for f in found),
                }
    return matrices, counts


def _extra_sets(members: list[dict]) -> list[str]:
    """The extra evaluation sets every member has (with scores before the sequence)."""
    names = [set(m["results"].get("extra") or {}) for m in members]
    return sorted(set.intersection(*names)) if names else []


def _aggregate(members: list[dict], references: dict, per_task: bool) -> tuple[dict, dict]:
    """One group's aggregates (see ``compare_runs``) and its score matrices by metric, from one batched rliable
    bootstrap."""
    matrices: dict = {
        key: _matrix([_task_scores(m["results"]["metrics"], key) for m in members]) for key in METRIC_KEYS
    }
    matrices["auc_forward_transfer"] = score_matrix(
        [
            _auc_transfer(m, ref)
            if (ref := references.get((m["summary"].get("sequence"), m["summary"].get("seed")))) is not None
            else None
            for m in members
        ]
    )
    counts: dict = {}
    if per_task:
        task_matrices, counts = _per_task_matrices(members)
        matrices.update(task_matrices)
    sets = _extra_sets(members)
    for name in sets:  # retention of each extra evaluation set (L2M: the pretraining tasks), per set task
        per = [(m["results"].get("extra") or {}).get(name, {}).get("metrics", {}).get("per_task", {}) for m in members]
        matrices[("retention", name, "forgetting")] = _matrix([p.get("forgetting") for p in per])
        matrices[("retention", name, "average")] = _matrix([p.get("final") for p in per])
    stats = estimates(matrices)
    out = {"seeds": len(members), **{key: stats[key] for key in _ALL_KEYS}}
    if sets:
        out["retention"] = {
            name: {k: stats[("retention", name, k)] for k in ("average", "forgetting")} for name in sets
        }
    if per_task:
        tasks = members[0]["results"]["tasks"]
        out["per_task"] = {
            "forgetting": {t: stats[("forgetting", t)] for t in tasks[:-1]},
            "final": {t: stats[("final", t)] for t in tasks},
            **{key: stats[key] for key in KNOWLEDGE},
            "stability_gap": {
                key: {"depth": stats[("gap", key, "depth")], "start": stats[("gap", key, "start")], **extra}
                for key, extra in counts.items()
            },
        }
    return out, {key: matrices[key] for key in ("average", "forgetting")}


def _improvements(groups: dict[str, list[dict]], matrices: dict[str, dict]) -> dict[str, list[dict]]:
    """P(X > Y) [CI] for every pair of groups with at least two seeds that ran the same tasks with the same score:
    ``average`` from each task's final score (a loss: lower is better), ``forgetting`` from each earlier task's
    forgetting (lower is better)."""
    cohorts: dict[tuple, list[str]] = defaultdict(list)
    for label, members in groups.items():
        res = members[0]["results"]
        cohorts[(tuple(res["tasks"]), res["metric"], bool(res["higher_is_better"]))].append(label)
    out: dict[str, list[dict]] = {"average": [], "forgetting": []}
    for (_, metric, higher), labels in cohorts.items():
        for key, sign in (("average", 1.0 if higher else -1.0), ("forgetting", -1.0)):
            scored = {label: sign * matrices[label][key] for label in labels if matrices[label][key].shape[0] >= 2}
            if len(scored) < 2 or len({m.shape[1] for m in scored.values()}) > 1:
                continue
            better = "higher" if sign > 0 else "lower"
            out[key] += [{**p, "metric": metric, "better": better} for p in probability_of_improvement(scored)]
    return out


def _improvement_tables(improvements: dict[str, list[dict]]) -> list[str]:
    lines = []
    for key, pairs in improvements.items():
        for (metric, better), cohort in _by(pairs, lambda p: (p["metric"], p["better"])).items():
            labels = list(dict.fromkeys(p["x"] for p in cohort))
            seeds = {p["x"]: p["n_x"] for p in cohort}
            cell = {(p["x"], p["y"]): p for p in cohort}
            score = (
                f"each task's final {metric}" if key == "average" else f"each earlier task's forgetting, in {metric}"
            )
            lines += [
                "",
                f"## Probability of improvement, {key} ({better} is better): P(row beats column) [{describe()}]",
                "",
                f"The chance that a run of the row's group beats a run of the column's group on a task, averaged over "
                f"the tasks ({score}); 0.5: neither is better. n: the seeds of the row's and the column's group.",
                "",
                "| P(row beats column) | " + " | ".join(f"{label} (n={seeds[label]})" for label in labels) + " |",
                "|---" * (len(labels) + 1) + "|",
            ]
            for x in labels:
                cells = [
                    "–"
                    if x == y
                    else fmt_interval(c["p"], c["ci_low"], c["ci_high"], digits=2) + f" n={c['n_x']} vs {c['n_y']}"
                    for y in labels
                    for c in [cell.get((x, y))]
                ]
                lines.append(f"| {x} (n={seeds[x]}) | " + " | ".join(cells) + " |")
    return lines


def _by(items: list[dict], key) -> dict:
    out: dict = defaultdict(list)
    for item in items:
        out[key(item)].append(item)
    return out


def _methods_table(aggregates: dict, groups: dict[str, list[dict]]) -> list[str]:
    """The table a continual-learning paper prints: one row per method (group), the mean over seeds × tasks with
    its interval for average performance, forgetting and forward transfer (Continual World's AUC against the
    `reset` run of the same seed where the runs have one, else from R), plus plasticity; Continual World's
    published numbers beside each row when the runs are on one of its sequences."""

    def forward(agg: dict) -> str:
        auc, from_r = agg["auc_forward_transfer"], agg["forward_transfer"]
        if auc and auc.get("n"):
            return _cell(auc)
        return _cell(from_r) + " (R)" if from_r and from_r.get("n") else "–"

    head = ["average", "forgetting", "forward transfer", "plasticity"]
    retained = sorted({n for agg in aggregates.values() for n in agg.get("retention", {})})
    head += [f"{n}: {k}" for n in retained for k in ("average", "forgetting")]
    rows = []
    shown_published = False
    for label, agg in aggregates.items():
        summary = groups[label][0]["summary"]
        cells = [_cell(agg["average"]), _cell(agg["forgetting"]), forward(agg), _cell(agg["plasticity"])]
        cells += [
            _cell(agg.get("retention", {}).get(n, {}).get(k)) for n in retained for k in ("average", "forgetting")
        ]
        paper = published(summary.get("sequence"), summary.get("method"))
        if paper is not None:
            shown_published = True
            cells += [
                fmt_interval(*paper[k]) if k in paper else "–" for k in ("average", "forgetting", "forward_transfer")
            ]
        rows.append((label, agg["seeds"], cells))
    if shown_published:
        head += ["published: average", "published: forgetting", "published: forward transfer"]
        rows = [(label, seeds, cells + ["–"] * (len(head) - len(cells))) for label, seeds, cells in rows]
    lines = [
        "",
        f"## Methods: mean over seeds × tasks [{describe()}]",
        "",
        "Average: every task's final score; forgetting: every earlier task's drop from right after its training to "
        "the end (positive = forgot); forward transfer: Continual World's, the area under each task's training "
        "curve against the `reset` run of the same seed (0: no better than a fresh network), or, marked (R), from "
        "the results matrix when no `reset` run is in the comparison or tasks were evaluated fewer than "
        f"{MIN_CURVE} times while they trained (eval.during=none); plasticity: each task's score right after its "
        "own training."
        + (
            f" {', '.join(retained)}: the extra evaluation set(s) never trained in the sequence (e.g. the pretraining "
            "tasks): each task's score at the end, and its drop from before the sequence (retention; positive = lost)."
            if retained
            else ""
        ),
    ]
    if shown_published:
        lines += ["", f"Published: {SOURCE}."]
    lines += ["", "| method | seeds | " + " | ".join(head) + " |", "|---" * (len(head) + 2) + "|"]
    lines += [f"| {label} | {seeds} | " + " | ".join(cells) + " |" for label, seeds, cells in rows]
    return lines


def _mean_run(members: list[dict]) -> dict | None:
    """The seeds of one group as one run whose R is their mean (None where their task lists differ)."""
    first = members[0]
    if any(m["results"]["tasks"] != first["results"]["tasks"] for m in members):
        return None
    matrix = np.mean([np.asarray(m["results"]["matrix"], dtype=float) for m in members], axis=0)
    return {**first, "results": {**first["results"], "matrix": matrix.tolist()}}


def _metric_tables(aggregates: dict) -> list[str]:
    head = "| group | seeds | " + " | ".join(_ALL_KEYS) + " |"
    lines = []
    for kind, title in (("iqm", "Interquartile mean (IQM)"), ("mean", "Mean")):
        lines += ["", f"## {title} over seeds × tasks [{describe()}]", "", head, "|---" * (len(_ALL_KEYS) + 2) + "|"]
        for label, agg in aggregates.items():
            lines.append(f"| {label} | {agg['seeds']} | " + " | ".join(_cell(agg[k], kind) for k in _ALL_KEYS) + " |")
    return lines


def _per_task_tables(aggregates: dict, results: dict) -> list[str]:
    tasks = results["tasks"]
    unit = " (nats)" if results["metric"] == "loss" else ""
    knowledge = any(a["per_task"]["knowledge_accuracy"]["n"] for a in aggregates.values())
    head = [f"forgetting: {t}" for t in tasks[:-1]] + [f"final: {t}" for t in tasks]
    head += ["knowledge: seen people", "knowledge: never-seen people", "chance"] if knowledge else []
    lines = [
        "",
        f"## Per task{unit}: mean over seeds [{describe()}]",
        "",
        f"Forgetting: how much worse a task's {results['metric']} is at the end than right after its own stage "
        "(positive = forgot); final: its score at the end. With one value per seed, an interval cannot be wider "
        "than the seeds' range: read it with its n.",
        "",
        "| group | seeds | " + " | ".join(head) + " |",
        "|---" * (len(head) + 2) + "|",
    ]
    for label, agg in aggregates.items():
        per = agg["per_task"]
        cells = [_cell(per["forgetting"][t]) for t in tasks[:-1]] + [_cell(per["final"][t]) for t in tasks]
        cells += [_cell(per[key]) for key in KNOWLEDGE] if knowledge else []
        lines.append(f"| {label} | {agg['seeds']} | " + " | ".join(cells) + " |")
    keys = list(next(iter(aggregates.values()))["per_task"]["stability_gap"])
    if keys:
        lines += [
            "",
            f"## Stability gap{unit}: mean over seeds [{describe()}]",
            "",
            f"{BASELINE} Depth: how much worse than the baseline a domain (or probe: accuracy, higher is better) got "
            "at its worst point of the stage; worst at: the update of the stage where it was worst, and regained: "
            "the share of the depth made up by the stage's end (medians over the seeds with a gap); back: the seeds "
            "whose domain came back to its baseline within the stage.",
        ]
        for kind, title in (
            ("earlier", "Earlier domains and their probes (De Lange et al. 2023)"),
            ("target", "The stage's own domain and probes (Guo et al. 2024)"),
        ):
            rows = [
                f"| {label} | {key} | {_cell(gap['start'])} | {_cell(gap['depth'])} | {_num(gap['worst_step'], 'g')} | "
                f"{_num(gap['share_regained'], '.2f')} | {gap['recovered']}/{gap['with_gap']} |"
                for label, agg in aggregates.items()
                for key, gap in agg["per_task"]["stability_gap"].items()
                if gap["kind"] == kind
            ]
            if rows:
                lines += [
                    "",
                    f"### {title}",
                    "",
                    "| group | evaluated in stage | baseline | depth | worst at | regained | back |",
                    "|---|---|---|---|---|---|---|",
                    *rows,
                ]
        lines += ["", f"![stability gap]({GAP_PLOT})"]
    return lines


def compare_runs(run_dirs: list[str | Path], out_dir: str | Path) -> Path:
    """Side-by-side report of several runs; the seeds of one label are aggregated with rliable.

    ``comparison.json`` holds ``runs``, ``aggregation`` (how: confidence, resamples, seed), ``groups``
    (``{label: {"seeds", <metric>: stats, "auc_forward_transfer": stats, "per_task": {"forgetting": {task: stats},
    "final": {task: stats}, "knowledge_accuracy": stats, "stability_gap": {...}}}}``, where stats are
    ``retain.aggregate.estimates`` entries: ``n`` seeds, ``tasks``, ``iqm``/``mean`` and their CI bounds) and
    ``probability_of_improvement`` (``{"average": [pair], "forgetting": [pair]}``, pairs from
    ``retain.aggregate.probability_of_improvement`` plus the score's ``metric`` and which way is ``better``).
    """
    runs = [load_run(d) for d in run_dirs]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    groups: dict[str, list[dict]] = defaultdict(list)
    for run in runs:
        groups[label_of(run)].append(run)
    references = {
        (r["summary"].get("sequence"), r["summary"].get("seed")): r
        for r in runs
        if r["summary"].get("method") == "reset"
    }
    per_task = len({tuple(r["results"]["tasks"]) for r in runs}) == 1  # per-task columns need one task list
    aggregates, matrices = {}, {}
    for label, members in groups.items():
        aggregates[label], matrices[label] = _aggregate(members, references, per_task)
    improvements = _improvements(groups, matrices)

    lines = [
        "# retain comparison",
        "",
        f"{len(runs)} runs in {len(groups)} groups (a group: the seeds of one condition), aggregated with rliable "
        "(Agarwal et al. 2021): a metric is scored over runs × tasks where it has per-task values (average: every "
        "task's final score; plasticity: every task's score right after its own training; forgetting, "
        "max_forgetting, backward_transfer: every earlier task's; forward_transfer: every later task's), and over "
        "runs otherwise (auc_forward_transfer, against the `reset` run of the same seed). The interquartile mean "
        f"and the mean each come with a {describe()}, {REPS} resamples, seed {SEED}: runs are resampled within "
        "every task. n: the seeds behind a value; with one seed there is no interval.",
        *_methods_table(aggregates, groups),
        *_metric_tables(aggregates),
        *_improvement_tables(improvements),
    ]
    if per_task:
        lines += _per_task_tables(aggregates, runs[0]["results"])
    lines += ["", "## Per-task curves", "", f"![curves]({CURVES})", "", "## Results matrices: mean over seeds", ""]
    plot_curves(runs, out / CURVES)
    if per_task:
        plot_gaps(runs, groups, out / GAP_PLOT)
    for k, (label, members) in enumerate(groups.items()):
        mean = _mean_run(members)
        if mean is not None:
            name = f"heatmap_{k}.png"
            plot_heatmap(mean, out / name, f"R, mean of {len(members)} seed(s)\n{label}")
            lines += [f"![{label}]({name})", ""]
    lines += ["## Runs", ""]
    for run in runs:
        lines += [
            f"### {label_of(run)} (seed {run['config'].get('seed', '?')}) — `{run['dir']}`",
            "",
            *_matrix_table(run["results"]),
            "",
        ]
    write_text_atomic(out / "report.md", "\n".join(lines))
    comparison = {
        "runs": [_run_path(r["dir"], out) for r in runs],
        "aggregation": {"method": METHOD, "confidence": CONFIDENCE, "reps": REPS, "seed": SEED},
        "groups": aggregates,
        "probability_of_improvement": improvements,
    }
    (out / "comparison.json").write_text(json.dumps(comparison, indent=2))
    return out / "report.md"


def _run_path(run_dir: str | Path, out: Path) -> str:
    """How comparison.json names a run: relative to the comparison when inside it (a sweep's jobs), so the sweep
    folder can be moved or reported from anywhere; absolute otherwise."""
    run_dir, out = Path(run_dir).resolve(), out.resolve()
    return str(run_dir.relative_to(out)) if run_dir.is_relative_to(out) else str(run_dir)


def _stored_run(comparison_dir: Path, stored: str) -> Path:
    """A run named in comparison.json: relative to the comparison, or as written (older files: relative to the
    directory the sweep ran in, so its last part is tried inside the comparison too)."""
    for candidate in (comparison_dir / stored, comparison_dir / Path(stored).name):
        if candidate.is_dir():
            return candidate
    return Path(stored)


def main(args: list[str]) -> int:
    """``retain report RUN_DIR [RUN_DIR ...] [--out DIR]``: rebuild or compare reports from files alone."""
    import argparse
    import sys
    import time

    from retain.errors import fail

    parser = argparse.ArgumentParser(
        prog="retain report",
        description="Rebuild report.md and plots from run directories; with several runs, compare them (seeds of one method are aggregated).",
    )
    parser.add_argument(
        "run_dirs", nargs="+", help="sequence or cpt run directories (a demo directory rebuilds its comparison)"
    )
    parser.add_argument("--out", help="where a comparison is written (default runs/report/<date>_<time>)")
    parser.add_argument("--debug", action="store_true", help="print tracebacks")
    opts = parser.parse_args([a.replace("debug=true", "--debug") for a in args])
    try:
        if len(opts.run_dirs) == 1 and opts.out is None:
            run_dir = Path(opts.run_dirs[0])
            comparison = run_dir / "comparison.json"
            if comparison.exists():
                runs = [_stored_run(run_dir, r) for r in json.loads(comparison.read_text())["runs"]]
                path = compare_runs(runs, run_dir)
            else:
                path = write_report(run_dir)
        else:
            out = Path(opts.out or f"runs/report/{time.strftime('%Y-%m-%d_%H-%M-%S')}")
            path = compare_runs(opts.run_dirs, out)
    except UserError as e:
        return fail(e.problem, e.fix, e, opts.debug)
    print(f"report: {path}", file=sys.stdout)
    return 0
