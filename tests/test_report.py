"""Reports are rebuilt from run-directory files alone, and runs compare side by side."""

import json
import re
import shutil

import numpy as np
import pytest
import yaml
from rliable import library as rly
from rliable import metrics as rlm

from finetune.sequence import run_sequence
from retain.aggregate import REPS, SEED
from retain.config import load_config
from retain.metrics import continual_metrics
from retain.report import compare_runs
from retain.report import main as report_main
from retain.sweep_report import summary_lines
from tests.conftest import TINY, error_lines


def make_run(tmp_path, name, *overrides):
    run_sequence(load_config("sequence", [*TINY, f"run_dir={tmp_path / name}", *overrides]))
    return tmp_path / name


def test_report_is_rebuilt_from_files_alone(tmp_path, cli):
    run_dir = make_run(tmp_path, "a")
    original = (run_dir / "report.md").read_text()
    for name in ("report.md", "results_heatmap.png", "curves.png"):
        (run_dir / name).unlink()
    shutil.rmtree(run_dir / "checkpoints")  # a report needs no model
    proc = cli("report", str(run_dir))
    assert proc.returncode == 0, proc.stderr
    assert (run_dir / "report.md").read_text() == original
    assert (run_dir / "results_heatmap.png").stat().st_size > 1000 and (run_dir / "curves.png").stat().st_size > 1000
    for heading in ("## What was run", "## Continual metrics", "| forgetting |", "## Results matrix", "| initial |"):
        assert heading in original


def test_compare_aggregates_seeds_with_a_confidence_interval(tmp_path, cli):
    runs = [make_run(tmp_path, f"ft{s}", f"seed={s}") for s in (0, 1)] + [make_run(tmp_path, "reset0", "method=reset")]
    proc = cli("report", *map(str, runs), "--out", str(tmp_path / "cmp"))
    assert proc.returncode == 0, proc.stderr
    report = (tmp_path / "cmp" / "report.md").read_text()
    assert "| finetune · frozenlake_goals | 2 |" in report and "| reset · frozenlake_goals | 1 |" in report
    assert " [" in report.split("| finetune · frozenlake_goals | 2 |")[1].splitlines()[0]  # a CI for two seeds
    assert "] n=2 |" in report.split("| finetune · frozenlake_goals | 2 |")[1].splitlines()[0]
    comparison = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert comparison["groups"]["finetune · frozenlake_goals"]["average"]["n"] == 2
    assert (tmp_path / "cmp" / "curves.png").exists() and (tmp_path / "cmp" / "heatmap_1.png").exists()


def test_report_of_an_unfinished_run_says_how_to_finish_it(tmp_path, cli):
    (tmp_path / "half").mkdir()
    proc = cli("report", str(tmp_path / "half"))
    assert proc.returncode == 2 and "resume=true" in error_lines(proc)[0]


def test_report_of_a_corrupt_results_file(tmp_path, cli):
    run_dir = make_run(tmp_path, "a")
    (run_dir / "results.json").write_text("{not json")
    proc = cli("report", str(run_dir))
    assert proc.returncode == 2 and "corrupt" in error_lines(proc)[0]


# Synthetic run directories: the files a finished run leaves, no training.
def fake_run(root, name, matrix, method="finetune", seed=0, higher_is_better=True, initial=None, **cpt):
    R = np.asarray(matrix, dtype=float)
    tasks = [f"t{j}" for j in range(len(R))]
    run_dir = root / name
    run_dir.mkdir(parents=True)
    results = {
        "tasks": tasks,
        "matrix": R.tolist(),
        "initial": initial,
        "higher_is_better": higher_is_better,
        "metric": "success" if higher_is_better else "loss",
        "metrics": continual_metrics(R, initial, higher_is_better),
    }
    summary = {"job": "sequence", "label": f"{method} · seq", "method": method, "sequence": "seq", "seed": seed}
    config = {"seed": seed, "method": {"name": method}, "sequence": {"name": "seq"}}
    if cpt:  # a retain cpt run: labelled by its name; a stability gap per later stage
        results["stability_gap"] = cpt["gaps"]
        summary = {"job": "cpt", "label": f"cpt · {cpt['label']}", "seed": seed, "stages": tasks}
        summary["knowledge_accuracy"] = cpt["knowledge"]
        config = {"seed": seed, "name": cpt["label"]}
    (run_dir / "results.json").write_text(json.dumps(results))
    (run_dir / "summary.json").write_text(json.dumps(summary))
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    evals = [
        {"step": 10 * (i + 1), **{f"eval/{t}/{results['metric']}": v for t, v in zip(tasks, row)}}
        for i, row in enumerate(R)
    ]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in evals))
    return run_dir


def success_matrix(final, after=(0.9, 0.9, 0.9)):
    """3 tasks: the score right after each task on the diagonal, the final scores in the last row."""
    R = np.full((3, 3), 0.1)
    R[np.diag_indices(3)] = after
    R[2] = final
    return R


# Seeds whose final scores differ task by task but average 0.5 each: an interval over the seeds' averages is [0.5,
# 0.5]; over seeds × tasks it is not.
SPREAD = [(0.9, 0.1, 0.5), (0.1, 0.9, 0.5), (0.5, 0.5, 0.5)]
INTERVAL = re.compile(r"\[-?\d+\.\d+, -?\d+\.\d+\]( n=\d+)?")


def synthetic_comparison(tmp_path):
    runs = [fake_run(tmp_path, f"ewc{s}", success_matrix(f), "ewc", s, initial=[0.0] * 3) for s, f in enumerate(SPREAD)]
    runs += [fake_run(tmp_path, f"ft{s}", success_matrix((0.0, 0.02 * s, 0.1)), "finetune", s) for s in range(3)]
    runs += [fake_run(tmp_path, "l2", success_matrix((0.3, 0.4, 0.5)), "l2", 0)]
    compare_runs(runs, tmp_path / "cmp")
    return json.loads((tmp_path / "cmp" / "comparison.json").read_text()), (tmp_path / "cmp" / "report.md").read_text()


def test_seeds_are_aggregated_over_tasks_by_rliables_stratified_bootstrap(tmp_path):
    comparison, report = synthetic_comparison(tmp_path)
    assert comparison["aggregation"]["confidence"] == 0.95 and comparison["aggregation"]["reps"] == REPS
    ewc = comparison["groups"]["ewc · seq"]
    assert ewc["seeds"] == 3 and ewc["average"]["n"] == 3 and ewc["average"]["tasks"] == 3
    assert ewc["forgetting"]["tasks"] == 2 and ewc["forward_transfer"]["tasks"] == 2
    assert ewc["average"]["mean"] == pytest.approx(0.5)
    assert ewc["average"]["ci_low"] < 0.45 and ewc["average"]["ci_high"] > 0.55  # not clamped to the seeds' means
    # the interval rliable gives for the seeds × tasks final scores (the report bootstraps every metric of a group
    # in one call: the same resampling, other draws)
    np.random.seed(SEED)
    finals = np.array(SPREAD)
    point, cis = rly.get_interval_estimates(
        {"ewc": finals}, lambda s: np.array([rlm.aggregate_iqm(s), rlm.aggregate_mean(s)]), reps=REPS
    )
    assert [ewc["average"]["iqm"], ewc["average"]["mean"]] == pytest.approx(point["ewc"])
    assert [ewc["average"]["iqm_ci_low"], ewc["average"]["ci_low"]] == pytest.approx(cis["ewc"][0], abs=0.04)
    assert [ewc["average"]["iqm_ci_high"], ewc["average"]["ci_high"]] == pytest.approx(cis["ewc"][1], abs=0.04)
    single = comparison["groups"]["l2 · seq"]["average"]
    assert single["n"] == 1 and single["mean"] == pytest.approx(0.4) and single["ci_low"] is None
    assert comparison["groups"]["finetune · seq"]["per_task"]["final"]["t1"]["n"] == 3


def test_every_interval_in_the_report_says_its_number_of_seeds(tmp_path):
    _, report = synthetic_comparison(tmp_path)
    assert "## Interquartile mean (IQM) over seeds × tasks [95% CI" in report and "## Mean over seeds × tasks" in report
    intervals = INTERVAL.findall(report)
    assert len(intervals) > 30 and all(n for n in intervals)  # " n=3" right after every "[low, high]"
    row = next(line for line in report.splitlines() if line.startswith("| l2 · seq | 1 |"))
    assert "0.400 n=1" in row and "[" not in row  # one seed: the value, no interval
    assert "| ewc · seq | 3 |" in report


def test_probability_of_improvement_between_groups_of_several_seeds(tmp_path):
    comparison, report = synthetic_comparison(tmp_path)
    pairs = {(p["x"], p["y"]): p for p in comparison["probability_of_improvement"]["average"]}
    assert set(pairs) == {("ewc · seq", "finetune · seq"), ("finetune · seq", "ewc · seq")}  # l2: one seed only
    better = pairs["ewc · seq", "finetune · seq"]
    assert better["p"] > 0.8 and better["ci_low"] <= better["p"] <= better["ci_high"] and better["better"] == "higher"
    assert pairs["finetune · seq", "ewc · seq"]["p"] == pytest.approx(1 - better["p"])
    assert "## Probability of improvement, average (higher is better): P(row beats column)" in report
    assert "## Probability of improvement, forgetting (lower is better)" in report
    assert f"| ewc · seq (n=3) | – | {better['p']:.2f} [" in report and "n=3 vs 3 |" in report


def test_losses_and_forgetting_improve_downwards(tmp_path):
    def loss_run(name, seed, scale, forgot):
        R = [
            [2.0 * scale, 5.0, 5.0],
            [2.0 * scale + forgot, 1.5 * scale, 5.0],
            [2.0 * scale + forgot, 1.5 * scale + forgot, scale],
        ]
        gaps = [{}, {"t0": {"depth": 0.3 + 0.1 * seed, "worst_step": 10, "recovery_step": 40, "end": 0.0}}, {}]
        gaps[2] = {t: {"depth": 0.0, "worst_step": None, "recovery_step": None, "end": 0.0} for t in ("t0", "t1")}
        return fake_run(tmp_path, name, R, seed=seed, higher_is_better=False, gaps=gaps, knowledge=0.5, label=name[:-1])

    runs = [loss_run(f"low{s}", s, 0.5 + 0.01 * s, 0.1 + 0.01 * s) for s in range(3)]
    runs += [loss_run(f"high{s}", s, 1.0 + 0.01 * s, 1.0 + 0.01 * s) for s in range(2)]
    compare_runs(runs, tmp_path / "cmp")
    comparison = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    for key in ("average", "forgetting"):
        pairs = {(p["x"], p["y"]): p for p in comparison["probability_of_improvement"][key]}
        assert pairs["cpt · low", "cpt · high"]["p"] == 1.0 and pairs["cpt · low", "cpt · high"]["better"] == "lower"
    gap = comparison["groups"]["cpt · low"]["per_task"]["stability_gap"]["t0 in t1"]
    assert gap["depth"]["n"] == 3 and gap["depth"]["mean"] == pytest.approx(0.4) and gap["recovered"] == 3
    report = (tmp_path / "cmp" / "report.md").read_text()
    assert "## Stability gap (nats): mean over seeds [95% CI" in report and "knowledge: seen people" in report
    assert all(n for n in INTERVAL.findall(report))
    lines = summary_lines(tmp_path / "cmp")  # what a sweep prints: mean [CI] n=seeds
    assert lines[0].startswith("  cpt · low: t0 forgetting ") and " n=3" in lines[0] and "t2 final" in lines[0]
    assert " n=2" in lines[1] and lines[1].count("[") == 3


def test_comparison_is_deterministic_and_rebuilt_by_the_cli_entry(tmp_path):
    _, report = synthetic_comparison(tmp_path)
    before = np.random.get_state()[1].copy()
    runs = json.loads((tmp_path / "cmp" / "comparison.json").read_text())["runs"]
    assert report_main([*runs, "--out", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "report.md").read_text().replace("/again", "/cmp") == report
    assert (np.random.get_state()[1] == before).all()  # the bootstrap's seed leaves the caller's RNG alone
    (tmp_path / "cmp" / "report.md").unlink()
    assert report_main([str(tmp_path / "cmp")]) == 0 and (tmp_path / "cmp" / "report.md").read_text() == report


def test_methods_table_puts_continual_worlds_published_numbers_beside_each_method(tmp_path):
    runs = [
        fake_run(tmp_path, f"{m}{s}", success_matrix((0.2 * s, 0.5, 0.9)), m, s)
        for m in ("finetune", "ewc")
        for s in (0, 1)
    ]
    runs.append(fake_run(tmp_path, "mine0", success_matrix((0.5, 0.5, 0.5)), "mine", 0))
    for run in runs:
        summary = json.loads((run / "summary.json").read_text())
        (run / "summary.json").write_text(json.dumps({**summary, "sequence": "cw20", "label": summary["method"]}))
    compare_runs(runs, tmp_path / "cmp")
    report = (tmp_path / "cmp" / "report.md").read_text()
    table = report.split("## Methods")[1].split("\n## ")[0]
    assert "published: average" in table and "Continual World" in table
    ewc = next(line for line in table.splitlines() if line.startswith("| ewc |"))
    cells = [c.strip() for c in ewc.strip("|").split("|")]
    assert cells[1] == "2" and cells[2].startswith("0.") and "[" in cells[2]  # ours: mean [CI] over 2 seeds
    assert cells[6].startswith("0.603 [0.566, 0.638]") and cells[7].startswith("0.021")  # CW20's EWC
    mine = next(line for line in table.splitlines() if line.startswith("| mine |"))
    assert mine.rstrip(" |").endswith("– | – | –")  # a method Continual World did not run
    assert all((tmp_path / "cmp" / f"heatmap_{k}.png").stat().st_size > 1000 for k in range(3))  # one per method


def test_a_sweep_report_rebuilds_after_the_sweep_folder_moves(tmp_path, cli):
    sweep = tmp_path / "sweep"
    runs = [fake_run(sweep, f"{k}_ft", success_matrix((0.1 * k, 0.5, 0.9)), "finetune", k) for k in range(2)]
    compare_runs(runs, sweep)
    assert json.loads((sweep / "comparison.json").read_text())["runs"] == ["0_ft", "1_ft"]
    moved = tmp_path / "elsewhere" / "sweep"
    moved.parent.mkdir()
    sweep.rename(moved)
    proc = cli("report", str(moved))
    assert proc.returncode == 0, proc.stderr
    assert "| finetune · seq | 2 |" in (moved / "report.md").read_text()


def test_methods_table_carries_the_retention_of_extra_sets_with_intervals(tmp_path):
    """L2M's question: how much of the pretraining tasks did each method keep? One column pair per extra set."""
    from retain.metrics import retention_metrics

    runs = []
    for method, kept in (("l2m", 0.8), ("full", 0.0)):
        for seed in range(3):
            run = fake_run(tmp_path, f"{method}{seed}", success_matrix((0.5, 0.5, 0.5)), method, seed)
            results = json.loads((run / "results.json").read_text())
            rows, initial = [[0.8, kept + 0.05 * seed]] * 3, [0.8, 0.8]
            results["extra"] = {
                "pretraining": {
                    "tasks": ["p0", "p1"],
                    "matrix": rows,
                    "initial": initial,
                    "metrics": retention_metrics(rows, initial),
                }
            }
            (run / "results.json").write_text(json.dumps(results))
            runs.append(run)
    compare_runs(runs, tmp_path / "cmp")
    groups = json.loads((tmp_path / "cmp" / "comparison.json").read_text())["groups"]
    assert groups["l2m · seq"]["retention"]["pretraining"]["forgetting"]["mean"] == pytest.approx(-0.05 / 2, abs=1e-9)
    assert groups["full · seq"]["retention"]["pretraining"]["forgetting"]["mean"] == pytest.approx(0.375, abs=1e-9)
    assert groups["full · seq"]["retention"]["pretraining"]["forgetting"]["n"] == 3
    report = (tmp_path / "cmp" / "report.md").read_text()
    assert "| pretraining: average | pretraining: forgetting |" in report
    row = next(line for line in report.splitlines() if line.startswith("| full · seq | 3 |"))
    assert "0.375 [" in row
