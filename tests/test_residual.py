"""`retain residual`: target + α(instruct − base) on tiny random models, the chat template, special tokens and
stop ids taken from the instruct, the checks that refuse a bad merge, the CLI contract (exit 2, one line,
nothing written), and the demo end to end."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig, GPT2Config

from finetune.residual import merge_residual
from pretrain.cpt.model import llama_config, train_tokenizer
from retain.errors import ConfigError
from tests.conftest import error_lines


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    text = tmp_path_factory.mktemp("text") / "t.txt"
    text.write_text("Question: Where was Alda born?\nAnswer: Glenrock\n" * 20)
    return train_tokenizer([text], 300, tmp_path_factory.mktemp("tok"))


def save_model(folder, tokenizer, seed, noise_of=None, dtype=torch.float32, with_tokenizer=True, shard=None, **config):
    """A tiny Llama saved to ``folder``: random init with ``seed``, or ``noise_of``'s weights plus noise."""
    kwargs = llama_config(32, layers=2, heads=2, intermediate_size=64, max_positions=2048, vocab_size=len(tokenizer))
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**{**kwargs, **config}))
    if noise_of is not None:
        model.load_state_dict(AutoModelForCausalLM.from_pretrained(noise_of).state_dict())
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * torch.randn_like(p))
    model.to(dtype).save_pretrained(folder, **({"max_shard_size": shard} if shard else {}))
    if with_tokenizer:
        tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def trio(tmp_path, tokenizer):
    base = save_model(tmp_path / "base", tokenizer, 0)
    instruct = save_model(tmp_path / "instruct", tokenizer, 1, noise_of=base)
    target = save_model(tmp_path / "target", tokenizer, 2, noise_of=base)
    return base, instruct, target


def weights(folder):
    return load_file(folder / "model.safetensors")


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_merged_weights_are_target_plus_alpha_residual(trio, tmp_path, alpha):
    base, instruct, target = trio
    record = merge_residual(base, instruct, target, tmp_path / "out", alpha=alpha)
    b, i, t, out = weights(base), weights(instruct), weights(target), weights(tmp_path / "out")
    assert set(out) == set(t) and len(record["tensors"]) == len(t)
    for name in t:
        assert torch.equal(out[name], t[name].float() + alpha * (i[name].float() - b[name].float())), name
    saved = json.loads((tmp_path / "out" / "residual.json").read_text())
    assert saved["alpha"] == alpha and saved["base"] == str(base.resolve()) and saved["tokenizer_from"] == "instruct"
    assert saved["total"]["residual_norm"] > 0 and set(saved["tensors"][name]) >= {"residual_norm", "target_norm"}


def test_alpha_zero_gives_the_target_and_dtype_follows_the_target(tmp_path, tokenizer):
    base = save_model(tmp_path / "base", tokenizer, 0)
    instruct = save_model(tmp_path / "instruct", tokenizer, 1, noise_of=base)
    target = save_model(tmp_path / "target", tokenizer, 2, noise_of=base, dtype=torch.bfloat16)
    merge_residual(base, instruct, target, tmp_path / "zero", alpha=0.0)
    merge_residual(base, instruct, target, tmp_path / "one", alpha=1.0)
    t, zero, one = weights(target), weights(tmp_path / "zero"), weights(tmp_path / "one")
    b, i = weights(base), weights(instruct)
    for name in t:
        assert torch.equal(zero[name], t[name]) and one[name].dtype == torch.bfloat16
        assert torch.equal(one[name], (t[name].float() + (i[name] - b[name])).to(torch.bfloat16))


def test_output_loads_as_a_model_with_a_tokenizer_and_tied_embeddings_merge(tmp_path, tokenizer):
    base = save_model(tmp_path / "base", tokenizer, 0, tie_word_embeddings=True)
    instruct = save_model(tmp_path / "instruct", tokenizer, 1, noise_of=base, tie_word_embeddings=True)
    target = save_model(
        tmp_path / "target", tokenizer, 2, noise_of=base, tie_word_embeddings=True, with_tokenizer=False
    )
    merge_residual(base, instruct, target, tmp_path / "out")
    assert "lm_head.weight" not in weights(target)  # stored once, under the embedding's name
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    tok = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    expected = weights(target)["model.embed_tokens.weight"] + (
        weights(instruct)["model.embed_tokens.weight"] - weights(base)["model.embed_tokens.weight"]
    )
    assert torch.equal(model.lm_head.weight, expected)
    assert json.loads((tmp_path / "out" / "residual.json").read_text())["tokenizer_from"] == "instruct"
    logits = model(**tok("Question: Where", return_tensors="pt")).logits
    assert logits.shape[-1] == len(tokenizer) and torch.isfinite(logits).all()


def test_a_sharded_target_is_merged_shard_by_shard(tmp_path, tokenizer):
    base = save_model(tmp_path / "base", tokenizer, 0)
    instruct = save_model(tmp_path / "instruct", tokenizer, 1, noise_of=base)
    target = save_model(tmp_path / "target", tokenizer, 2, noise_of=base, shard="20KB")
    assert len(list(target.glob("model-*.safetensors"))) > 1
    merge_residual(base, instruct, target, tmp_path / "out")
    out = tmp_path / "out"
    assert sorted(p.name for p in out.glob("model-*")) == sorted(p.name for p in target.glob("model-*"))
    merged = AutoModelForCausalLM.from_pretrained(out).state_dict()
    t = AutoModelForCausalLM.from_pretrained(target).state_dict()
    b, i = weights(base), weights(instruct)
    assert all(torch.equal(merged[k], t[k] + (i[k] - b[k])) for k in b)


SPARE_ROWS = 8  # embedding rows past the base vocabulary, where an instruct model's added tokens go
PLAIN_TEMPLATE = "{% for m in messages %}{{ m.content }}\n{% endfor %}"
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}<|eot|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


@pytest.fixture(scope="module")
def chat_tokenizers(tokenizer, tmp_path_factory):
    """The tokenizer with a plain chat template (base, target), and with a chat template and an end-of-turn
    special token <|eot|> in the first spare embedding row (instruct), as Llama-3 style instruct models ship."""
    folder = tmp_path_factory.mktemp("chat_tok")
    tokenizer.save_pretrained(folder)
    plain, chat = AutoTokenizer.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    plain.chat_template, chat.chat_template = PLAIN_TEMPLATE, CHAT_TEMPLATE
    chat.add_special_tokens({"additional_special_tokens": ["<|eot|>"]})
    assert chat.convert_tokens_to_ids("<|eot|>") == len(tokenizer)
    return plain, chat


@pytest.fixture
def chat_trio(tmp_path, tokenizer, chat_tokenizers):
    """base and target (base plus noise) with the plain template; instruct (base plus noise) with the chat
    template, stopping at eos or <|eot|> in its config and in its generation config (which samples)."""
    plain, chat = chat_tokenizers
    rows, stop = len(tokenizer) + SPARE_ROWS, [tokenizer.eos_token_id, len(tokenizer)]
    base = save_model(tmp_path / "base", plain, 0, vocab_size=rows)
    target = save_model(tmp_path / "target", plain, 2, noise_of=base, vocab_size=rows)
    instruct = save_model(tmp_path / "instruct", chat, 1, noise_of=base, vocab_size=rows, eos_token_id=stop)
    GenerationConfig(eos_token_id=stop, do_sample=True, temperature=0.6).save_pretrained(instruct)
    return base, instruct, target


def test_merged_model_is_prompted_and_stops_like_the_instruct(chat_trio, tmp_path, tokenizer):
    base, instruct, target = chat_trio
    eos, eot = tokenizer.eos_token_id, len(tokenizer)
    record = merge_residual(base, instruct, target, tmp_path / "out")
    out = tmp_path / "out"
    tok = AutoTokenizer.from_pretrained(out)
    chat = [{"role": "user", "content": "Where was Alda born?"}]
    rendered = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert rendered == "<|user|>Where was Alda born?<|eot|><|assistant|>"
    assert AutoTokenizer.from_pretrained(target).apply_chat_template(chat, tokenize=False) == "Where was Alda born?\n"
    assert tok.encode("<|eot|>", add_special_tokens=False) == [eot] and "<|eot|>" in tok.all_special_tokens
    generation = GenerationConfig.from_pretrained(out)
    assert generation.eos_token_id == [eos, eot] and generation.temperature == 0.6
    # The target's architecture config, with only the instruct's stop ids.
    assert json.loads((out / "config.json").read_text()) == {
        **json.loads((target / "config.json").read_text()),
        "eos_token_id": [eos, eot],
    }
    assert {k: record[k] for k in ("tokenizer_from", "generation_config_from", "config_from_instruct")} == {
        "tokenizer_from": "instruct",
        "generation_config_from": "instruct",
        "config_from_instruct": {"eos_token_id": [eos, eot]},
    }
    model = AutoModelForCausalLM.from_pretrained(out)
    b, i, t, merged = weights(base), weights(instruct), weights(target), model.state_dict()
    assert set(merged) == set(t) and all(torch.equal(merged[k], t[k] + (i[k] - b[k])) for k in t)
    logits = model(**tok(rendered, return_tensors="pt")).logits
    assert logits.shape[-1] == len(tokenizer) + SPARE_ROWS and torch.isfinite(logits).all()


@pytest.mark.parametrize(
    "case", ["hidden size", "vocab size", "token ids", "added token past the embedding", "stop id past the embedding"]
)
def test_an_incompatible_instruct_is_refused_before_anything_is_written(
    case, chat_trio, chat_tokenizers, tokenizer, tmp_path
):
    base, instruct, target = chat_trio
    chat, rows, bad = chat_tokenizers[1], len(tokenizer) + SPARE_ROWS, tmp_path / "bad"
    if case == "hidden size":
        save_model(bad, chat, 3, vocab_size=rows, hidden_size=48)
        match = "config field hidden_size: base 32, instruct 48, target 32"
    elif case == "vocab size":
        save_model(bad, chat, 3, vocab_size=rows + 1)
        match = f"config field vocab_size: base {rows}, instruct {rows + 1}, target {rows}"
    elif case == "token ids":  # a tokenizer trained on other text: same size, other token → id map
        text = tmp_path / "other.txt"
        text.write_text("Frage: Wo wurde Alda geboren?\nAntwort: Glenrock\n" * 20)
        save_model(bad, train_tokenizer([text], 300), 3, noise_of=base, vocab_size=rows)
        match = r"the target's tokenizer has token .* as id \d+, the instruct's (lacks it|has it as id \d+)"
    elif case == "added token past the embedding":
        save_model(bad, chat, 3, noise_of=base, vocab_size=rows)
        more = AutoTokenizer.from_pretrained(bad)
        more.add_special_tokens({"additional_special_tokens": [f"<|tool{k}|>" for k in range(SPARE_ROWS)]})
        more.save_pretrained(bad)
        match = rf"the instruct's tokenizer token '<\|tool7\|>' is id {rows}, outside the embedding's {rows} rows"
    else:
        shutil.copytree(instruct, bad)
        GenerationConfig(eos_token_id=[tokenizer.eos_token_id, rows]).save_pretrained(bad)
        match = rf"the instruct's generation_config.json eos_token_id is id {rows}, outside the embedding"
    with pytest.raises(ConfigError, match=match):
        merge_residual(base, bad, target, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


def test_mismatches_are_refused_with_the_first_difference_named(tmp_path, tokenizer, trio):
    base, instruct, target = trio
    wider = save_model(tmp_path / "wider", tokenizer, 3, intermediate_size=128)
    with pytest.raises(ConfigError, match="config field intermediate_size: base 64, instruct 64, target 128"):
        merge_residual(base, instruct, wider, tmp_path / "out")
    gpt2 = tmp_path / "gpt2"
    AutoModelForCausalLM.from_config(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=300)).save_pretrained(gpt2)
    with pytest.raises(ConfigError, match="config field model_type"):
        merge_residual(base, gpt2, target, tmp_path / "out")
    # Same config, but a tensor missing or of another shape (a checkpoint that does not match its config).
    tensors = weights(target)
    missing, reshaped = tmp_path / "missing", tmp_path / "reshaped"
    for folder, change in ((missing, lambda t: t.pop("model.norm.weight")), (reshaped, None)):
        save_model(folder, tokenizer, 4)
        edited = dict(tensors)
        if change:
            change(edited)
        else:
            edited["model.norm.weight"] = torch.ones(16)
        save_file(edited, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ConfigError, match="tensor model.norm.weight is in base but not in target"):
        merge_residual(base, instruct, missing, tmp_path / "out")
    with pytest.raises(ConfigError, match=r"model.norm.weight has shape \[16\] in instruct but \[32\] in target"):
        merge_residual(base, reshaped, target, tmp_path / "out")
    damaged = save_model(tmp_path / "damaged", tokenizer, 5)
    (damaged / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ConfigError, match="base: .*model.safetensors cannot be read"):
        merge_residual(damaged, instruct, target, tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no config.json"):
        merge_residual(base, instruct, tmp_path / "empty", tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


def test_existing_out_is_refused_unless_overwrite(trio, tmp_path):
    base, instruct, target = trio
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="already exists and is not empty.*overwrite=true"):
        merge_residual(base, instruct, target, out)
    with pytest.raises(ConfigError, match="is one of the input models"):
        merge_residual(base, instruct, target, target, overwrite=True)
    assert (out / "keep.txt").exists()
    merge_residual(base, instruct, target, out, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary folder left


def test_cli_merges_and_refuses_a_mismatch_with_one_line(cli, trio, tmp_path, tokenizer):
    base, instruct, target = trio
    ok = cli("residual", f"base={base}", f"instruct={instruct}", f"target={target}", "alpha=0.5", "run_dir=run")
    assert ok.returncode == 0, ok.stderr[-2000:]
    run = tmp_path / "run"
    assert (run / "model" / "model.safetensors").exists() and (run / "config.yaml").exists()
    assert json.loads((run / "summary.json").read_text())["alpha"] == 0.5
    wider = save_model(tmp_path / "wider", tokenizer, 3, intermediate_size=128)
    bad = cli("residual", f"base={base}", f"instruct={instruct}", f"target={wider}", "out=merged", "run_dir=bad")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert error_lines(bad) == [error_lines(bad)[0]] and "intermediate_size" in error_lines(bad)[0]
    assert not (tmp_path / "merged").exists() and not (tmp_path / "bad").exists()
    missing = cli("residual", f"base={base}", "run_dir=missing")
    assert missing.returncode == 2 and "instruct=, target=" in error_lines(missing)[0]


TINY_DEMO = [
    "demo=true",
    "demo_cfg.people=20",
    "demo_cfg.new_people=10",
    "demo_cfg.plays=1",
    "demo_cfg.vocab_size=400",
    "demo_cfg.hidden_size=32",
    "demo_cfg.layers=1",
    "demo_cfg.seq_len=32",
    "demo_cfg.batch_size=4",
    "demo_cfg.base_steps=40",
    "demo_cfg.instruct_steps=12",
    "demo_cfg.target_steps=12",
    "progress=false",
]


def test_demo_runs_end_to_end_and_writes_its_scores(cli, tmp_path):
    proc = cli("residual", *TINY_DEMO, "run_dir=demo")
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = tmp_path / "demo"
    scores = json.loads((run / "scores.json").read_text())["models"]
    assert list(scores) == ["base", "instruct", "target", "merged"]
    assert all(0 <= s[k] <= 1 for s in scores.values() for k in ("format", "accuracy", "knowledge"))
    report = (run / "report.md").read_text()
    assert "| merged |" in report and "QA format on B" in report
    assert (run / "models" / "merged" / "residual.json").exists() and (run / "metrics.jsonl").exists()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["demo"] is True and "merged/format" in summary
