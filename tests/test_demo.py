"""`retain demo`: the pretrain → tune → forgetting story (story=l2m), and every method × seed of the SB3
sequence (story=methods), each in parallel worker processes, one comparison report."""

import json

import pytest

from tests.conftest import error_lines


def test_demo_tells_the_pretrain_tune_forgetting_story(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("RETAIN_DATA", str(tmp_path / "data"))
    proc = cli(
        "demo",
        "run_dir=demo",
        "progress=false",
        "l2m.episodes=2",
        "l2m.variants=[full,l2m]",
        "l2m.pretrain=['experiment=l2m_small_pretrain','objective.updates=20','objective.schedule.warmup_steps=2','eval.episodes=1','chunks_per_task=1']",
        "l2m.tune=['experiment=l2m_small','learner.updates_per_task=10','eval.episodes=1']",
        timeout=600,
    )
    assert proc.returncode == 0, error_lines(proc)
    demo = tmp_path / "demo"
    assert (demo / "pretrain" / "model" / "model.safetensors").exists()
    for variant in ("full", "l2m"):
        results = json.loads((demo / variant / "seed_0" / "results.json").read_text())
        assert len(results["matrix"]) == 3 and len(results["extra"]["pretraining"]["tasks"]) == 4
    groups = json.loads((demo / "summary.json").read_text())["groups"]
    assert set(groups) == {"finetune · cw3_quick · dt", "l2m · cw3_quick · dt"}
    assert all("pretraining" in g["retention"] for g in groups.values())
    report = (demo / "report.md").read_text()
    assert "| pretraining: average | pretraining: forgetting |" in report
    assert "cl/l2m/pretraining/forgetting" in (demo / "metrics.jsonl").read_text()
    assert "pretraining tasks lost" in proc.stdout and "report:" in proc.stdout


@pytest.mark.slow
def test_demo_compares_methods_over_seeds_in_two_processes(cli, tmp_path):
    args = [
        "story=methods",
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
