"""The Continual World presets: every run of cw_table's sweep composes at the paper's settings, and
cw_offline_small runs every method on four CW10 tasks at sizes made for the offline learner."""

import pytest
import yaml

from finetune.sequence import build_tasks
from retain.config import load_config
from retain.methods import make_method
from tests.conftest import ROOT

METHODS = ["finetune", "l2", "ewc", "mas", "replay", "agem", "packnet", "multitask", "reset"]


def _sweep(preset: str) -> dict[str, list[str]]:
    params = yaml.safe_load((ROOT / "configs" / "experiment" / f"{preset}.yaml").read_text())["hydra"]["sweeper"]
    return {key: str(value).split(",") for key, value in params["params"].items()}


def test_cw_table_sweeps_both_sequences_every_method_and_five_seeds():
    assert _sweep("cw_table") == {"sequence": ["cw10", "cw20"], "method": METHODS, "seed": ["0", "1", "2", "3", "4"]}


@pytest.mark.parametrize("sequence, tasks", [("cw10", 10), ("cw20", 20)])
def test_every_cw_table_run_composes_at_continual_worlds_settings(sequence, tasks):
    for method in METHODS:
        cfg = load_config("sequence", ["experiment=cw_table", f"sequence={sequence}", f"method={method}"])
        assert len(cfg.sequence.tasks) == tasks and cfg.sequence.steps_per_task == 1_000_000
        assert cfg.agent.policy == "agents.cw_sac.ContinualWorldPolicy" and cfg.agent.task_id
        assert cfg.agent.hyperparams.batch_size == 128 and cfg.learner.name == "sb3"
        assert make_method(cfg.method).cfg.name == method
    ewc = load_config("sequence", ["experiment=cw_table", f"sequence={sequence}", "method=ewc"]).method
    packnet = load_config("sequence", ["experiment=cw_table", f"sequence={sequence}", "method=packnet"]).method
    assert ewc.coef == 1e4 and packnet.retrain_steps is None  # Continual World's: a tenth of the 1M steps


def test_cw_offline_small_runs_every_method_on_four_cw10_tasks():
    assert _sweep("cw_offline_small") == {"method": METHODS, "seed": ["0", "1", "2"]}
    cw10 = [t.name for t in load_config("sequence", ["sequence=cw10"]).sequence.tasks]
    cfg = load_config("sequence", ["experiment=cw_offline_small", "method=ewc"])
    names = [t.name for t in cfg.sequence.tasks]
    assert len(names) == 4 and set(names) <= set(cw10) and names == sorted(names, key=cw10.index)
    assert cfg.learner.name == "offline" and cfg.eval.end_at_success and cfg.method.coef == 100.0
    assert [t.name for t in build_tasks(cfg)] == names  # the four Meta-World envs build
    assert load_config("sequence", ["experiment=cw_offline_small", "method=packnet"]).method.retrain_steps == 500


@pytest.mark.slow  # a few minutes: two CW10 runs of SAC on tiny budgets, then the sweep's comparison report
def test_cw_table_sweep_runs_on_tiny_budgets_and_reports_continual_worlds_numbers(cli, tmp_path):
    proc = cli(
        "sequence",
        "-m",
        "experiment=cw_table",
        "sequence=cw10",  # command-line values replace the preset's sweep of the same key
        "method=ewc,packnet",
        "seed=0",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        "sequence.steps_per_task=100",
        "sequence.eval_episodes=1",
        "chunks_per_task=1",
        "eval.during=none",
        "agent.hyperparams.learning_starts=50",
        "agent.hyperparams.gradient_steps=2",
        "agent.hyperparams.buffer_size=1000",
        "progress=false",
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = (tmp_path / "sweep" / "report.md").read_text()
    assert "| ewc · cw10 | 1 |" in report and "| packnet · cw10 | 1 |" in report
    assert "0.603 [0.566, 0.638]" in report and "0.803 [0.787, 0.819]" in report  # CW20's EWC and PackNet
