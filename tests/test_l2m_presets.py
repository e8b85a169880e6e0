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
    variants = cfg.hydra.sweeper.params.variant.split(",") if "hydra" in cfg else None
    for variant in variants or ROWS:
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
