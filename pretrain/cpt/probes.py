"""Knowledge probes scored the way lm-evaluation-harness scores multiple choice: a probe is a prompt and the
attribute's every value as choices; the model picks the choice whose continuation (``" " + choice``) it gives the
highest summed log-likelihood. Accuracy therefore has an exact chance level (the mean of 1/choices), printed
beside it, and needs no generation (a greedy continuation from a small model is mostly the most frequent value).

Probes come from ``probes.jsonl`` of the synthetic biographies (``pretrain/cpt/corpora.py``): held-out phrasings
(completion and QA) of people seen in training and of people never seen. Results are keyed
``bios/<seen|unseen>/<form>/accuracy`` plus ``bios/knowledge_accuracy`` (seen people, every form: the headline),
``bios/chance`` and ``bios/unseen_accuracy``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

SCORE_BATCH = 256  # sequences per forward pass


def load_probes(bios_dir: str | Path, per_group: int, seed: int = 0) -> list[dict]:
    """Up to ``per_group`` people of each group (seen, never seen), every probe of each, drawn by ``seed``."""
    probes = [json.loads(line) for line in (Path(bios_dir) / "probes.jsonl").read_text().splitlines() if line]
    by_person: dict[tuple[bool, str], list[dict]] = defaultdict(list)
    for probe in probes:
        by_person[(probe["seen"], probe["person"])].append(probe)
    rng = np.random.default_rng(seed)
    chosen = []
    for seen in (True, False):
        people = sorted(name for s, name in by_person if s == seen)
        for i in sorted(rng.choice(len(people), size=min(per_group, len(people)), replace=False)):
            chosen += by_person[(seen, people[i])]
    return chosen


class ProbeSet:
    """Probes tokenized once; ``score(model)`` returns their accuracies (see the module docstring)."""

    def __init__(self, probes: list[dict], tokenizer):
        self.probes = probes
        self.rows: list[tuple[int, list[int], int]] = []  # (probe, ids of prompt + continuation, continuation length)
        for k, probe in enumerate(probes):
            prompt = tokenizer.encode(probe["prompt"], add_special_tokens=False)
            for choice in probe["choices"]:
                continuation = tokenizer.encode(" " + choice, add_special_tokens=False)
                self.rows.append((k, prompt + continuation, len(continuation)))
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def subset(self, keep) -> ProbeSet:
        """The probes for which ``keep(probe)`` is true, sharing this set's tokenized rows (no second encoding)."""
        out = object.__new__(ProbeSet)
        index = {k: i for i, k in enumerate(k for k, probe in enumerate(self.probes) if keep(probe))}
        out.probes = [self.probes[k] for k in index]
        out.rows = [(index[k], ids, n) for k, ids, n in self.rows if k in index]
        out.pad = self.pad
        return out

    @property
    def chance(self) -> float:
        return float(np.mean([1 / len(p["choices"]) for p in self.probes])) if self.probes else float("nan")

    @torch.no_grad()
    def loglikelihoods(self, model: torch.nn.Module) -> np.ndarray:
        """Summed log-likelihood of every (probe, choice) continuation, in ``rows`` order."""
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        out = np.empty(len(self.rows))
        order = sorted(range(len(self.rows)), key=lambda r: len(self.rows[r][1]))  # similar lengths share a batch
        for start in range(0, len(order), SCORE_BATCH):
            batch = [self.rows[r] for r in order[start : start + SCORE_BATCH]]
            width = max(len(ids) for _, ids, _ in batch)
            ids = torch.full((len(batch), width), self.pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for b, (_, row, _) in enumerate(batch):
                ids[b, : len(row)] = torch.tensor(row)
                mask[b, : len(row)] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
            logp = F.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None].to(device)).squeeze(-1).cpu()
            for b, (_, row, n) in enumerate(batch):
                out[order[start + b]] = float(logp[b, len(row) - 1 - n : len(row) - 1].sum())
        model.train(was_training)
        return out

    def score(self, model: torch.nn.Module) -> dict[str, float]:
        scores = self.loglikelihoods(model)
        correct = []
        r = 0
        for probe in self.probes:
            n = len(probe["choices"])
            correct.append(probe["choices"][int(np.argmax(scores[r : r + n]))] == probe["answer"])
            r += n
        groups: dict[str, list[bool]] = defaultdict(list)
        for probe, ok in zip(self.probes, correct):
            group = "seen" if probe["seen"] else "unseen"
            groups[f"bios/{group}/{probe['form']}/accuracy"].append(ok)
            groups[f"bios/{group}/accuracy"].append(ok)
        out = {key: float(np.mean(v)) for key, v in sorted(groups.items())}
        if "bios/seen/accuracy" in out:
            out["bios/knowledge_accuracy"] = out.pop("bios/seen/accuracy")
        if "bios/unseen/accuracy" in out:
            out["bios/unseen_accuracy"] = out.pop("bios/unseen/accuracy")
        out["bios/chance"] = self.chance
        return out
