"""The Learning-to-Modulate presets: they compose, their budgets are the paper's (l2m_cw10) or the CPU's
(l2m_small), and every row of their sweeps is the adapter + method pair it names."""

import pytest

from agents.decision_transformer import DecisionTransformer, DTConfig
from retain.config import load_config

ROWS = {
    "full": ("full", "finetune"),
    "lora": ("lora", "finetune"),
    "l2p": ("l2p", "finetune"),
    "l2m": ("l2m", "finetune"),
    "l2m_oracle": ("l2m", "finetune"),
    "ewc": ("full", "ewc"),
    "replay": ("full", "replay"),
    "packnet": ("full", "packnet"),
}


@pytest.mark.parametrize("preset", ["l2m_small", "l2m_cw10"])
def test_sweep_presets_compose_and_name_their_rows(preset):
    cfg = load_config("sequence", [f"experiment={preset}"])
    assert cfg.learner.name == "dt" and cfg.learner.model.path.startswith("runs/pretrain/")
    for variant in ROWS:
        row = load_config("sequence", [f"experiment={preset}", f"variant={variant}"])
        assert (row.adapter.name, row.method.name) == ROWS[variant]
    assert load_config("sequence", ["experiment=l2m_small", "variant=l2m_oracle"]).adapter.oracle is True


def test_l2m_cw10_budgets_are_the_papers():
    tune = load_config("sequence", ["experiment=l2m_cw10"])
    assert tune.sequence.name == "cw10" and len(tune.sequence.tasks) == 10
    assert tune.learner.updates_per_task == 100_000 and tune.learner.batch_size == 256
    pre = load_config("pretrain", ["experiment=l2m_cw10_pretrain"])
    assert pre.sequence.name == "mt40_pretrain" and len(pre.sequence.tasks) == 40
    assert (pre.objective.model.n_layer, pre.objective.model.n_embd, pre.objective.model.n_head) == (6, 768, 12)
    assert pre.objective.model.context == 5 and pre.objective.model.n_bins == 64
    model = DecisionTransformer(DTConfig(state_dim=39, act_dim=4, n_layer=6, n_head=12, n_embd=768))
    assert 35e6 < sum(p.numel() for p in model.parameters() if p.requires_grad) < 50e6  # L2M's ~40M


def test_l2m_adapter_is_the_papers():
    a = load_config("sequence", ["learner=dt", "adapter=l2m"]).adapter
    assert (a.pool_size, a.top_k, a.rank, a.alpha, a.key_loss, a.count_penalty) == (30, 1, 8, 16.0, 0.5, True)
    p = load_config("sequence", ["learner=dt", "adapter=l2p"]).adapter
    assert (p.pool_size, p.prompt_length, p.top_k) == (100, 5, 5)


def test_small_pretraining_preset_composes():
    cfg = load_config("pretrain", ["experiment=l2m_small_pretrain"])
    assert cfg.sequence.name == "mt4_pretrain" and cfg.run_dir == "runs/pretrain/l2m_small"
    assert load_config("sequence", ["experiment=l2m_small"]).learner.model.path == "runs/pretrain/l2m_small/model"


@pytest.mark.slow
def test_l2m_cw10_runs_end_to_end_on_a_tiny_budget(tmp_path, monkeypatch):
    """The paper-scale presets, shrunk: one episode of every MT40 and CW10 task, a 2-layer model, a few updates;
    CW10 tuned with L2M, the 40 pretraining tasks scored after every task."""
    import json

    from envs.collect import run_collect
    from finetune.sequence import run_sequence
    from pretrain.job import run_pretrain

    monkeypatch.setenv("RETAIN_DATA", str(tmp_path / "data"))
    for sequence in ("mt40_pretrain", "cw10"):
        run_collect(
            load_config(
                "collect",
                [
                    f"sequence={sequence}",
                    "episodes=1",
                    "workers=2",
                    "progress=false",
                    f"run_dir={tmp_path / sequence}",
                    "dataset.ref_episodes=1",
                ],
            )
        )
    tiny = ["model.n_layer=1", "model.n_head=2", "model.n_embd=16"]
    run_pretrain(
        load_config(
            "pretrain",
            [
                "experiment=l2m_cw10_pretrain",
                f"run_dir={tmp_path / 'pretrain'}",
                "objective.updates=4",
                "objective.batch_size=8",
                "objective.schedule.warmup_steps=1",
                "objective.dataset.qualities=[expert]",
                *[f"objective.{t}" for t in tiny],
                "eval.episodes=1",
                "chunks_per_task=1",
                "progress=false",
            ],
        )
    )
    summary = run_sequence(
        load_config(
            "sequence",
            [
                "experiment=l2m_cw10",
                "hydra/sweeper=basic",
                "variant=l2m",
                f"learner.model.path={tmp_path / 'pretrain/model'}",
                "learner.updates_per_task=2",
                "learner.batch_size=8",
                "learner.dataset.qualities=[expert]",
                "chunks_per_task=1",
                "eval.episodes=1",
                f"run_dir={tmp_path / 'tune'}",
                "progress=false",
            ],
        )
    )
    results = json.loads((tmp_path / "tune" / "results.json").read_text())
    assert len(results["matrix"]) == 10 and len(results["extra"]["pretraining"]["matrix"][0]) == 40
    assert summary["method"] == "l2m" and "pretraining/forgetting" in summary
