"""``retain residual demo=true``: continued pretraining loses the QA format; the instruction residual gives it back.

A tiny Llama, offline, in a few minutes on 2 CPU cores, built from ``retain cpt``'s pieces:

1. **base**: trained from scratch on biographies of people A (synthetic, bioS-style) and a few Shakespeare plays;
2. **instruct**: base tuned on questions about A in a QA format (``Question: Where was X born?\\nAnswer: Glenrock``),
   A's biographies replayed;
3. **target**: base continually pretrained on biographies of *other* people B (no QA data; a little
   Shakespeare and A replayed, as continued pretraining usually does);
4. **merged**: target + α·(instruct − base), by ``merge_residual``.

Every model is asked about B's facts in the QA format. *Format* is the share of answer lines that are a valid
value for the question (any city for "Where was X born?"); *accuracy* the share that are the right value;
*knowledge* the share of B's facts completed correctly in biography form ("X was born in" → the city). The
target knows B but does not answer in the format; instruct answers in the format but does not know B (its
accuracy is guessing); merged should do both: most answers in the format, and right well above guessing.
"""

from __future__ import annotations

import copy
import re
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from finetune.residual import merge_residual
from pretrain.cpt.corpora import (
    CITIES,
    EMPLOYERS,
    MAJORS,
    MONTHS,
    TEMPLATES,
    UNIVERSITIES,
    biographies,
    people,
    qa_probes,
    shakespeare_plays,
)
from pretrain.cpt.data import TokenDataset, tokenize_source
from pretrain.cpt.model import ModelConfig, llama_config, load_model, train_tokenizer
from pretrain.cpt.trainer import (
    CptEvalConfig,
    InheritConfig,
    StageConfig,
    TrainConfig,
    tracker_resume_offset,
    train_stages,
)
from retain.config import to_container
from retain.device import resolve_device
from retain.io import atomic_path, write_json_atomic, write_text_atomic
from retain.rundir import prepare_run_dir, write_summary
from retain.seeding import derive_seed
from retain.tracking import Tracker
from retain.training.schedules import ScheduleConfig

MODELS = ("base", "instruct", "target", "merged")
VALUES = {"birth_city": CITIES, "university": UNIVERSITIES, "major": MAJORS, "employer": EMPLOYERS}
DATE = re.compile(rf"^({'|'.join(MONTHS)}) \d{{1,2}}, \d{{4}}$")
# Accuracy of answering with a uniformly drawn valid value (a date is practically never guessed).
GUESSING = sum(1 / len(v) for v in VALUES.values()) / len(TEMPLATES)


@dataclass
class DemoConfig:
    """The demo experiment (``demo=true``): sizes and budgets of a tiny Llama on 2 CPU cores."""

    people: int = 120
    """fictional people whose facts the base model reads and the instruct model is tuned on (set A)"""
    new_people: int = 60
    """other people, only in the continued pretraining of the target (set B), asked about at the end"""
    paraphrases: int = 4
    """biographies per person, each in other words"""
    plays: int = 6
    """Shakespeare plays in the base model's pretraining (general text)"""
    vocab_size: int = 2048
    """BPE vocabulary trained on the demo's text"""
    hidden_size: int = 128
    """model width (Llama; intermediate size 3x, 4 heads)"""
    layers: int = 4
    """transformer blocks"""
    seq_len: int = 128
    """tokens per training window"""
    batch_size: int = 16
    """windows per update"""
    base_steps: int = 600
    """updates of the base model (biographies of A and Shakespeare, from scratch)"""
    instruct_steps: int = 150
    """updates of instruction tuning (QA pairs about A, biographies of A replayed)"""
    target_steps: int = 300
    """updates of continued pretraining on biographies of B (no QA data)"""
    lr: float = 2.0e-3
    """peak learning rate of pretraining and continued pretraining"""
    instruct_lr: float = 1.0e-3
    """peak learning rate of instruction tuning"""


def qa_prompt(question: str) -> str:
    return f"Question: {question}\nAnswer:"


def _write_corpora(data: Path, d: DemoConfig, seed: int) -> None:
    persons = people(d.people + d.new_people, seed)
    a, b = persons[: d.people], persons[d.people :]
    write_text_atomic(data / "bios_a.txt", "\n\n".join(biographies(a, d.paraphrases, seed)) + "\n")
    write_text_atomic(data / "bios_b.txt", "\n\n".join(biographies(b, d.paraphrases, seed + 1)) + "\n")
    qa = [qa_prompt(q["question"]) + " " + q["answer"] for q in qa_probes(a)]  # one QA pair per document
    write_text_atomic(data / "qa_a.txt", "\n\n".join(qa) + "\n")
    plays = [play.read_text(encoding="utf-8") for play in shakespeare_plays()[: d.plays]]
    write_text_atomic(data / "shakespeare.txt", "\n\n".join(plays))  # a document per paragraph


def _stages(d: DemoConfig) -> dict[str, StageConfig]:
    tokens = d.seq_len * d.batch_size  # per update
    fresh = InheritConfig(optimizer=False)  # instruct and target start from base's weights with a new AdamW

    def cosine(warmup: int) -> ScheduleConfig:
        return ScheduleConfig(name="cosine", warmup_steps=warmup, min_lr_ratio=0.1)

    return {
        "base": StageConfig(
            "base", d.base_steps * tokens, {"bios_a": 0.7, "shakespeare": 0.3}, lr=d.lr, schedule=cosine(30)
        ),
        # Replaying A's biographies keeps tuning about the format rather than overwriting what base knows.
        "instruct": StageConfig(
            "instruct",
            d.instruct_steps * tokens,
            {"qa_a": 1.0},
            replay={"bios_a": 0.25},
            lr=d.instruct_lr,
            schedule=cosine(10),
            inherit=fresh,
        ),
        # Continued pretraining at half the base's peak rate with 20% replay, as CPT recipes do: measured here,
        # the full rate without replay moves the weights so far that the residual no longer transfers.
        "target": StageConfig(
            "target",
            d.target_steps * tokens,
            {"bios_b": 1.0},
            replay={"shakespeare": 0.1, "bios_a": 0.1},
            lr=d.lr / 2,
            schedule=cosine(10),
            inherit=fresh,
        ),
    }


@torch.no_grad()
def _generate(model, tokenizer, prompts: list[str], max_new_tokens: int = 10, batch: int = 100) -> list[str]:
    """Greedy continuations, batched with left padding."""
    model.eval()
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(prompts), batch):
        enc = tokenizer(prompts[i : i + batch], return_tensors="pt", padding=True).to(device)
        ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        out += tokenizer.batch_decode(ids[:, enc.input_ids.shape[1] :], skip_special_tokens=True)
    return out


def is_valid(attribute: str, answer: str) -> bool:
    """Whether ``answer`` is a well-formed value of ``attribute`` (right or wrong)."""
    return bool(DATE.match(answer)) if attribute == "birth_date" else answer in VALUES[attribute]


def score(model, tokenizer, persons) -> dict:
    """QA format-following and accuracy, and completion knowledge, on the facts of ``persons``."""
    probes = qa_probes(persons)
    answers = [
        a.split("\n")[0].strip() for a in _generate(model, tokenizer, [qa_prompt(q["question"]) for q in probes])
    ]
    facts = [
        (TEMPLATES[attr][0].split("{value}")[0].format(name=p.name).rstrip(), value)
        for p in persons
        for attr, value in asdict(p).items()
        if attr in TEMPLATES
    ]
    completions = _generate(model, tokenizer, [prefix for prefix, _ in facts])
    return {
        "format": sum(is_valid(q["attribute"], a) for q, a in zip(probes, answers)) / len(probes),
        "accuracy": sum(a == q["answer"] for q, a in zip(probes, answers)) / len(probes),
        "knowledge": sum(c.strip().startswith(v) for c, (_, v) in zip(completions, facts)) / len(facts),
        "examples": [
            {"question": q["question"], "answer": q["answer"], "said": a} for q, a in zip(probes[:5], answers)
        ],
    }


def run_demo(cfg: DictConfig) -> dict:
    """Train base, instruct and target, merge, score all four on B; results and report in ``cfg.run_dir``."""
    from transformers import AutoModelForCausalLM

    started = time.perf_counter()
    torch.set_num_threads(cfg.threads)
    d: DemoConfig = OmegaConf.to_object(cfg.demo_cfg)
    device = resolve_device(cfg.device)
    run_dir = prepare_run_dir(cfg)
    data, models = run_dir / "data", run_dir / "models"
    _write_corpora(data, d, cfg.seed)  # deterministic, so a resumed run writes the same files
    names = ("bios_a", "bios_b", "qa_a", "shakespeare")
    tokenizer = train_tokenizer([data / f"{n}.txt" for n in names], d.vocab_size, run_dir / "tokenizer")
    sources = {
        n: TokenDataset(tokenize_source(data / f"{n}.txt", tokenizer, data / "tokens" / n, 0.05, seed=cfg.seed))
        for n in names
    }
    model_cfg = ModelConfig(config=llama_config(d.hidden_size, d.layers, heads=4, max_positions=max(256, d.seq_len)))
    train = TrainConfig(seq_len=d.seq_len, batch_size=d.batch_size, checkpoint_every=100, log_every=10)
    quiet = CptEvalConfig(dense_every=0, sparse_every=0, val_batches=2)  # only stage-end losses: time goes to training

    def phase(name: str, start) -> torch.nn.Module:
        """Train one model (or load it, when a resumed run finished it) and save it as a transformers folder."""
        folder = models / name
        if (folder / "config.json").exists():
            return AutoModelForCausalLM.from_pretrained(folder).to(device)
        stage = _stages(d)[name]
        model = start().to(device)
        offset = tracker_resume_offset(run_dir / name) if cfg.resume else None  # drops lines after the checkpoint
        with Tracker(run_dir / name, cfg.logger, resume_offset=offset) as tracker:
            used = {n: sources[n] for n in [*stage.mix, *stage.replay]}
            seed = derive_seed(cfg.seed, name)
            train_stages(
                model, used, [stage], train, quiet, run_dir / name, tracker, seed, cfg.resume, progress=cfg.progress
            )
        with atomic_path(folder, directory=True) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
        shutil.rmtree(run_dir / name / "checkpoints", ignore_errors=True)  # the saved model is what a resume needs now
        return model

    base = phase("base", lambda: load_model(model_cfg, tokenizer, seed=cfg.seed))
    phase("instruct", lambda: copy.deepcopy(base))
    phase("target", lambda: copy.deepcopy(base))
    residual = merge_residual(
        models / "base", models / "instruct", models / "target", models / "merged", cfg.alpha, overwrite=True
    )

    persons_b = people(d.people + d.new_people, cfg.seed)[d.people :]
    scores = {}
    for name in MODELS:
        model = AutoModelForCausalLM.from_pretrained(models / name).to(device)
        scores[name] = score(model, tokenizer, persons_b)
    with Tracker(run_dir, cfg.logger, config=to_container(cfg)) as tracker:
        tracker.log({f"eval/{m}/{k}": v for m, s in scores.items() for k, v in s.items() if k != "examples"}, 0)
    summary = {
        "job": "residual",
        "demo": True,
        "alpha": cfg.alpha,
        **{f"{m}/{k}": v for m, s in scores.items() for k, v in s.items() if k != "examples"},
        "guessing_accuracy": GUESSING,
        **{f"residual/{k}": v for k, v in residual["total"].items()},
        "wall_time_s": time.perf_counter() - started,
    }
    write_json_atomic(run_dir / "scores.json", {"alpha": cfg.alpha, "guessing_accuracy": GUESSING, "models": scores})
    write_summary(run_dir, summary)
    write_text_atomic(run_dir / "report.md", _report(scores, residual, d, cfg.alpha, summary["wall_time_s"]))
    print(f"report: {run_dir / 'report.md'}")
    return summary


def _report(scores: dict, residual: dict, d: DemoConfig, alpha: float, wall: float) -> str:
    rows = [f"| {m} | {s['format']:.2f} | {s['accuracy']:.2f} | {s['knowledge']:.2f} |" for m, s in scores.items()]
    said = [
        f"| {e['question']} | {e['answer']} | {t['said']!r} | {e['said']!r} |"
        for t, e in zip(scores["target"]["examples"], scores["merged"]["examples"])
    ]
    total = residual["total"]
    lines = [
        "# retain residual demo: an instruction residual after continued pretraining",
        "",
        f"merged = target + {alpha}·(instruct − base). Every model is asked about the {d.new_people} people of set B",
        "(5 facts each), whom only the target's continued pretraining has read; no model saw a question about them.",
        "",
        "| model | QA format on B | QA accuracy on B | knowledge of B (completion) |",
        "|---|---|---|---|",
        *rows,
        "",
        "- *format*: the answer line is a valid value for the question (any city for a birthplace); *accuracy*: it is",
        f"  the right one (guessing a valid value: {GUESSING:.2f}); *knowledge*: the right value completes",
        '  "<name> was born in" and the like.',
        f"- weights: ‖instruct − base‖ = {total['residual_norm']:.2f}, ‖target − base‖ = {total['drift_norm']:.2f},"
        f" ‖target‖ = {total['target_norm']:.2f} (per tensor in `models/merged/residual.json`).",
        f"- sizes: Llama {d.layers} layers × {d.hidden_size}; {d.people} + {d.new_people} people × {d.paraphrases}"
        f" biographies; {d.plays} plays; updates of {d.batch_size}×{d.seq_len} tokens: base {d.base_steps},"
        f" instruct {d.instruct_steps}, target {d.target_steps}; wall time {wall:.0f} s.",
        "",
        "| question about B | right answer | target said | merged said |",
        "|---|---|---|---|",
        *said,
        "",
    ]
    return "\n".join(lines)
