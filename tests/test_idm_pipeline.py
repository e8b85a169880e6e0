"""Pretrain an encoder (`retain pretrain objective=idm|...`), reuse it for few-shot imitation on held-out goals
(frozen or tuned), pseudo-label action-free data with the IDM (`retain label`), and run VPT's loop — at tiny
size, on real point-mass datasets collected here."""

from __future__ import annotations

import json

import minari
import pytest
import torch

from agents.encoders import load_encoder
from envs.collect import run_collect
from envs.datasets import minari_root
from finetune.sequence import build_learner, build_tasks, run_sequence
from finetune.vpt_loop import vpt_table
from pretrain.job import run_pretrain
from pretrain.label import run_label
from retain.config import load_config
from retain.methods import make_method
from retain.runner import Runner
from tests.conftest import error_lines

PRETRAIN = [
    "sequence=pointmass_pretrain",
    "objective.updates=20",
    "objective.batch_size=32",
    "objective.hidden=[32]",
    "objective.encoder.hidden=[32]",
    "objective.encoder.latent=8",
    "objective.val_size=64",
    "chunks_per_task=2",
    "progress=false",
]
FEWSHOT = [
    "sequence=pointmass_heldout4",
    "learner=offline",
    "method=reset",
    "learner.task_id=false",
    "learner.max_episodes=1",
    "learner.updates_per_task=10",
    "learner.batch_size=32",
    "chunks_per_task=1",
    "eval.during=none",
    "sequence.eval_episodes=2",
    "progress=false",
]


def _collect(root, *overrides):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RETAIN_DATA", str(root))
        run_collect(load_config("collect", [*overrides, "workers=1", "dataset.ref_episodes=1", "progress=false"]))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """RETAIN_DATA with random-goal pretraining data, held-out goals' demos and an action-free corpus, and an
    IDM pretrained on the first."""
    root = tmp_path_factory.mktemp("idm_data")
    _collect(root, "sequence=pointmass_pretrain", "episodes=6", f"run_dir={root / 'c1'}")
    _collect(root, "sequence=pointmass_heldout4", "episodes=2", f"run_dir={root / 'c2'}")
    _collect(
        root,
        "env=pointmass",
        "episodes=4",
        "dataset.action_free=true",
        "dataset.namespace=vpt",
        f"run_dir={root / 'c3'}",
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RETAIN_DATA", str(root))
        run = tmp_path_factory.mktemp("idm") / "run"
        summary = run_pretrain(load_config("pretrain", ["objective=idm", *PRETRAIN, f"run_dir={run}"]))
    return root, run, summary


@pytest.fixture(autouse=True)
def _data(data, monkeypatch):
    monkeypatch.setenv("RETAIN_DATA", str(data[0]))


def test_pretraining_scores_held_out_episodes_and_writes_a_shareable_encoder(data):
    _, run, summary = data
    assert summary["model"] == str(run / "model") and summary["steps"] == 20
    assert sorted(p.name for p in (run / "model").iterdir()) == [
        "config.json",
        "idm_head.safetensors",
        "model.safetensors",
    ]
    config = json.loads((run / "model" / "config.json").read_text())
    assert config["model_type"] == "retain_encoder" and config["kind"] == "mlp" and config["frame_shape"] == [4]
    assert config["meta"]["objective"] == "idm" and list(config["meta"]["pretrain_tasks"]) == ["random_goals"]
    results = json.loads((run / "results.json").read_text())
    assert results["metric"] == "loss" and not results["higher_is_better"] and len(results["matrix"][0]) == 1
    assert results["matrix"][0][0] < results["initial"][0]  # the held-out action error went down
    assert (run / "report.md").exists()


@pytest.mark.parametrize("objective", ["bc", "fd", "fd_contrastive", "contrastive"])
def test_every_rival_objective_runs_as_a_job(objective, tmp_path):
    summary = run_pretrain(load_config("pretrain", [f"objective={objective}", *PRETRAIN, f"run_dir={tmp_path}"]))
    assert summary["objective"] == objective
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["config.json", "model.safetensors"]


def test_pretraining_resumes_exactly(tmp_path):
    def run(where, stop_after=None, resume=False):
        cfg = load_config("pretrain", ["objective=idm", *PRETRAIN, f"run_dir={where}", f"resume={resume}"])
        return run_pretrain(cfg, stop_after=stop_after)

    run(tmp_path / "whole")
    assert run(tmp_path / "cut", stop_after=10) == {"stopped": True}
    run(tmp_path / "cut", resume=True)
    a, b = (load_encoder(tmp_path / d / "model").state_dict() for d in ("whole", "cut"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_few_shot_heads_train_on_a_frozen_encoder(data, tmp_path):
    path = data[1] / "model"
    cfg = load_config("sequence", [*FEWSHOT, f"learner.encoder.path={path}", f"run_dir={tmp_path}"])
    learner = build_learner(cfg, build_tasks(cfg))
    assert learner.data.obs.shape[1] == 8  # the demos encoded once: the head sees latents
    assert not any(n.startswith("encoder.body") for n, _ in learner.named_parameters())
    Runner(learner, make_method({"name": "reset"}), tmp_path).run()
    before = load_encoder(path).state_dict()
    assert all(torch.equal(v, before[k]) for k, v in learner.frozen.state_dict().items())
    assert any("objective `idm`" in line and "frozen" in line for line in learner.describe())
    learner.close()
    results = json.loads((tmp_path / "results.json").read_text())
    assert len(results["matrix"]) == 4


def test_an_encoder_tuned_end_to_end_and_one_from_scratch(data, tmp_path):
    path = data[1] / "model"
    cfg = load_config(
        "sequence", [*FEWSHOT, f"learner.encoder.path={path}", "learner.encoder.freeze=false", f"run_dir={tmp_path}"]
    )
    learner = build_learner(cfg, build_tasks(cfg))
    start = {k: v.clone() for k, v in learner.policy.encoder.state_dict().items()}
    assert all(torch.equal(v, load_encoder(path).state_dict()[k]) for k, v in start.items())
    learner.prepare_task(0, [0])
    learner.train_chunk(0, 0, 5)
    assert any(not torch.equal(v, start[k]) for k, v in learner.policy.encoder.state_dict().items())
    learner.close()
    summary = run_sequence(
        load_config(
            "sequence",
            [*FEWSHOT, "learner.encoder.scratch=true", "learner.encoder.arch.hidden=[16]", f"run_dir={tmp_path / 's'}"],
        )
    )
    assert 0.0 <= summary["average"] <= 1.0


def test_an_encoder_with_a_history_stacks_its_data_and_its_envs(tmp_path):
    run_pretrain(
        load_config(
            "pretrain", ["objective=idm", *PRETRAIN, "objective.encoder.history=3", f"run_dir={tmp_path / 'p'}"]
        )
    )
    cfg = load_config(
        "sequence", [*FEWSHOT, f"learner.encoder.path={tmp_path / 'p' / 'model'}", f"run_dir={tmp_path / 'f'}"]
    )
    learner = build_learner(cfg, build_tasks(cfg))
    assert [t.env.frame_stack for t in learner.scorer.tasks] == [3] * 4
    assert learner.data.obs.shape == (400, 8)  # 4 goals x 1 demo x 100 steps, stacked histories encoded
    Runner(learner, make_method({"name": "reset"}), tmp_path / "f").run()
    learner.close()


def test_labels_make_a_minari_dataset_scored_against_the_true_actions(data, tmp_path):
    root, run, _ = data
    corpus = root / "vpt" / "pointmass" / "expert-v0" / "observations_only.hdf5"
    summary = run_label(
        load_config(
            "label",
            [f"idm={run / 'model'}", f"source={corpus}", "dataset.id=vpt/pointmass/pseudo-v0", f"run_dir={tmp_path}"],
        )
    )
    assert summary["episodes"] == 4 and summary["steps"] == 400
    assert summary["action_mse"] >= 0 and summary["action_r2"] <= 1
    with minari_root():
        dataset = minari.load_dataset("vpt/pointmass/pseudo-v0")
        assert dataset.total_episodes == 4 and dataset.recover_environment().observation_space.shape == (4,)
        assert dataset[0].actions.shape == (100, 2)


def test_label_errors_are_one_line_and_write_nothing(cli, data):
    _, run, _ = data
    proc = cli("label", "idm=nowhere", "source=x", "dataset.id=a/b-v0", "run_dir=out")
    assert proc.returncode == 2 and "no encoder at nowhere" in error_lines(proc)[0]
    proc = cli("label", f"idm={run / 'model'}", "source=missing.hdf5", "dataset.id=a/b-v0", "run_dir=out")
    assert proc.returncode == 2 and "source missing.hdf5 not found" in error_lines(proc)[0]
    proc = cli("label", f"idm={run / 'model'}", "source=x", "run_dir=out")
    assert proc.returncode == 2 and "needs idm=, source= and dataset.id=" in error_lines(proc)[0]


def test_the_vpt_loop_compares_bc_on_labels_with_bc_on_the_labelled_fraction(tmp_path):
    overrides = [
        "loop.enabled=true",
        "loop.dataset=vpt/pointmass/expert-v0",
        "loop.fraction=0.25",
        "loop.idm=['objective.updates=10','objective.batch_size=32','objective.encoder.hidden=[16]']",
        "loop.bc=['learner.updates_per_task=10','learner.batch_size=32','chunks_per_task=1','eval.during=none']",
        "loop.eval_episodes=2",
        "progress=false",
        f"run_dir={tmp_path}",
    ]
    result = run_label(load_config("label", overrides))
    assert result["labelled_episodes"] == 1 and result["episodes"] == 4
    for key in ("bc_pseudo_success", "bc_labelled_success"):
        assert 0.0 <= result[key] <= 1.0
    assert {p.name for p in tmp_path.iterdir()} >= {"idm", "label", "bc_pseudo", "bc_labelled", "vpt.json"}
    table = vpt_table([result, {**result, "seed": 1}])
    assert table[2].startswith("| 0.25 | 1 of 4 |") and "n=2" in table[2]
