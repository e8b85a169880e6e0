"""The inverse-dynamics, SB3 and VPT presets: they compose in their jobs, their sizes are the paper's
(idm_metaworld) or the CPU's (idm_pointmass), every row of the few-shot sweeps points where the pretraining
sweep writes; and (slow) idm_metaworld end to end at a tiny budget."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from finetune.offline_learner import OfflineLearnerConfig
from finetune.sequence import _learner_config, build_tasks
from retain.config import config_dir, load_config

OBJECTIVES = ("idm", "bc", "fd", "fd_contrastive", "contrastive")


@pytest.mark.parametrize("scale", ["pointmass", "metaworld"])
def test_few_shot_rows_point_at_the_pretraining_sweep(scale):
    pre = load_config("pretrain", [f"experiment=idm_{scale}_pretrain"])
    preset = OmegaConf.to_container(OmegaConf.load(config_dir() / "experiment" / f"idm_{scale}_pretrain.yaml"))
    sweep, root = preset["hydra"], f"runs/pretrain/idm_{scale}"
    assert sweep["sweep"]["dir"] == root and sweep["sweep"]["subdir"] == "${objective.name}_seed${seed}"
    assert sweep["sweeper"]["params"]["objective"] == ",".join(OBJECTIVES)
    for objective in OBJECTIVES:
        row = load_config("sequence", [f"experiment=idm_{scale}", f"+representation={objective}"])
        learner = _learner_config(row, OfflineLearnerConfig)  # as the job reads it: the learner node on its own
        assert learner.encoder.path == f"{root}/{objective}_seed0/model" and learner.encoder.freeze
        assert row.method.name == "reset" and not row.learner.task_id
    scratch = load_config("sequence", [f"experiment=idm_{scale}", "+representation=scratch"])
    assert scratch.learner.encoder.scratch and scratch.learner.encoder.path is None
    assert scratch.learner.encoder.arch.channels == pre.objective.encoder.channels  # the pretrained size
    assert scratch.learner.encoder.arch.history == pre.objective.encoder.history
    oracle = "states" if scale == "pointmass" else "states_metaworld"
    states = load_config("sequence", [f"experiment=idm_{scale}", f"+representation={oracle}"])
    assert states.sequence.name == {"pointmass": "pointmass_heldout4", "metaworld": "cw10"}[scale]
    assert states.learner.encoder.path is None and not states.learner.encoder.scratch


def test_idm_metaworld_is_the_papers_scale():
    pre = load_config("pretrain", ["experiment=idm_metaworld_pretrain"])
    assert pre.sequence.name == "mt40_pretrain_pixels" and len(pre.sequence.tasks) == 40
    assert all(t.env.pixels == 84 for t in pre.sequence.tasks)
    assert (pre.objective.updates, pre.objective.batch_size, pre.objective.augment_pad) == (200_000, 256, 8)
    assert pre.objective.encoder.channels == [32, 64, 128, 256] and pre.objective.encoder.keypoints == 256
    tune = load_config("sequence", ["experiment=idm_metaworld", "+representation=idm"])
    held_out = {t.name for t in tune.sequence.tasks}
    assert len(held_out) == 10 and not held_out & {t.name for t in pre.sequence.tasks}
    assert (tune.learner.updates_per_task, tune.learner.batch_size, tune.sequence.eval_episodes) == (10_000, 256, 50)


def test_idm_pointmass_holds_its_goals_out_and_builds():
    tune = load_config("sequence", ["experiment=idm_pointmass", "+representation=idm"])
    assert [t.env.kwargs.goal_index for t in tune.sequence.tasks] == [1, 3, 5, 7]
    assert len(build_tasks(tune)) == 4
    pre = load_config("pretrain", ["experiment=idm_pointmass_pretrain"])
    assert pre.sequence.tasks[0].env.kwargs.random_goal


def test_sb3_and_vpt_presets_compose():
    pre = load_config("pretrain", ["experiment=idm_sb3_pretrain"])
    assert pre.objective.name == "idm" and pre.run_dir == "runs/pretrain/idm_sb3"
    for init, (path, freeze) in {
        "scratch": (None, True),
        "frozen": ("runs/pretrain/idm_sb3/model", True),
        "tuned": ("runs/pretrain/idm_sb3/model", False),
    }.items():
        row = load_config("sequence", ["experiment=idm_sb3", f"+encoder_init={init}"])
        assert (row.learner.encoder.path, row.learner.encoder.freeze) == (path, freeze)
        assert row.agent.algo == "SAC" and row.sequence.name == "pointmass_heldout4"
    vpt = load_config("label", ["experiment=vpt_pointmass"])
    assert vpt.loop.enabled and vpt.loop.dataset == "vpt/pointmass/expert-v0"
    fast = load_config("label", ["experiment=vpt_pointmass", "debug=fast_label"])  # what `debug=fast` picks
    assert fast.loop.enabled and "objective.updates=20" in fast.loop.idm and fast.loop.eval_episodes == 2


@pytest.mark.slow
def test_idm_metaworld_end_to_end_at_a_tiny_budget(tmp_path, monkeypatch):
    """The presets' pipeline on 84-px Meta-World frames: collect (two pretraining and two held-out tasks of the
    presets' splits: rendering runs at ~16 frames/s on a CPU), pretrain ID, tune a head per held-out task."""
    from envs.collect import run_collect
    from finetune.sequence import run_sequence
    from pretrain.job import run_pretrain

    def first_two(cfg):
        cfg.sequence.tasks = cfg.sequence.tasks[:2]
        return cfg

    monkeypatch.setenv("RETAIN_DATA", str(tmp_path / "data"))
    for sequence in ("mt40_pretrain_pixels", "cw10_pixels"):
        collect = [f"sequence={sequence}", "episodes=2", "max_episode_steps=5", "dataset.ref_episodes=1", "workers=1"]
        run_collect(first_two(load_config("collect", [*collect, "progress=false", f"run_dir={tmp_path / sequence}"])))
    tiny = ["objective.encoder.channels=[4]", "objective.encoder.strides=[4]", "objective.encoder.keypoints=4"]
    pretrain = ["objective=idm", "objective.updates=2", "objective.batch_size=8", "chunks_per_task=1", *tiny]
    summary = run_pretrain(
        first_two(
            load_config(
                "pretrain",
                ["experiment=idm_metaworld_pretrain", *pretrain, f"run_dir={tmp_path / 'encoders' / 'idm_seed0'}"],
            )
        )
    )
    assert summary["steps"] == 2
    tune = ["+representation=idm", "learner.max_episodes=1", "learner.updates_per_task=2", "sequence.eval_episodes=1"]
    where = [f"learner.encoder.root={tmp_path / 'encoders'}", f"run_dir={tmp_path / 'tune'}"]
    summary = run_sequence(first_two(load_config("sequence", ["experiment=idm_metaworld", *tune, *where])))
    assert "idm encoder, frozen" in summary["label"] and 0.0 <= summary["average"] <= 1.0
    results = json.loads((tmp_path / "tune" / "results.json").read_text())
    assert results["tasks"] == ["hammer", "push-wall"] and len(results["matrix"]) == 2
