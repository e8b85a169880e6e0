"""lm-evaluation-harness on a `retain cpt` model (pretrain/cpt/harness.py): the probe tasks it writes, lm-eval's
accuracy against log-likelihoods computed here with the model directly, the CLI, and the one-line error without
lm-eval."""

from __future__ import annotations

import json
import random
import sys

import numpy as np
import pytest
import torch
import yaml

from pretrain.cpt.harness import GROUP, TASKS, evaluate, main, write_tasks
from retain.errors import UserError

VALUES = {
    "birth_city": ["Glenrock", "Ashford", "Millbrook", "Stonehaven", "Larkspur"],
    "university": ["Redvale University", "Northgate College", "Eastmere Institute"],
    "major": ["Biology", "Economics", "Architecture", "Philosophy"],
    "employer": ["Brightwave", "Oakline Systems", "Harbor Foods", "Quill & Co"],
}
COMPLETION = {
    "birth_city": "The birthplace of {name} is",
    "university": "The alma mater of {name} is",
    "major": "The field {name} studied is",
    "employer": "The employer of {name} is",
}
QUESTION = {
    "birth_city": "Where was {name} born?",
    "university": "Which university did {name} attend?",
    "major": "What did {name} study?",
    "employer": "Who employs {name}?",
}
PEOPLE = [("Alda Ash Ardent", True), ("Bram Cole Dunmore", True), ("Cora Lee Fenwick", True), ("Dov Kai Hale", False)]
LIMIT = 8


def probes() -> list[dict]:
    """probes.jsonl of the corpus writer in miniature: every attribute of every person, in both forms."""
    rng = random.Random(0)
    out = []
    for person, seen in PEOPLE:
        for attribute, values in VALUES.items():
            answer = rng.choice(values)
            for form, prompt in (("completion", COMPLETION[attribute]), ("qa", f"Q: {QUESTION[attribute]}\nA:")):
                out.append(
                    {
                        "person": person,
                        "seen": seen,
                        "attribute": attribute,
                        "form": form,
                        "prompt": prompt.format(name=person),
                        "answer": answer,
                        "choices": list(values),
                    }
                )
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny random Llama with a BPE tokenizer trained here, saved as `retain cpt` saves `<run>/model`, and the
    biographies folder with its probes.jsonl."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from pretrain.cpt.model import train_tokenizer

    root = tmp_path_factory.mktemp("harness")
    bios = root / "bios"
    bios.mkdir()
    (bios / "probes.jsonl").write_text("".join(json.dumps(p) + "\n" for p in probes()))
    text = root / "text.txt"
    text.write_text("\n".join(p["prompt"] + " " + c for p in probes() for c in p["choices"]) + "\n")
    tokenizer = train_tokenizer([text], vocab_size=400)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=128,
        initializer_range=0.2,  # far from uniform logits: no near-ties between choices
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    return {"root": root, "bios": bios, "model": model, "tokenizer": tokenizer}


def test_write_tasks_one_task_per_group_and_form(tmp_path):
    (tmp_path / "probes.jsonl").write_text("".join(json.dumps(p) + "\n" for p in probes()))
    names = write_tasks(tmp_path / "probes.jsonl", tmp_path / "tasks")
    assert names == TASKS
    for name in names:
        config = yaml.safe_load((tmp_path / "tasks" / f"{name}.yaml").read_text())
        assert config["task"] == name and config["tag"] == [GROUP] and config["output_type"] == "multiple_choice"
        rows = [json.loads(line) for line in open(config["dataset_kwargs"]["data_files"]["test"])]
        who, form = name.split("_")[-2:]
        people = sum(seen == (who == "seen") for _, seen in PEOPLE)
        assert len(rows) == people * len(VALUES) and {r["form"] for r in rows} == {form}
        assert all(r["choices"][r["label"]] == r["answer"] for r in rows)
    # no held-out people: no unseen tasks
    seen_only = [p for p in probes() if p["seen"]]
    (tmp_path / "seen.jsonl").write_text("".join(json.dumps(p) + "\n" for p in seen_only))
    assert write_tasks(tmp_path / "seen.jsonl", tmp_path / "seen") == TASKS[:2]


def direct_scores(model, tokenizer, rows: list[dict]) -> tuple[float, float]:
    """(acc, acc_norm) computed here: the summed log-likelihood of " " + choice after the prompt, in one forward
    pass per choice; acc_norm divides it by the choice's length in characters, as lm-eval does."""
    acc, acc_norm = [], []
    for row in rows:
        prompt = tokenizer.encode(row["prompt"], add_special_tokens=False)
        lls = []
        for choice in row["choices"]:
            continuation = tokenizer.encode(" " + choice, add_special_tokens=False)
            # lm-eval encodes prompt + continuation whole, then splits: the same ids with this tokenizer
            assert tokenizer.encode(row["prompt"] + " " + choice, add_special_tokens=False) == prompt + continuation
            ids = torch.tensor([prompt + continuation])
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), -1)
            targets = ids[0, len(prompt) :]
            lls.append(float(logp[len(prompt) - 1 :].gather(-1, targets[:, None]).sum()))
        lls = np.array(lls)
        top2 = np.sort(lls)[-2:]
        assert top2[1] - top2[0] > 1e-3, "a near-tie: batched and single forward passes could disagree"
        answer = row["choices"].index(row["answer"])
        acc.append(np.argmax(lls) == answer)
        acc_norm.append(np.argmax(lls / np.array([len(c) for c in row["choices"]])) == answer)
    return float(np.mean(acc)), float(np.mean(acc_norm))


def test_evaluate_matches_direct_loglikelihoods(run):
    pytest.importorskip("lm_eval")
    task_dir = run["root"] / "tasks"
    results = evaluate(run["root"] / "model", bios_dir=run["bios"], limit=LIMIT, batch_size=4, task_dir=task_dir)
    assert sorted(results) == sorted(TASKS)
    for name in TASKS:
        m = results[name]
        assert 0 <= m["acc"] <= 1 and 0 <= m["acc_norm"] <= 1 and m["acc_stderr"] >= 0
        rows = [json.loads(line) for line in (task_dir / f"{name}.jsonl").read_text().splitlines()][:LIMIT]
        assert m["samples"] == len(rows)
        assert m["chance"] == pytest.approx(np.mean([1 / len(r["choices"]) for r in rows]))
        acc, acc_norm = direct_scores(run["model"], run["tokenizer"], rows)
        assert m["acc"] == pytest.approx(acc) and m["acc_norm"] == pytest.approx(acc_norm), name


def test_cli_writes_harness_json_beside_the_model(run, capsys):
    pytest.importorskip("lm_eval")
    code = main([str(run["root"] / "model"), "--bios", str(run["bios"]), "--tasks", TASKS[0], "--limit", "2"])
    assert code == 0
    record = json.loads((run["root"] / "harness.json").read_text())
    assert list(record["results"]) == [TASKS[0]] and record["results"][TASKS[0]]["samples"] == 2
    assert TASKS[0] in capsys.readouterr().out


def test_cli_errors_are_one_line(run, capsys):
    pytest.importorskip("lm_eval")
    assert main([str(run["root"] / "model"), "--tasks", "retain_bios_seen_qa"]) == 2
    assert main([str(run["root"] / "model"), "--bios", str(run["root"] / "nowhere")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "need the biographies" in err[0] and "probes.jsonl does not exist" in err[1]


def test_without_lm_eval_one_clear_line(run, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # `import lm_eval` raises ImportError
    with pytest.raises(UserError) as info:
        evaluate(run["root"] / "model", bios_dir=run["bios"])
    assert str(info.value) == "lm-evaluation-harness is not installed — pip install 'retain[harness]'"
    assert main([str(run["root"] / "model"), "--bios", str(run["bios"])]) == 2
    err = capsys.readouterr().err
    assert err == "retain: error: lm-evaluation-harness is not installed — pip install 'retain[harness]'\n"
