"""The Decision Transformer, its adapters and the L2M pool, on tiny models (no environment, no data files)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from agents.decision_transformer import DecisionTransformer, DTConfig, backbone_state, load_dt
from finetune.adapters import ADAPTERS, AdapterConfig, apply_adapter
from finetune.adapters.pool import KeyPool
from finetune.dt_data import EpisodePart, Rollout, WindowData, from_unit, to_bins

CFG = DTConfig(state_dim=6, act_dim=3, n_bins=8, context=3, n_layer=2, n_head=2, n_embd=16, dropout=0.0)


def _batch(b=4, k=3, seed=0, cfg=CFG):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, k, dtype=torch.bool)
    mask[0, 0] = False  # a window cut at its episode's start
    obs = {
        "states": torch.randn(b, k, cfg.state_dim, generator=g),
        "rtg": torch.rand(b, k, generator=g),
        "rewards": torch.rand(b, k, generator=g),
        "timesteps": torch.arange(k).repeat(b, 1),
        "mask": mask,
    }
    actions = torch.randint(0, cfg.n_bins, (b, k, cfg.act_dim), generator=g)
    actions[:, :, -1] = -1  # a domain with one dimension fewer
    return obs, actions, torch.zeros(b, dtype=torch.long)


def _model(adapter: str = "full", **kw) -> DecisionTransformer:
    torch.manual_seed(0)
    model = DecisionTransformer(CFG)
    apply_adapter(model, AdapterConfig(name=adapter, **kw))
    return model


# -- the pool -------------------------------------------------------------------------------------------


def test_pool_selects_the_top_k_keys_by_cosine_similarity():
    pool = KeyPool(size=4, width=3, top_k=2, count_penalty=True, key_weight=0.5, oracle=False)
    with torch.no_grad():
        pool.keys.copy_(torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [1.0, 1.0, 0]]))
    q = torch.tensor([[10.0, 0.1, 0.0], [0.0, 1.0, -3.0]])
    pool.eval()
    index = pool.select(q, None)
    assert index[0].tolist() == [0, 3]  # cos 1.0 and 0.71: scale does not matter, direction does
    assert index[1].tolist() == [1, 3]  # cos 0.32 and 0.22, above key 0 (0) and key 2 (-0.95)
    sim = pool.similarity(q)
    assert sim.dtype == torch.float32 and torch.allclose(sim[0, 0], F.cosine_similarity(q[:1], pool.keys[:1]))


def test_count_penalty_acts_only_from_the_second_task_and_only_in_training():
    pool = KeyPool(size=3, width=2, top_k=1, count_penalty=True, key_weight=0.5, oracle=False)
    with torch.no_grad():
        pool.keys.copy_(torch.tensor([[1.0, 0.0], [0.8, 0.6], [-1.0, 0.0]]))
    q = torch.tensor([[1.0, 0.0]] * 5)
    pool.train()
    pool.start_task(0)
    assert pool.select(q, None)[:, 0].tolist() == [0] * 5  # task 0: plain similarity, whatever the counts
    assert pool.select(q, None)[:, 0].tolist() == [0] * 5
    assert pool.counts.tolist() == [10.0, 0.0, 0.0]
    pool.start_task(1)  # inv_counts frozen from the counts so far: entry 0 is penalised
    assert torch.allclose(pool.inv_counts, torch.tensor([1 / 11, 1.0, 1.0]) / 1.0)
    assert pool.select(q, None)[:, 0].tolist() == [1] * 5  # ((0.8 + 1) / 2) * 1 > ((1 + 1) / 2) / 11
    pool.eval()
    assert pool.select(q, None)[:, 0].tolist() == [0] * 5  # acting: no penalty


def test_oracle_pool_picks_the_task_entry_and_none_for_unknown_tasks():
    pool = KeyPool(size=3, width=2, top_k=1, count_penalty=True, key_weight=0.5, oracle=True)
    index = pool.select(torch.randn(4, 2), torch.tensor([0, 2, -1, 5]))
    assert index[:, 0].tolist() == [0, 2, -1, -1]


def test_key_loss_pulls_the_selected_key_toward_the_query():
    torch.manual_seed(0)
    pool = KeyPool(size=5, width=8, top_k=1, count_penalty=False, key_weight=0.5, oracle=False)
    q = torch.randn(16, 8) + 2.0
    optimizer = torch.optim.SGD(pool.parameters(), lr=0.5)
    pool.train()
    before = pool.select(q, None)
    cos_before = pool.similarity(q).gather(1, before).mean().item()
    for _ in range(20):
        pool.select(q, None)
        loss = pool.key_loss()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    cos_after = pool.similarity(q).gather(1, before).mean().item()
    assert cos_after > cos_before + 0.1
    assert loss.item() == pytest.approx(-0.5 * cos_after, abs=0.05)


# -- L2M on the Decision Transformer --------------------------------------------------------------------


def test_an_untrained_l2m_pool_leaves_the_pretrained_model_unchanged():
    base = _model("full").eval()
    modulated = _model("l2m", pool_size=4).eval()
    modulated.load_state_dict(base.state_dict(), strict=False)
    obs, actions, ids = _batch()
    assert torch.allclose(base.logits(obs, actions, ids), modulated.logits(obs, actions, ids), atol=1e-6)


@pytest.mark.parametrize("modulation", ["lora", "ia3"])
def test_l2m_tuning_keeps_the_backbone_bit_identical_and_moves_only_the_selected_entry(modulation):
    model = _model("l2m", pool_size=6, modulation=modulation)
    frozen = {k: v.clone() for k, v in backbone_state(model).items()}
    pool_before = {k: v.clone() for k, v in model.adaptation.state_dict().items()}
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("adaptation.") for n in trainable)
    # as the learner builds it: no weight decay on pool entries (an unselected entry must not move)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)
    model.adaptation.start_task(0)
    obs, actions, ids = _batch()
    for _ in range(5):
        loss = model(obs, actions, ids)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for k, v in backbone_state(model).items():
        assert torch.equal(v, frozen[k]), k
    selected = set(np.flatnonzero(model.adaptation.pool.counts.numpy()).tolist())
    assert 1 <= len(selected) < 6
    name = "q_b" if modulation == "lora" else "k_scale"
    after = getattr(model.adaptation, name).detach()
    for entry in range(6):
        changed = not torch.equal(after[entry], pool_before[name][entry])
        assert changed == (entry in selected), (entry, selected)


def test_oracle_l2m_routes_each_row_by_its_task():
    model = _model("l2m", pool_size=3, oracle=True).eval()
    with torch.no_grad():
        model.adaptation.q_b[1].normal_()  # only entry 1 modulates
    obs, actions, _ = _batch()
    plain = model.logits(obs, actions, torch.full((4,), -1))
    task0 = model.logits(obs, actions, torch.zeros(4, dtype=torch.long))
    task1 = model.logits(obs, actions, torch.ones(4, dtype=torch.long))
    assert torch.allclose(plain, task0) and not torch.allclose(plain, task1)


# -- every adapter ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ADAPTERS)
def test_every_adapter_trains_only_its_parameters(name):
    model = _model(name, pool_size=6, top_k=2)
    frozen = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n: p.clone() for n, p in model.named_parameters() if p.requires_grad}
    assert trainable
    if name != "full":
        backbone = set(backbone_state(model))
        assert not any(n in backbone and n != "head.weight" and n != "head.bias" for n in trainable), list(trainable)
        assert ("head.weight" in trainable) == (name == "head")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    obs, actions, ids = _batch()
    for _ in range(3):
        loss = model(obs, actions, ids)
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    params = dict(model.named_parameters())
    assert all(torch.equal(params[n], v) for n, v in frozen.items())
    assert any(not torch.equal(params[n], v) for n, v in trainable.items())


def test_unknown_adapter_is_one_clear_error():
    from retain.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown adapter 'loraa'"):
        apply_adapter(DecisionTransformer(CFG), AdapterConfig(name="loraa"))


# -- the model, its artifact and its data --------------------------------------------------------------


def test_loss_ignores_padded_timesteps_and_missing_dimensions_and_weighs_windows_alike():
    model = _model("full").eval()
    obs, actions, ids = _batch()
    logits = model.logits(obs, actions, ids)
    valid = obs["mask"].unsqueeze(-1) & (actions >= 0)
    per_window = [F.cross_entropy(logits[b][valid[b]], actions[b][valid[b]]) for b in range(4)]
    assert model(obs, actions, ids).item() == pytest.approx(torch.stack(per_window).mean().item(), rel=1e-5)
    assert valid.sum() == (4 * 3 - 1) * 2
    # two halves of a batch, each averaged, average to the whole batch's loss (data-parallel processes)
    half = lambda t, s: {k: v[s] for k, v in t.items()} if isinstance(t, dict) else t[s]  # noqa: E731
    parts = [model(half(obs, s), half(actions, s), half(ids, s)) for s in (slice(0, 2), slice(2, 4))]
    assert ((parts[0] + parts[1]) / 2).item() == pytest.approx(model(obs, actions, ids).item(), rel=1e-5)


def test_artifact_round_trip_loads_the_same_network_without_the_adapter(tmp_path):
    model = _model("lora")
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_()
    model.cfg.task_targets = {"a": 3.0}
    model.save(tmp_path / "model")
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_dt(tmp_path / "model").eval()
    assert loaded.cfg.task_targets == {"a": 3.0}
    plain = _model("full").eval()
    plain.load_state_dict({k: v for k, v in backbone_state(model).items()}, strict=False)
    obs, actions, ids = _batch()
    assert torch.allclose(loaded.logits(obs, actions, ids), plain.logits(obs, actions, ids))


def test_a_damaged_artifact_is_one_clear_error(tmp_path):
    from retain.errors import ConfigError, UserError

    _model("full").save(tmp_path / "model")
    (tmp_path / "model" / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(UserError, match="cannot read"):
        load_dt(tmp_path / "model")
    with pytest.raises(ConfigError, match="no Decision Transformer config"):
        load_dt(tmp_path)


def test_action_bins_round_trip_within_half_a_bin():
    import gymnasium as gym

    space = gym.spaces.Box(-2.0, 2.0, (2,), np.float32)
    actions = np.array([[-2.0, 2.0], [0.3, -1.1]], np.float32)
    bins = to_bins(actions, space, 64, 3)
    assert bins[:, 2].tolist() == [-1, -1] and bins[0, :2].tolist() == [0, 63]
    back = from_unit(-1.0 + 2.0 * bins / 63.0, space)
    assert back.shape == (2, 2) and np.abs(back - actions).max() <= 2.0 * 2 / 63 / 2 + 1e-6


@pytest.mark.parametrize("continuous", [False, True])
def test_acting_windows_are_the_training_windows(continuous):
    """The context a Rollout builds step by step is what WindowData gathers for the same episode (binned actions
    of the multi-domain DT, or continuous ones)."""
    k, n = 3, 5
    rng = np.random.default_rng(0)
    obs, rewards = rng.normal(size=(n, 4)).astype(np.float32), rng.random(n)
    bins = rng.uniform(-1, 1, size=(n, 2)).astype(np.float32) if continuous else rng.integers(0, 8, size=(n, 2))
    states = np.zeros((n, 6), np.float32)
    states[:, :4] = obs
    rtg = np.cumsum(rewards[::-1])[::-1]
    part = EpisodePart(states, bins, rewards, rtg, np.arange(n), np.zeros(n, np.int64), float(rtg[0]), [])
    data = WindowData([part], k, 10.0, torch.device("cpu"))
    rollout = Rollout(1, 6, 2, k, rtg[0] / 10.0, "cpu", continuous)
    for t in range(n):
        window, past = rollout.window(obs[t : t + 1])
        want, want_actions, _ = data.rows(torch.tensor([t]), torch.tensor([0]))
        for key in ("states", "rtg", "timesteps", "mask"):
            assert torch.allclose(window[key].float(), want[key].float(), atol=1e-6), (t, key)
        # the reward and action of the current step are not known yet when acting (and not seen: causal)
        assert torch.equal(past[:, :-1], want_actions[:, :-1].to(past.dtype)) and torch.allclose(
            window["rewards"][:, :-1], want["rewards"][:, :-1]
        )
        rollout.record(torch.as_tensor(bins[t : t + 1]))
        rollout.observe(rewards[t : t + 1], np.array([False]), 10.0)
