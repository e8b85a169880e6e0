"""Multiple-choice knowledge probes (`pretrain/cpt/probes.py`) on a tiny random-init llama.

``ProbeSet.score`` batches every (probe, choice) row, padded and sorted by length; here each row is scored again
one unpadded sequence at a time, and the accuracies of every group are recomputed from those scores by hand.
``load_probes`` is checked to draw whole people, ``per_group`` of each group, reproducibly.
"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pretrain.cpt import probes as probes_mod
from pretrain.cpt.corpora import CHOICES, write_corpus
from pretrain.cpt.model import ModelConfig, llama_config, load_model, train_tokenizer
from pretrain.cpt.probes import ProbeSet, load_probes

TINY_LLAMA = llama_config(32, layers=1, heads=2, intermediate_size=64, max_positions=64)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """(folder with probes.jsonl, tokenizer, model): 16 people, a quarter of them never seen."""
    root = tmp_path_factory.mktemp("cpt_probes")
    paths = write_corpus(root / "bios", n_people=16, paraphrases=2, held_out=0.25)
    tok = train_tokenizer([paths["bios"], paths["val"]], vocab_size=300, out_dir=root / "tokenizer")
    model = load_model(ModelConfig(config=dict(TINY_LLAMA)), tok, seed=0)
    return root / "bios", tok, model


def _all_probes(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "probes.jsonl").read_text().splitlines() if line]


@torch.no_grad()
def _by_hand(probes: list[dict], tok, model) -> tuple[list[list[float]], dict[str, float]]:
    """Per probe, the summed log p(" " + choice | prompt) of each choice (one sequence per forward pass, no
    padding), and the accuracies ``score`` should report."""
    model.eval()
    scores = []
    for probe in probes:
        prompt = tok.encode(probe["prompt"], add_special_tokens=False)
        row = []
        for choice in probe["choices"]:
            continuation = tok.encode(" " + choice, add_special_tokens=False)
            ids = torch.tensor([prompt + continuation])
            logp = F.log_softmax(model(input_ids=ids).logits[0].float(), -1)
            row.append(sum(float(logp[len(prompt) + k - 1, t]) for k, t in enumerate(continuation)))
        scores.append(row)
    correct = [p["choices"][int(np.argmax(s))] == p["answer"] for p, s in zip(probes, scores)]

    def mean(seen: bool, form: str | None = None) -> float:
        return float(np.mean([ok for p, ok in zip(probes, correct) if p["seen"] == seen and form in (None, p["form"])]))

    expected = {"bios/knowledge_accuracy": mean(True), "bios/unseen_accuracy": mean(False), "bios/chance": 1 / CHOICES}
    for group, seen in (("seen", True), ("unseen", False)):
        for form in ("completion", "qa"):
            expected[f"bios/{group}/{form}/accuracy"] = mean(seen, form)
    return scores, expected


@pytest.mark.parametrize("batch", [256, 7], ids=["one-batch", "batches-of-7"])
def test_score_equals_one_sequence_at_a_time_scoring(corpus, monkeypatch, batch):
    folder, tok, model = corpus
    monkeypatch.setattr(probes_mod, "SCORE_BATCH", batch)  # 7: rows of different lengths share padded batches
    probes = load_probes(folder, per_group=3)
    probe_set = ProbeSet(probes, tok)
    model.train()
    got = probe_set.score(model)
    assert model.training  # scoring puts the model back in the mode it found it in

    scores, expected = _by_hand(probes, tok, model)
    flat = [s for row in scores for s in row]
    assert probe_set.loglikelihoods(model) == pytest.approx(flat, rel=1e-4, abs=1e-4)
    assert got == pytest.approx(expected)
    assert set(got) == set(expected)  # no other keys, and both groups' both forms are there
    # the check has teeth: scores differ between choices, and the model is neither always right nor always wrong
    assert all(max(row) - min(row) > 1e-3 for row in scores)
    assert 0 < np.mean([got["bios/knowledge_accuracy"], got["bios/unseen_accuracy"]]) < 1


def test_score_picks_the_choice_with_the_highest_loglikelihood(corpus, monkeypatch):
    """Rigged log-likelihoods: the probe is right exactly when its answer's row scores highest."""
    folder, tok, model = corpus
    probes = load_probes(folder, per_group=1)[:2] + load_probes(folder, per_group=1)[-2:]
    assert [p["seen"] for p in probes] == [True, True, False, False]
    probe_set = ProbeSet(probes, tok)
    rigged = []
    for k, probe in enumerate(probes):
        favourite = probe["answer"] if k % 2 == 0 else next(c for c in probe["choices"] if c != probe["answer"])
        rigged += [1.0 if c == favourite else 0.0 for c in probe["choices"]]
    monkeypatch.setattr(ProbeSet, "loglikelihoods", lambda self, model: np.array(rigged))
    got = probe_set.score(model)
    assert got["bios/knowledge_accuracy"] == 0.5 and got["bios/unseen_accuracy"] == 0.5


def test_chance_is_the_mean_of_one_over_the_choices(corpus):
    folder, tok, _ = corpus
    assert ProbeSet(load_probes(folder, per_group=2), tok).chance == 0.25
    mixed = [
        {"prompt": "x", "choices": ["a", "b"], "answer": "a", "seen": True, "form": "qa"},
        {"prompt": "y", "choices": ["a", "b", "c", "d"], "answer": "d", "seen": True, "form": "qa"},
    ]
    assert ProbeSet(mixed, tok).chance == pytest.approx((1 / 2 + 1 / 4) / 2)
    assert np.isnan(ProbeSet([], tok).chance)


def test_load_probes_draws_whole_people_per_group_reproducibly(corpus):
    folder, _, _ = corpus
    everything = _all_probes(folder)
    per_person = Counter(p["person"] for p in everything)
    chosen = load_probes(folder, per_group=2, seed=5)
    people = {(p["seen"], p["person"]) for p in chosen}
    assert sum(seen for seen, _ in people) == 2 and sum(not seen for seen, _ in people) == 2
    # every probe of each chosen person, and nothing else
    assert Counter(p["person"] for p in chosen) == {name: per_person[name] for _, name in people}
    assert all(p in everything for p in chosen)

    assert load_probes(folder, per_group=2, seed=5) == chosen
    draws = {frozenset(p["person"] for p in load_probes(folder, per_group=2, seed=s)) for s in range(6)}
    assert len(draws) > 1  # another seed, other people

    # more than a group holds: all of it (4 never-seen people of 16)
    unseen = {p["person"] for p in load_probes(folder, per_group=100) if not p["seen"]}
    assert unseen == {p["person"] for p in everything if not p["seen"]} and len(unseen) == 4
    assert len(load_probes(folder, per_group=100)) == len(everything)


def test_a_subset_scores_as_the_same_probes_tokenized_afresh(corpus):
    folder, tok, model = corpus
    probes = load_probes(folder, per_group=3)
    seen = ProbeSet(probes, tok).subset(lambda q: q["seen"])
    assert seen.probes == [q for q in probes if q["seen"]]
    assert seen.score(model) == ProbeSet(seen.probes, tok).score(model)
