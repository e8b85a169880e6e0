"""Reports are rebuilt from run-directory files alone, and runs compare side by side."""

import json
import shutil

from finetune.sequence import run_sequence
from retain.config import load_config
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
    comparison = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert comparison["groups"]["finetune · frozenlake_goals"]["average"]["n"] == 2
    assert (tmp_path / "cmp" / "curves.png").exists() and (tmp_path / "cmp" / "heatmap_2.png").exists()


def test_report_of_an_unfinished_run_says_how_to_finish_it(tmp_path, cli):
    (tmp_path / "half").mkdir()
    proc = cli("report", str(tmp_path / "half"))
    assert proc.returncode == 2 and "resume=true" in error_lines(proc)[0]


def test_report_of_a_corrupt_results_file(tmp_path, cli):
    run_dir = make_run(tmp_path, "a")
    (run_dir / "results.json").write_text("{not json")
    proc = cli("report", str(run_dir))
    assert proc.returncode == 2 and "corrupt" in error_lines(proc)[0]
