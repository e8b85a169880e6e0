"""The continual runner: the one loop in retain that switches tasks.

For every task, in order: the method's ``before_task``, the learner's ``prepare_task`` (on the tasks the
method says to train on), training in chunks, and at chunk ends the evaluation the schedule asks for (all
tasks, the current one, or none; dense early in the task, where the stability gap opens) and checkpoints.
At the task's end every task is scored into R's row — plus any extra evaluation set the learner has (e.g.
its pretraining tasks, for retention) and its probes — then the stability gap of the task, the method's
``after_task`` and a checkpoint. At the end, ``continual_metrics`` of R, ``results.json``, ``summary.json``
and the report.

The runner imports no feature package: SB3, offline and CPT learners plug in through ``retain.learner``,
methods through ``retain.methods``.

**Exact resume.** A checkpoint at a chunk boundary holds the learner's whole state, the method's, the
runner's (position, R, curves, the stability-gap baselines, probes), the global RNG states and the byte
offset of ``metrics.jsonl``. ``resume=True`` loads the newest intact one (a damaged newest one is skipped
with a warning), truncates ``metrics.jsonl`` to that offset and continues at the next chunk: on CPU the
run ends exactly as an uninterrupted one (learners make every chunk deterministic given their state).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from retain.checkpoint import load_latest, save_checkpoint
from retain.errors import ConfigError
from retain.learner import Learner, LearnerState, StepHooks, TaskScore
from retain.methods.base import Method
from retain.metrics import METRIC_KEYS, continual_metrics, retention_metrics, stability_gap
from retain.seeding import rng_state, set_rng_state
from retain.tracking import LoggerConfig, Tracker, progress_bar

CHECKPOINTS = "checkpoints"
DURING = ("all", "current", "none")


@dataclass
class Schedule:
    """When a task's training pauses to evaluate and to checkpoint, in the learner's units."""

    during: str = "all"
    """tasks evaluated at a chunk end inside a task, for learning curves: all | current | none (every task is
    evaluated at each task's end regardless)"""
    chunks_per_task: int = 10
    """evenly spaced evaluation points per task (used when ``every`` is None)"""
    every: int | None = None
    """an evaluation point every this many units instead (0: none inside a task)"""
    dense_every: int = 0
    """evaluation points every this many units early in a task, where the stability gap is deepest (0: off)"""
    dense_until_fraction: float = 0.0
    """the early part of a task that is evaluated densely (``every``/``chunks_per_task`` rule the rest)"""
    checkpoint_every: int | None = None
    """a checkpoint every this many units inside a task; None: at every evaluation point; 0: only at task ends"""

    def check(self) -> None:
        if self.during not in DURING:
            raise ConfigError(f"eval.during={self.during!r} is not a choice", f"use one of {', '.join(DURING)}")
        if self.every is None and self.chunks_per_task < 1:
            raise ConfigError(
                f"chunks_per_task={self.chunks_per_task} leaves no chunk to train", "use chunks_per_task >= 1"
            )
        for key in ("every", "dense_every", "checkpoint_every"):
            value = getattr(self, key)
            if value is not None and value < 0:
                raise ConfigError(f"{key}={value} is negative", f"use {key} >= 0")
        if not 0.0 <= self.dense_until_fraction <= 1.0:
            raise ConfigError(f"dense_until_fraction={self.dense_until_fraction} is not in [0, 1]", "use e.g. 0.1")


@dataclass(frozen=True)
class Boundary:
    """A point inside a task where training pauses: ``end`` units into it."""

    end: int
    evaluate: bool
    checkpoint: bool


def task_plan(budget: int, granularity: int, schedule: Schedule) -> list[Boundary]:
    """The chunk ends of one task: whole multiples of ``granularity`` (the budget rounded up to one), each
    flagged for evaluation and checkpointing; the last one is the task's end and does both. A period that is
    not a multiple of the granularity (``every=1000`` env steps with SB3 rollouts of 2048) fires at the first
    chunk end at or past each of its multiples."""
    granularity = max(1, int(granularity))
    pieces = max(1, math.ceil(budget / granularity))
    total = pieces * granularity
    if schedule.every is None:
        chunks = max(1, min(schedule.chunks_per_task, pieces))
        base, extra = divmod(pieces, chunks)
        sizes = [base + (1 if c < extra else 0) for c in range(chunks)]
        sparse = {int(p) * granularity for p in np.cumsum(sizes)[:-1]}
    else:
        sparse = set()

    def crosses(units: int, period: int) -> bool:
        # a multiple of `period` lies in (units - granularity, units]: the first chunk end at or past it
        return units // period > (units - granularity) // period

    points = []
    for piece in range(1, pieces):
        units = piece * granularity
        if schedule.dense_every and units <= schedule.dense_until_fraction * total:
            evaluate = crosses(units, schedule.dense_every)
        elif schedule.every is not None:
            evaluate = schedule.every > 0 and crosses(units, schedule.every)
        else:
            evaluate = units in sparse
        if schedule.checkpoint_every is None:
            checkpoint = evaluate
        else:
            checkpoint = schedule.checkpoint_every > 0 and crosses(units, schedule.checkpoint_every)
        if evaluate or checkpoint:
            points.append(Boundary(units, evaluate, checkpoint))
    return [*points, Boundary(total, True, True)]


class _Silent:
    """The tracker of data-parallel processes other than the main one: they log nothing."""

    def log(self, metrics: dict, step: int) -> None:
        pass

    def offset(self) -> int:
        return 0

    def close(self) -> None:
        pass


class _Single:
    """One process: the default coordinator (a ``retain.training.distributed.Parallel`` has the same face)."""

    is_main = True

    def barrier(self) -> None:
        pass


@dataclass
class RunOutputs:
    """What the job adds to the run directory's files."""

    job: str = "sequence"
    """the job's name (summary.json, checkpoint metadata)"""
    config: dict | None = None
    """the resolved config (checkpoint metadata, wandb)"""
    summary: dict[str, Any] = field(default_factory=dict)
    """keys added to summary.json (e.g. the sequence, method and agent names)"""
    results: dict[str, Any] = field(default_factory=dict)
    """keys added to results.json"""
    description: list[str] = field(default_factory=list)
    """the report's "What was run" lines (markdown), written by the job that knows what it ran"""


class Runner:
    """Trains ``learner`` through its tasks with ``method``; see the module docstring."""

    def __init__(
        self,
        learner: Learner,
        method: Method,
        run_dir: str | Path,
        *,
        schedule: Schedule | None = None,
        logger: LoggerConfig | None = None,
        outputs: RunOutputs | None = None,
        resume: bool = False,
        progress: bool = False,
        parallel: Any = None,
        write_files: bool = True,
        started: float | None = None,
        tracker: Tracker | None = None,
    ):
        self.learner, self.method = learner, method
        self.run_dir = Path(run_dir)
        self.schedule = schedule or Schedule()
        self.schedule.check()
        self.logger_cfg = logger
        self.outputs = outputs or RunOutputs()
        self.resume, self.progress = resume, progress
        self.parallel = parallel or _Single()
        self.write_files = write_files
        self._given_tracker = tracker  # the caller's, opened at the resume offset, and closed by the caller
        self.started = started if started is not None else time.perf_counter()
        self.plans = [task_plan(learner.budget(i), learner.granularity(i), self.schedule) for i in range(self.T)]
        self.seconds = {"train": 0.0, "eval": 0.0, "checkpoint": 0.0}
        self._scored: dict[int, tuple[dict, TaskScore]] = {}
        """per eval task, the method's weights it was last scored with and the score (see ``_evaluate``)"""

    @property
    def T(self) -> int:
        return len(self.learner.tasks)

    @property
    def columns(self) -> list[str]:
        return list(self.learner.eval_tasks)

    # -- evaluation --------------------------------------------------------------------------------------

    def _evaluate(self, current: int, indices: list[int], row: bool = False) -> dict[int, TaskScore]:
        """Score eval tasks ``indices`` with the weights the method picks and log them. A curve point (``row`` False)
        is added to the curves; ``row`` True scores a row of R with the learner's ``evaluate_row`` where it has one
        (CPT: the whole validation split, where curve points use a fixed sample of it), logged as ``eval/<task>/row/``."""
        t0 = time.perf_counter()
        weights = {j: self.method.eval_weights(self, current, j) for j in indices}
        scorer = getattr(self.learner, "evaluate_row", None) if row else None
        if scorer is not None:
            scores = scorer(indices, weights)
        else:
            # evaluations are seeded per task, so the very weights object a method hands out again (reset's model
            # of a finished task, a fresh model before its task) scores what it scored: reuse it instead of re-running
            known = {
                j: self._scored[j][1]
                for j in indices
                if weights[j] is not None and j in self._scored and self._scored[j][0] is weights[j]
            }
            todo = [j for j in indices if j not in known]
            scores = {**(self.learner.evaluate(todo, {j: weights[j] for j in todo}) if todo else {}), **known}
            self._scored.update({j: (weights[j], scores[j]) for j in todo if weights[j] is not None})
        seconds = time.perf_counter() - t0
        self.seconds["eval"] += seconds
        step = self.learner.global_step
        prefix = "row/" if scorer is not None else ""
        logged = {f"eval/{self.columns[j]}/{prefix}{k}": v for j in indices for k, v in scores[j].metrics.items()}
        logged["perf/eval_seconds"] = seconds
        self.tracker.log(logged, step)
        if scorer is None:
            for j in indices:
                self.curves[self.columns[j]].append([step, scores[j].score])
        return scores

    def _row(self, current: int) -> list[float]:
        """A row of R (or the initial scores): every eval task, as ``evaluate_row`` scores it where the learner has
        one — besides a curve point at the same weights, so curves and their stability gaps stay on one sample."""
        indices = list(range(len(self.columns)))
        scores = self._evaluate(current, indices)
        if hasattr(self.learner, "evaluate_row"):
            scores = self._evaluate(current, indices, row=True)
        return [scores[j].score for j in indices]

    def _extra_higher_is_better(self, name: str) -> bool:
        """An extra set's direction: the learner's, unless it says otherwise (an LM policy's text loss)."""
        if hasattr(self.learner, "extra_higher_is_better"):
            return self.learner.extra_higher_is_better(name)
        return self.learner.higher_is_better

    def _evaluate_extra(self) -> dict[str, list[float]]:
        rows = {}
        for name in self.extra:
            scores = self.learner.evaluate_extra(name)
            tasks = self.extra[name]["tasks"]
            self.tracker.log(
                {f"eval/{name}/{t}/{k}": v for t, s in zip(tasks, scores) for k, v in s.metrics.items()},
                self.learner.global_step,
            )
            rows[name] = [s.score for s in scores]
        return rows

    def _probe(self, point: bool = False) -> dict[str, float]:
        """The learner's probes now (e.g. knowledge accuracy), logged and added to the probe curves; ``point``: at
        an evaluation point inside a task, where a learner probes what it says (``probe_point``)."""
        if point:
            values = self.learner.probe_point() if hasattr(self.learner, "probe_point") else {}
        elif hasattr(self.learner, "probe"):
            values = self.learner.probe()
        else:
            return {}
        if values:
            step = self.learner.global_step
            self.tracker.log({f"eval/{k}": v for k, v in values.items()}, step)
            for key, value in values.items():
                self.probe_curves.setdefault(key, []).append([step, value])
        return values

    def _diagonal(self, task: int) -> str | None:
        """The eval task a task is scored as (R's diagonal): the learner's declaration, else the same index."""
        declared = getattr(self.learner, "scored_as", None)
        if declared is not None:
            return declared[task]
        return self.columns[task] if task < len(self.columns) else None

    def _start(self, task: int, moved: bool) -> None:
        """Record where ``task`` starts: the stability gap's one baseline, the curve point (and probes) at the
        weights the task starts from — the previous task's last evaluation, or a fresh one when the weights
        just changed (a branch from a checkpoint, a reset)."""
        if moved and task > 0:
            scores = self._evaluate(task, list(range(len(self.columns))))
            start = [scores[j].score for j in range(len(self.columns))]
            probes = self._probe()
        else:
            start = [self.curves[n][-1][1] if self.curves[n] else math.nan for n in self.columns]
            probes = {k: v[-1][1] for k, v in self.probe_curves.items() if v}
        self.current = {
            "start": start,
            "start_step": self.learner.global_step,
            "curve_start": {n: len(self.curves[n]) for n in self.columns},
            "probe_start": probes,
            "probe_curve_start": {k: len(v) for k, v in self.probe_curves.items()},
        }

    def _gaps(self, task: int) -> dict[str, dict]:
        """The stability gap of every eval task and probe over the task just finished (steps from its start), all
        against the one baseline ``_start`` recorded. ``kind``: ``target`` (the task's own, Guo et al. 2024),
        ``earlier`` (a task trained before: De Lange et al. 2023) or ``other`` (not trained yet); a probe named
        ``<eval task>/...`` takes its task's kind (probes of a task not trained yet are left out), any other probe
        is ``probe``. Probe gaps have ``"probe": True`` and are higher-is-better."""
        cur = self.current
        earlier = {self._diagonal(k) for k in range(task)}

        def kind_of(name: str) -> str:
            return "target" if name == self._diagonal(task) else "earlier" if name in earlier else "other"

        out = {}
        for j, name in enumerate(self.columns):
            points = self.curves[name][cur["curve_start"][name] :]
            steps = [int(step) - cur["start_step"] for step, _ in points]
            gap = stability_gap(steps, [v for _, v in points], cur["start"][j], self.learner.higher_is_better)
            out[name] = {**gap, "kind": kind_of(name), "start": cur["start"][j]}
        measured = getattr(self.learner, "probe_gap", lambda key: True)
        for key, curve in self.probe_curves.items():
            if key not in cur.get("probe_start", {}) or not measured(key):
                continue
            source = key.split("/")[0]
            kind = kind_of(source) if source in self.columns else "probe"
            if kind == "other":
                continue
            points = curve[cur["probe_curve_start"].get(key, 0) :]
            steps = [int(step) - cur["start_step"] for step, _ in points]
            gap = stability_gap(steps, [v for _, v in points], cur["probe_start"][key], True)
            out[f"probe:{key}"] = {**gap, "kind": kind, "probe": True, "start": cur["probe_start"][key]}
        return out

    # -- checkpoints -------------------------------------------------------------------------------------

    def _save(self, task: int, chunk: int) -> None:
        t0 = time.perf_counter()
        learner_state: LearnerState = self.learner.state()  # every process: gathering sharded state is collective
        state = {
            "learner": learner_state.state,
            "method": self.method.state_dict(),
            "runner": {
                "task": task,
                "chunk": chunk,
                "R": self.R,
                "initial": self.initial,
                "extra": self.extra,
                "curves": self.curves,
                "gaps": self.gaps,
                "probes": self.probes,
                "probe_curves": self.probe_curves,
                "current": self.current,
                "units_done": self.units_done,
                "boundaries": self.boundaries,
                "seconds": self.seconds,
                "tracker_offset": self.tracker.offset(),
            },
            "rng": rng_state(),
        }
        if self.parallel.is_main:
            meta = {"job": self.outputs.job, "task": task, "chunk": chunk, "config": self.outputs.config}
            save_checkpoint(
                self.run_dir / CHECKPOINTS,
                self.units_done,  # only grows (a CPT stage may restart or copy its step counter)
                learner_state.weights,
                state,
                meta=meta,
                arrays=learner_state.arrays,
            )
        self.parallel.barrier()  # nobody reads a checkpoint before it exists
        self.seconds["checkpoint"] += time.perf_counter() - t0

    def _restore(self, saved) -> tuple[int, int]:
        path, weights, state, _meta, arrays = saved
        if "runner" not in state or "learner" not in state:
            from retain.errors import CheckpointError

            raise CheckpointError(
                f"checkpoint {path} was not written by the continual runner", "resume it with the job that wrote it"
            )
        self.learner.load_state(LearnerState(weights, state["learner"], arrays), str(path))
        self.method.load_state_dict(state["method"])
        r = state["runner"]
        self.R, self.initial, self.extra = r["R"], r["initial"], r["extra"]
        self.curves, self.gaps, self.probes, self.current = r["curves"], r["gaps"], r["probes"], r["current"]
        self.probe_curves = r.get("probe_curves", {})
        self.units_done, self.boundaries, self.seconds = r["units_done"], r["boundaries"], r["seconds"]
        set_rng_state(state["rng"])
        return int(r["task"]), int(r["chunk"])

    # -- the loop ----------------------------------------------------------------------------------------

    def run(self, stop_after: int | None = None) -> dict:
        """Train every task, fill R and write the run's files; returns the results.

        ``stop_after`` returns after that many units in this call as if the process were killed (nothing
        more is evaluated or saved; ``stopped`` is True): how tests interrupt a run.
        """
        saved = load_latest(self.run_dir / CHECKPOINTS) if self.resume else None
        offset = saved[2]["runner"]["tracker_offset"] if saved and "runner" in saved[2] else None
        if self._given_tracker is not None:
            self.tracker = self._given_tracker
        elif self.parallel.is_main:
            self.tracker = Tracker(self.run_dir, self.logger_cfg, config=self.outputs.config, resume_offset=offset)
        else:
            self.tracker = _Silent()
        total = sum(p[-1].end for p in self.plans)
        try:
            if saved is not None:
                start_task, start_chunk = self._restore(saved)
            else:
                start_task, start_chunk = 0, 0
            done = self.units_done if saved is not None else 0
            self.bar = progress_bar(total, self.progress and self.parallel.is_main, desc=self.outputs.job, initial=done)
            self.learner.bind(self.tracker.log, StepHooks(self.method), self.bar)
            if saved is None:
                self._begin()
            stopped = self._loop(start_task, start_chunk, stop_after)
            self.bar.close()
            results = self._results(stopped)
            if not stopped and self.write_files and self.parallel.is_main:
                results["summary"] = self._write(results)
            return results
        finally:
            if self._given_tracker is None:
                self.tracker.close()

    def _begin(self) -> None:
        """Before the first task: every score of the starting model."""
        E = len(self.columns)
        self.R = [[math.nan] * E for _ in range(self.T)]
        self.curves = {n: [] for n in self.columns}
        self.probe_curves: dict[str, list] = {}
        self.gaps, self.units_done, self.boundaries = [], 0, []
        self.initial = self._row(-1)
        sets = self.learner.extra_eval_sets() if hasattr(self.learner, "extra_eval_sets") else {}
        self.extra = {name: {"tasks": list(tasks), "rows": []} for name, tasks in sets.items()}
        for name, row in self._evaluate_extra().items():
            self.extra[name]["initial"] = row
        self.probes = {"initial": self._probe(), "stages": []}
        self.current = None

    def _loop(self, start_task: int, start_chunk: int, stop_after: int | None) -> bool:
        done_here = 0
        for i in range(start_task, self.T):
            plan = self.plans[i]
            if start_chunk == 0:
                moved = bool(self.method.before_task(self, i))
                replay = self.method.replay(i)
                memory = self.method.replay_memory()
                moved = bool(self.learner.prepare_task(i, self.method.train_tasks(i), replay, memory)) or moved
                self._start(i, moved)
            previous = plan[start_chunk - 1].end if start_chunk else 0
            for c in range(start_chunk, len(plan)):
                boundary = plan[c]
                units = boundary.end - previous
                previous = boundary.end
                if stop_after is not None and done_here + units > stop_after:
                    if stop_after > done_here:
                        self.learner.train_chunk(i, c, stop_after - done_here)  # killed mid-chunk
                    return True
                t0 = time.perf_counter()
                self.learner.train_chunk(i, c, units)
                self.seconds["train"] += time.perf_counter() - t0
                done_here += units
                self.units_done += units
                last = c == len(plan) - 1
                if last:
                    self._end_task(i)
                elif boundary.evaluate and self.schedule.during != "none":
                    indices = list(range(len(self.columns))) if self.schedule.during == "all" else [i]
                    self._evaluate(i, [j for j in indices if j < len(self.columns)])
                    self._probe(point=True)
                if boundary.checkpoint:
                    self._save(i + 1, 0) if last else self._save(i, c + 1)
                if stop_after is not None and done_here >= stop_after and not (last and i == self.T - 1):
                    return True
            start_chunk = 0
        return False

    def _end_task(self, i: int) -> None:
        self.method.after_training(self, i)
        self.R[i] = self._row(i)
        probes = self._probe()
        self.gaps.append(self._gaps(i))
        self.tracker.log(
            {f"eval/{n.removeprefix('probe:')}/stability_gap_depth": gap["depth"] for n, gap in self.gaps[-1].items()},
            self.learner.global_step,
        )
        for name, row in self._evaluate_extra().items():
            self.extra[name]["rows"].append(row)
        self.probes["stages"].append(probes)
        self.boundaries.append(self.units_done)
        self.method.after_task(self, i)
        done = [self.R[i][j] for j in range(min(i + 1, len(self.columns)))]
        self.tracker.log({"cl/task_index": i, "cl/average_so_far": float(np.mean(done))}, self.learner.global_step)

    # -- outputs -----------------------------------------------------------------------------------------

    def _results(self, stopped: bool) -> dict:
        finished = len(self.gaps)
        out = {
            "tasks": self.columns,
            "rows": list(self.learner.tasks),
            "matrix": [list(row) for row in self.R[:finished]],
            "initial": list(self.initial),
            "higher_is_better": self.learner.higher_is_better,
            "metric": self.learner.metric,
            "curves": self.curves,
            "stability_gap": list(self.gaps),
            "probes": self.probes,
            "probe_curves": self.probe_curves,
            "task_boundaries": list(self.boundaries),
            "global_step": self.learner.global_step,
            "stopped": stopped,
        }
        if not stopped:
            out["metrics"] = _metrics(out["matrix"], out["initial"], self.learner.higher_is_better)
            out["extra"] = {
                name: {
                    **e,
                    "matrix": e["rows"],
                    "higher_is_better": self._extra_higher_is_better(name),
                    "metrics": retention_metrics(e["rows"], e.get("initial"), self._extra_higher_is_better(name)),
                }
                for name, e in self.extra.items()
            }
        return out

    def _write(self, results: dict) -> dict:
        from retain.report import write_report
        from retain.rundir import write_results, write_summary

        metrics = results["metrics"]
        self.tracker.log(
            {f"cl/{k}": v for k, v in metrics.items() if k != "per_task" and v is not None}, results["global_step"]
        )
        for name, e in results["extra"].items():
            self.tracker.log(
                {f"cl/{name}/{k}": v for k, v in e["metrics"].items() if isinstance(v, float)}, results["global_step"]
            )
        written = {k: results[k] for k in ("tasks", "matrix", "initial", "higher_is_better", "metric", "metrics")}
        written["task_boundaries"] = results["task_boundaries"]
        written["unit"] = getattr(self.learner, "unit", "steps")
        if results["rows"] != results["tasks"]:
            written["stages"] = results["rows"]
        written["stability_gap"] = results["stability_gap"]
        written["scored_as"] = [self._diagonal(i) for i in range(self.T)]
        if results["probe_curves"]:
            written["probe_curves"] = results["probe_curves"]
        if any(results["probes"]["stages"]) or results["probes"]["initial"]:
            written["probes"] = results["probes"]
        if results["extra"]:
            written["extra"] = {
                name: {k: e[k] for k in ("tasks", "matrix", "initial", "higher_is_better", "metrics")}
                for name, e in results["extra"].items()
            }
        written.update(self.outputs.results)
        write_results(self.run_dir, written)
        summary = {
            "job": self.outputs.job,
            "steps": results["global_step"],
            "wall_time_s": time.perf_counter() - self.started,
            **{f"{k}_seconds": v for k, v in self.seconds.items()},
            **{k: v for k, v in metrics.items() if k != "per_task"},
            "stability_gap": {
                row: {task: gap["depth"] for task, gap in gaps.items() if not task.startswith("probe:")}
                for row, gaps in zip(results["rows"], results["stability_gap"])
            },
            **({"probes": results["probes"]["stages"][-1]} if written.get("probes") else {}),
            **{
                f"{name}/{k}": v
                for name, e in results["extra"].items()
                for k, v in e["metrics"].items()
                if k != "per_task"
            },
            **(self.learner.summary(results) if hasattr(self.learner, "summary") else {}),
            **self.outputs.summary,
            "description": self.outputs.description,
        }
        write_summary(self.run_dir, summary)
        write_report(self.run_dir)
        return summary


def _metrics(R: list[list[float]], initial: list[float], higher_is_better: bool) -> dict:
    """``continual_metrics`` of R; when R is not square (CPT with fewer stages than sources, say) the
    metrics that pair a task's row with its column are undefined: None, with the final scores kept."""
    if len(R) == len(initial):
        return continual_metrics(R, initial, higher_is_better)
    return {**dict.fromkeys(METRIC_KEYS), "average": float(np.mean(R[-1])), "per_task": {"final": list(R[-1])}}
