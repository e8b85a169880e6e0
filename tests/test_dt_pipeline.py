"""Pretrain a Decision Transformer (`retain pretrain objective=dt`), share it as a folder, tune it onto a
sequence with L2M: the artifact, the retention matrix of the pretraining tasks, the frozen backbone, and the
errors a user meets."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from agents.decision_transformer import backbone_state, load_dt
from finetune.sequence import build_learner, build_tasks, run_sequence
from pretrain.job import run_pretrain
from retain.config import load_config
from retain.methods import make_method
from retain.runner import Runner
from tests.conftest import collect_pointmass, error_lines

PRETRAIN = [
    "objective=dt",
    "sequence=pointmass4",
    "objective.updates=30",
    "objective.batch_size=16",
    "objective.model.n_embd=16",
    "objective.dataset.qualities=[expert]",
    "objective.schedule.warmup_steps=5",
    "eval.episodes=2",
    "chunks_per_task=1",
    "progress=false",
]
TUNE = [
    "sequence=pointmass4",
    "learner=dt",
    "learner.updates_per_task=10",
    "learner.batch_size=16",
    "learner.dataset.qualities=[expert]",
    "chunks_per_task=1",
    "eval.during=none",
    "sequence.eval_episodes=2",
    "progress=false",
]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """RETAIN_DATA with the point mass datasets, and a Decision Transformer pretrained on them."""
    root = collect_pointmass(tmp_path_factory.mktemp("dt_data"), episodes=4, ref_episodes=1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RETAIN_DATA", str(root))
        run_dir = tmp_path_factory.mktemp("pretrain") / "run"
        summary = run_pretrain(load_config("pretrain", [*PRETRAIN, f"run_dir={run_dir}"]))
    return root, run_dir, summary


@pytest.fixture(autouse=True)
def _data(pretrained, monkeypatch):
    monkeypatch.setenv("RETAIN_DATA", str(pretrained[0]))


def test_pretraining_writes_a_shareable_model_and_a_report(pretrained):
    _, run_dir, summary = pretrained
    model_dir = run_dir / "model"
    assert summary["model"] == str(model_dir) and summary["steps"] == 30
    assert sorted(p.name for p in model_dir.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((model_dir / "config.json").read_text())
    assert config["model_type"] == "retain_dt" and config["n_embd"] == 16
    assert sorted(config["pretrain_tasks"]) == ["goal0", "goal2", "goal4", "goal6"]
    # 2x the best return in each task's data; the point mass's returns are negative: best + |best| = 0
    assert all(v == pytest.approx(0.0, abs=1e-6) for v in config["task_targets"].values())
    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:  # a plain safetensors file
        names = list(f.keys())  # noqa: SIM118 (safe_open is not a dict)
        assert "head.weight" in names and not any("adaptation" in k for k in names)
    results = json.loads((run_dir / "results.json").read_text())
    assert results["stages"] == ["pretrain"] and len(results["matrix"]) == 1 and len(results["matrix"][0]) == 4
    assert (run_dir / "report.md").exists()


def test_l2m_tuning_scores_the_pretraining_tasks_and_keeps_the_backbone(pretrained, tmp_path):
    _, run_dir, _ = pretrained
    path = run_dir / "model"
    cfg = load_config("sequence", [*TUNE, f"learner.model.path={path}", "adapter=l2m", f"run_dir={tmp_path}"])
    learner = build_learner(cfg, build_tasks(cfg))
    assert learner.extra_eval_sets() == {"pretraining": ["goal0", "goal2", "goal4", "goal6"]}
    Runner(learner, make_method({"name": "finetune"}), tmp_path).run()
    original = backbone_state(load_dt(path))
    assert all(torch.equal(v, original[k]) for k, v in backbone_state(learner.policy).items())
    assert int((learner.policy.adaptation.pool.counts > 0).sum()) >= 1
    learner.close()
    results = json.loads((tmp_path / "results.json").read_text())
    retention = results["extra"]["pretraining"]
    assert len(retention["matrix"]) == 4 and len(retention["initial"]) == 4
    assert set(retention["metrics"]) >= {"forgetting", "average"}


def test_adapters_compose_with_continual_methods(pretrained, tmp_path):
    _, run_dir, _ = pretrained
    summary = run_sequence(
        load_config(
            "sequence",
            [
                *TUNE,
                f"learner.model.path={run_dir / 'model'}",
                "adapter=lora",
                "method=ewc",
                "method.batches=2",
                "method.batch_size=8",
                "learner.retention=false",
                f"run_dir={tmp_path}",
            ],
        )
    )
    assert summary["method"] == "lora+ewc" and summary["adapter"] == "lora"
    assert summary["trainable_parameters"] < 5000  # LoRA's A and B only
    assert "pretraining/forgetting" not in summary


def test_bad_model_paths_and_adapters_are_one_clear_line(cli, tmp_path, pretrained):
    proc = cli("sequence", *TUNE, "learner.model.path=nowhere", "run_dir=out")
    assert proc.returncode == 2 and not (tmp_path / "out").exists()
    assert error_lines(proc)[0].startswith("retain: error: no Decision Transformer config at nowhere/config.json")
    proc = cli("sequence", "learner=offline", "sequence=pointmass4", "adapter=lora", "run_dir=out")
    assert proc.returncode == 2 and "adapter=lora needs a model to adapt" in error_lines(proc)[0]
    proc = cli("pretrain", *PRETRAIN, "objective.name=nope", "run_dir=out")
    assert proc.returncode == 2 and "unknown objective 'nope'" in error_lines(proc)[0]


def test_batched_evaluation_scores_as_task_after_task(pretrained, tmp_path):
    """Every task's envs stepped together (one forward pass per step) give the scores of one task at a time."""
    _, run_dir, _ = pretrained
    scores = []
    for batched in ("true", "false"):
        cfg = load_config(
            "sequence",
            [
                *TUNE,
                f"learner.model.path={run_dir / 'model'}",
                f"learner.batched_eval={batched}",
                f"run_dir={tmp_path}",
            ],
        )
        learner = build_learner(cfg, build_tasks(cfg))
        try:
            main = learner.evaluate([0, 1, 2, 3], {})
            extra = learner.evaluate_extra("pretraining")
        finally:
            learner.close()
        scores.append(([main[j].metrics for j in range(4)], [s.metrics for s in extra]))
    assert scores[0] == scores[1]


def test_the_continuous_decision_transformer_of_transformers_pretrains_and_tunes(tmp_path):
    """learner.model.kind=continuous: transformers' DecisionTransformerModel (MSE on continuous actions), shared as
    the same folder, tuned with LoRA and EWC (its Fisher from a unit Gaussian's log-likelihood)."""
    from agents.decision_transformer import ContinuousDT
    from retain.errors import ConfigError

    run_pretrain(load_config("pretrain", [*PRETRAIN, "objective.model.kind=continuous", f"run_dir={tmp_path / 'pre'}"]))
    model = load_dt(tmp_path / "pre" / "model")
    assert isinstance(model, ContinuousDT) and model.cfg.kind == "continuous"
    summary = run_sequence(
        load_config(
            "sequence",
            [
                *TUNE,
                f"learner.model.path={tmp_path / 'pre' / 'model'}",
                "adapter=lora",
                "method=ewc",
                "method.batches=2",
                "method.batch_size=8",
                f"run_dir={tmp_path / 'tune'}",
            ],
        )
    )
    assert summary["method"] == "lora+ewc" and "pretraining/forgetting" in summary
    with pytest.raises(ConfigError, match="needs the multi-domain Decision Transformer"):
        cfg = load_config("sequence", [*TUNE, "learner.model.kind=continuous", "adapter=l2m", f"run_dir={tmp_path}"])
        build_learner(cfg, build_tasks(cfg))


@pytest.mark.slow
def test_ddp_pretraining_on_two_gloo_processes_matches_one(pretrained, tmp_path):
    """`torchrun --nproc_per_node=2 retain pretrain parallel=ddp`: each process trains on its rows of every batch;
    the loss averages per window, so the weights match one process's within float tolerance."""
    import os
    import subprocess
    import sys

    from safetensors.torch import load_file

    from tests.conftest import RETAIN

    def pretrain(run_dir, *extra, nproc=1):
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "RETAIN_DATA": str(pretrained[0])}
        args = [*(launcher if nproc > 1 else []), RETAIN, "pretrain", *PRETRAIN, "objective.dropout=0.0"]
        args = [a.replace("objective.dropout", "objective.model.dropout") for a in args]
        proc = subprocess.run(
            [*args, f"run_dir={run_dir}", *extra], capture_output=True, text=True, timeout=600, env=env
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        return load_file(run_dir / "model" / "model.safetensors")

    one = pretrain(tmp_path / "one", "objective.log_every=10")
    two = pretrain(tmp_path / "two", "parallel=ddp", "objective.log_every=10", nproc=2)
    assert one.keys() == two.keys()
    losses = [
        [
            json.loads(line)["train/loss"]
            for line in (tmp_path / d / "metrics.jsonl").read_text().splitlines()
            if "train/loss" in line
        ]
        for d in ("one", "two")
    ]
    assert len(losses[0]) == len(losses[1]) == 3 and losses[0] != losses[1]  # the main process saw half the rows
    assert all(torch.allclose(one[k], two[k], atol=1e-5) for k in one), max(
        float((one[k] - two[k]).abs().max()) for k in one
    )
