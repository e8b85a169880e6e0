"""`retain demo`: every method × seed in parallel worker processes, one comparison report."""

import json

from tests.conftest import error_lines


def test_demo_compares_methods_over_seeds_in_two_processes(cli, tmp_path):
    args = [
        "run_dir=demo",
        "sequence.steps_per_task=1024",
        "chunks_per_task=1",
        "seeds=[0,1]",
        "workers=2",
        "progress=false",
    ]
    proc = cli("demo", *args)
    assert proc.returncode == 0, error_lines(proc)
    demo = tmp_path / "demo"
    assert (demo / "finetune" / "seed_1" / "results.json").exists() and (
        demo / "reset" / "seed_0" / "results.json"
    ).exists()
    summary = json.loads((demo / "summary.json").read_text())
    assert summary["groups"]["finetune · frozenlake_goals"]["forgetting"]["n"] == 2
    assert summary["groups"]["reset · frozenlake_goals"]["forgetting"]["mean"] == 0.0
    report = (demo / "report.md").read_text()
    assert "| finetune · frozenlake_goals | 2 |" in report and "| reset · frozenlake_goals | 2 |" in report
    assert "cl/finetune/forgetting" in (demo / "metrics.jsonl").read_text()
    (demo / "report.md").unlink()
    assert cli("report", str(demo)).returncode == 0 and (demo / "report.md").read_text() == report
