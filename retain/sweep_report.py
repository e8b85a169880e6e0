"""One comparison report at the end of a Hydra sweep, written by a Hydra callback.

A preset that sweeps (``hydra.mode: MULTIRUN`` with ``hydra.sweeper.params``) names the callback::

    hydra:
      callbacks:
        sweep_report:
          _target_: retain.sweep_report.SweepReport

and ``retain <job> experiment=<preset>`` then ends with ``<sweep dir>/report.md``: every finished run of the
sweep compared by ``retain.report.compare_runs``, the runs of one setting (one label: for ``retain cpt`` the
run's ``name``) aggregated over seeds with rliable (interquartile mean and mean with stratified-bootstrap 95% CIs,
probability of improvement between settings). ``retain report <sweep dir>`` rebuilds it from the files alone.
The callback runs in the process that launched the sweep, after the last job.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from retain.aggregate import describe, fmt_stats
from retain.report import compare_runs
from retain.rundir import RESULTS_FILE


def sweep_runs(sweep_dir: str | Path) -> list[Path]:
    """The finished runs of a sweep: its sub-directories holding ``results.json``, in job order."""

    def job_number(path: Path) -> tuple[int, str]:
        head = path.name.split("_", 1)[0]
        return (int(head), path.name) if head.isdigit() else (sys.maxsize, path.name)

    root = Path(sweep_dir)
    return sorted((d for d in root.iterdir() if (d / RESULTS_FILE).exists()), key=job_number)


def summary_lines(sweep_dir: str | Path) -> list[str]:
    """One line per setting of a written comparison: each earlier task's forgetting and the last task's
    final score, mean [CI] n=seeds (what the CPT presets compare)."""
    comparison = json.loads((Path(sweep_dir) / "comparison.json").read_text())
    lines = []
    for label, group in comparison["groups"].items():
        per_task = group.get("per_task")
        if not per_task:
            continue
        cells = [
            f"{task} forgetting {fmt_stats(stats)}"
            for task, stats in per_task["forgetting"].items()
            if stats["mean"] is not None
        ]
        last, stats = list(per_task["final"].items())[-1]
        cells.append(f"{last} final {fmt_stats(stats)}")
        lines.append(f"  {label}: " + "  ".join(cells))
    return lines


class SweepReport(Callback):
    """Compare the runs of a finished sweep in ``<hydra.sweep.dir>/report.md`` (see the module docstring)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        runs = sweep_runs(sweep_dir) if sweep_dir.is_dir() else []
        if not runs:
            print(f"retain: no finished run under {sweep_dir}: no comparison written", file=sys.stderr)
            return
        path = compare_runs(runs, sweep_dir)
        print(f"retain: {len(runs)} runs compared (mean over seeds [{describe()}], n = seeds):")
        print("\n".join(summary_lines(sweep_dir)))
        print(f"report: {path}")
