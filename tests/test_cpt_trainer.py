"""The continual-pretraining trainer core (`pretrain/cpt/trainer.py`).

A tiny corpus (synthetic bios and two Shakespeare plays from the ``shakespeare`` package that ``make install``
installs) is tokenized with a tiny BPE tokenizer; a one-layer llama trains through two stages (A, then B
with replay of A). Checked: the loss falls in stage 0, R is 2x2 and feeds continual_metrics, the schedule
re-warms at stage 1, inherit.optimizer=False starts from an empty optimizer, a run stopped mid-stage and
resumed ends with bit-identical weights, R and metrics, and every logged metric has an allowed prefix.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from pretrain.cpt import trainer as trainer_mod
from pretrain.cpt.corpora import shakespeare_plays, write_corpus
from pretrain.cpt.data import TokenDataset, tokenize_source
from pretrain.cpt.model import ModelConfig, llama_config, load_model, train_tokenizer
from pretrain.cpt.trainer import (
    CptEvalConfig,
    InheritConfig,
    StageConfig,
    TrainConfig,
    evaluate,
    tracker_resume_offset,
    train_stages,
    use_bf16,
)
from retain.checkpoint import load_checkpoint
from retain.errors import ConfigError, DatasetError, TrainingDiverged
from retain.metrics import continual_metrics
from retain.tracking import PREFIXES, Tracker, read_metrics
from retain.training.schedules import ScheduleConfig

TRAIN = TrainConfig(seq_len=32, batch_size=4, grad_accum=2, clip=1.0, weight_decay=0.1, checkpoint_every=7)
TOKENS_PER_STEP = 32 * 4 * 2
EVAL = CptEvalConfig(dense_every=2, dense_until_fraction=0.2, sparse_every=10, val_batches=2)
TINY_LLAMA = llama_config(32, layers=1, heads=2, intermediate_size=64, max_positions=64)


def _text_source(folder: Path) -> Path:
    """The first 60,000 characters of two Shakespeare plays (the ``shakespeare`` package), in one file.

    No stand-in text: without the package these tests would measure another corpus, so they fail instead.
    """
    try:
        plays = shakespeare_plays()
    except DatasetError as e:
        pytest.fail(f"{e}. These tests train on two of its plays, with no stand-in text", pytrace=False)
    assert len(plays) >= 2, f"the shakespeare package holds {len(plays)} plays (*_gut.txt), these tests need 2"
    out = folder / "plays.txt"
    out.write_text("\n\n".join(p.read_text(encoding="utf-8")[:60_000] for p in plays[:2]), encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(tokenizer, sources) shared by every test: tokenizing is the slow part."""
    root = tmp_path_factory.mktemp("cpt_trainer")
    bios = write_corpus(root / "corpus", n_people=60, paraphrases=2)["bios"]
    plays = _text_source(root)
    tok = train_tokenizer([bios, plays], vocab_size=300, out_dir=root / "tokenizer")
    sources = {
        "bios": TokenDataset(tokenize_source(bios, tok, root / "tok_bios", val_fraction=0.1)),
        "plays": TokenDataset(tokenize_source(plays, tok, root / "tok_plays", val_fraction=0.1)),
    }
    return tok, sources


def _model(tok) -> torch.nn.Module:
    return load_model(ModelConfig(config=dict(TINY_LLAMA)), tok, seed=0)


def _stages(steps: int = 24, fresh_optimizer: bool = False) -> list[StageConfig]:
    schedule = ScheduleConfig(name="cosine", warmup_steps=4, min_lr_ratio=0.1)
    return [
        StageConfig("A", steps * TOKENS_PER_STEP, mix={"bios": 1.0}, lr=3e-3, schedule=schedule),
        StageConfig(
            "B",
            steps * TOKENS_PER_STEP,
            mix={"plays": 1.0},
            replay={"bios": 0.25},
            lr=3e-3,
            schedule=schedule,
            inherit=InheritConfig(optimizer=not fresh_optimizer),
        ),
    ]


def _run(
    setup, run_dir: Path, resume: bool = False, stop_after: int | None = None, **kw
) -> tuple[dict, torch.nn.Module]:
    tok, sources = setup
    model = _model(tok)
    offset = tracker_resume_offset(run_dir) if resume else None
    with Tracker(run_dir, resume_offset=offset) as tracker:
        result = train_stages(
            model,
            sources,
            _stages(**kw),
            TRAIN,
            EVAL,
            run_dir,
            tracker,
            seed=0,
            resume=resume,
            stop_after=stop_after,
        )
    return result, model


@pytest.fixture(scope="module")
def baseline(setup, tmp_path_factory):
    """One uninterrupted two-stage run, shared by the read-only checks."""
    run_dir = tmp_path_factory.mktemp("baseline")
    result, model = _run(setup, run_dir)
    return run_dir, result, model


def test_stage0_loss_decreases_and_R_feeds_continual_metrics(baseline):
    run_dir, result, _ = baseline
    records = read_metrics(run_dir)
    losses = [r["train/loss"] for r in records if "train/loss" in r and r["step"] <= 24]
    assert len(losses) == 24
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.5
    assert result["sources"] == ["bios", "plays"] and result["stages"] == ["A", "B"]
    R = result["matrix"]
    assert len(R) == 2 and all(len(row) == 2 for row in R)
    assert R[0][0] < result["initial"][0]  # stage A learned bios
    assert R[1][1] < R[0][1]  # stage B learned plays
    metrics = continual_metrics(R, result["initial"], higher_is_better=False)
    assert metrics  # runs and returns something
    assert result["global_step"] == 48 and not result["stopped"]
    assert all(len(c) > 2 for c in result["curves"].values())


def test_metrics_have_allowed_prefixes_and_eval_schedule(baseline):
    run_dir, _, _ = baseline
    records = read_metrics(run_dir)
    for record in records:
        assert all(k == "step" or k.startswith(PREFIXES) for k in record)
    eval_steps = [r["step"] for r in records if "eval/bios/loss" in r]
    # initial, dense every 2 up to 20% of 24 steps (2, 4), sparse every 10 (10, 20), stage end (24); same in B
    assert eval_steps == [0, 2, 4, 10, 20, 24, 26, 28, 34, 44, 48]
    assert all("eval/plays/perplexity" in r for r in records if "eval/bios/loss" in r)


def test_lr_rewarms_at_stage_1(baseline):
    run_dir, _, _ = baseline
    lr = {r["step"]: r["train/lr"] for r in read_metrics(run_dir) if "train/lr" in r}
    assert lr[24] < 3e-3 * 0.2  # end of stage A: decayed
    assert lr[25] == 0.0  # first update of stage B: warmup starts from 0
    assert lr[25] < lr[26] < lr[27] < lr[29]  # and rises
    assert lr[29] == pytest.approx(3e-3)


def test_inherit_optimizer_false_starts_empty(setup, tmp_path, monkeypatch):
    states: list[int] = []
    original = trainer_mod._scheduler

    def spy(optimizer, *args):
        states.append(len(optimizer.state))  # called right after the stage's optimizer is set up
        return original(optimizer, *args)

    monkeypatch.setattr(trainer_mod, "_scheduler", spy)
    _run(setup, tmp_path / "fresh", steps=4, fresh_optimizer=True)
    assert states == [0, 0]
    states.clear()
    _run(setup, tmp_path / "inherited", steps=4)
    assert states[0] == 0 and states[1] > 0  # the default carries AdamW's moments into stage B


def test_exact_resume(setup, baseline, tmp_path):
    _, result_a, model_a = baseline
    run_dir = tmp_path / "b"
    stopped, _ = _run(setup, run_dir, stop_after=31)  # killed in stage B, after its checkpoint at step 24+7
    assert stopped["stopped"] and len(stopped["matrix"]) == 1
    stopped, _ = _run(setup, run_dir, resume=True, stop_after=3)  # killed again, before the next checkpoint
    assert stopped["stopped"]
    result_b, model_b = _run(setup, run_dir, resume=True)
    for (name, a), (_, b) in zip(model_a.named_parameters(), model_b.named_parameters(), strict=True):
        assert torch.equal(a, b), name
    assert result_b["matrix"] == result_a["matrix"]
    assert result_b["initial"] == result_a["initial"]
    assert result_b["curves"] == result_a["curves"]

    def without_perf(records: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in records]

    assert without_perf(read_metrics(run_dir)) == without_perf(read_metrics(baseline[0]))


def test_from_checkpoint_continues_without_rewarming(setup, baseline, tmp_path):
    base_dir, result_a, model_a = baseline
    tok, sources = setup
    model = _model(tok)
    schedule = ScheduleConfig(name="infinite", warmup_steps=4, cooldown_steps=4, const_lr_ratio=0.5)
    stage = StageConfig(
        "C",
        10 * TOKENS_PER_STEP,
        mix={"plays": 1.0},
        replay={"bios": 0.25},
        lr=1e-3,
        schedule=schedule,
        inherit=InheritConfig(scheduler=True, from_checkpoint=str(base_dir)),
    )
    in_stage_order = {"plays": sources["plays"], "bios": sources["bios"]}  # R's column 0 is what stage C trains
    with Tracker(tmp_path / "c") as tracker:
        result = train_stages(model, in_stage_order, [stage], TRAIN, EVAL, tmp_path / "c", tracker, seed=0)
    # stage C starts from the baseline's final weights (the same columns, in the other order)
    assert result["initial"] == result_a["matrix"][-1][::-1]
    lr = {r["step"]: r["train/lr"] for r in read_metrics(tmp_path / "c") if "train/lr" in r}
    assert min(lr) == 49  # the global step continues from the checkpoint's 48
    assert lr[49] == pytest.approx(0.5e-3)  # 24 steps into the schedule: past warmup and cooldown, no re-warm


def _train(setup, run_dir: Path, stages: list[StageConfig], train: TrainConfig = TRAIN, **kw) -> dict:
    tok, sources = setup
    with Tracker(run_dir) as tracker:
        return train_stages(_model(tok), sources, stages, train, EVAL, run_dir, tracker, seed=0, **kw)


def test_rewarming_to_a_high_lr_opens_a_stability_gap_on_the_old_domain(setup, tmp_path):
    cosine = ScheduleConfig(name="cosine", warmup_steps=2, min_lr_ratio=0.1)
    stages = [
        StageConfig("A", 80 * TOKENS_PER_STEP, mix={"bios": 1.0}, lr=3e-3, schedule=cosine),  # learn bios well
        StageConfig("B", 20 * TOKENS_PER_STEP, mix={"plays": 1.0}, lr=1e-2, schedule=cosine),  # >3x the peak
    ]
    result = _train(setup, tmp_path, stages)
    gaps = result["stability_gap"]
    assert len(gaps) == 2 and set(gaps[1]) == {"bios", "plays"}
    bios_gap = gaps[1]["bios"]
    assert bios_gap["depth"] > 0 and bios_gap["worst_step"] is not None
    # the depth is the worst bios loss of stage B over where stage B started: the end of stage A, on the curve's
    # fixed validation sample (R's row is the whole split; one baseline for every point of the gap)
    in_b = [loss for step, loss in result["curves"]["bios"] if step > 80]
    start = next(loss for step, loss in reversed(result["curves"]["bios"]) if step == 80)
    assert bios_gap["start"] == start and bios_gap["kind"] == "earlier"
    assert bios_gap["depth"] == pytest.approx(max(in_b) - start)
    logged = [r for r in read_metrics(tmp_path) if "eval/bios/stability_gap_depth" in r]
    assert [r["step"] for r in logged] == [80, 100]


def test_probe_runs_before_training_and_after_every_stage(setup, tmp_path):
    calls = []

    def probe(model):
        calls.append(model.training)
        return {"probe/calls": float(len(calls))}

    result = _train(setup, tmp_path, _stages(steps=4), probe=probe)
    assert result["probes"] == {"initial": {"probe/calls": 1.0}, "stages": [{"probe/calls": 2.0}, {"probe/calls": 3.0}]}
    assert [r["step"] for r in read_metrics(tmp_path) if "eval/probe/calls" in r] == [0, 4, 8]


def test_branching_from_the_pre_anneal_checkpoint(setup, tmp_path):
    infinite = ScheduleConfig(name="infinite", warmup_steps=2, cooldown_steps=2, const_lr_ratio=0.5, anneal_steps=4)
    stages = [
        StageConfig("A", 12 * TOKENS_PER_STEP, mix={"bios": 1.0}, lr=1e-3, schedule=infinite),
        StageConfig(
            "B",
            6 * TOKENS_PER_STEP,
            mix={"plays": 1.0},
            lr=1e-3,
            schedule=ScheduleConfig(name="infinite", const_lr_ratio=0.5, skip_warmup_and_cooldown=True),
            inherit=InheritConfig(scheduler=True, from_checkpoint="pre_anneal"),
        ),
    ]
    result = _train(setup, tmp_path, stages)
    saved = list((tmp_path / "checkpoints" / "pre_anneal" / "A").glob("step_*"))
    assert [p.name for p in saved] == ["step_000000000008"]  # 12 updates, the last 4 anneal
    lr = [(r["step"], r["train/lr"]) for r in read_metrics(tmp_path) if "train/lr" in r]
    stage_a, stage_b = lr[:12], lr[12:]
    assert stage_a[-1][1] < 0.5e-3  # stage A ended annealed...
    assert stage_b[0][0] == 13  # ...stage B branches from update 8 of A; the step counter goes on
    assert stage_b[0][1] == pytest.approx(0.5e-3)  # at η_const, not re-warmed
    # B starts from the pre-anneal weights: its stage-start evaluation (at step 12, after A's end) is not A's R
    tok, sources = setup
    model = _model(tok)
    model.load_state_dict(load_checkpoint(saved[0])[0])
    batches = sources["bios"].val_batches(TRAIN.seq_len, TRAIN.batch_size, EVAL.val_batches)
    expected = evaluate(model, batches, bf16=use_bf16(TRAIN.precision, torch.device("cpu")))
    assert [loss for step, loss in result["curves"]["bios"] if step == 12][-1] == pytest.approx(expected)
    assert expected != pytest.approx(result["matrix"][0][0])


def test_pre_anneal_needs_an_anneal_in_the_previous_stage(setup, tmp_path):
    stages = _stages(steps=4)
    stages[1].inherit = InheritConfig(from_checkpoint="pre_anneal")
    with pytest.raises(ConfigError, match="has no anneal"):
        _train(setup, tmp_path, stages)
    assert not (tmp_path / "checkpoints").exists()


def test_bf16_autocast_and_mfu_with_a_given_peak(setup, tmp_path):
    train = TrainConfig(**{**TRAIN.__dict__, "precision": "bf16", "peak_tflops": 1.0, "checkpoint_every": 0})
    result = _train(setup, tmp_path, _stages(steps=4), train=train)
    perf = [r for r in read_metrics(tmp_path) if "perf/mfu" in r]
    assert len(perf) == 8
    assert all(0 < r["perf/mfu"] < 1 and r["perf/tflops"] == pytest.approx(r["perf/mfu"]) for r in perf)
    assert all(math.isfinite(v) for row in result["matrix"] for v in row)
    with pytest.raises(ConfigError, match="precision"):
        _train(setup, tmp_path / "bad", _stages(steps=4), train=TrainConfig(**{**TRAIN.__dict__, "precision": "fp16"}))


@pytest.mark.slow
def test_compiled_training_matches_eager(setup, tmp_path):
    eager = _train(setup, tmp_path / "eager", _stages(steps=5))
    compiled_train = TrainConfig(**{**TRAIN.__dict__, "compile": True})
    compiled = _train(setup, tmp_path / "compiled", _stages(steps=5), train=compiled_train)
    for row_compiled, row_eager in zip(compiled["matrix"], eager["matrix"]):
        assert row_compiled == pytest.approx(row_eager, rel=1e-3)


def test_a_diverging_stage_stops_with_a_clear_error_and_keeps_its_checkpoints(setup, tmp_path):
    stages = _stages(steps=12)
    stages[1].lr = 1e4  # Adam at this rate blows the weights up within a few updates
    train = TrainConfig(**{**TRAIN.__dict__, "clip": 0.0})
    with pytest.raises(TrainingDiverged, match="training diverged: loss .* of stage 'B'") as error:
        _train(setup, tmp_path, stages, train=train)
    assert "stages.1.lr" in error.value.fix and error.value.keep_outputs
    assert (tmp_path / "checkpoints" / "latest.json").exists()  # stage A's end is kept, ready to resume


# --- R's diagonal: which source each stage is scored as --------------------------------------------


def test_a_stage_scored_as_another_column_is_refused_before_training(setup, tmp_path, monkeypatch):
    trained = []
    monkeypatch.setattr(trainer_mod.CptLearner, "train_chunk", lambda self, *a: trained.append(a))
    stages = _stages(steps=4)
    stages[0].mix, stages[1].mix = {"plays": 1.0}, {"bios": 1.0}  # sources are [bios, plays]: the other order
    stages[1].replay = {}
    with pytest.raises(ConfigError, match="R's column 0 is source 'bios'") as err:
        _train(setup, tmp_path, stages)
    assert "stage 0 ('A') is scored as source 'plays'" in err.value.problem
    assert "scored_as" in err.value.fix
    assert trained == [] and read_metrics(tmp_path) == [] and not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize("scored_as", ["plays", "nowhere"])
def test_scored_as_a_source_the_stage_does_not_train_on_is_refused(setup, tmp_path, scored_as):
    stages = _stages(steps=4)
    stages[0].scored_as = scored_as  # stage A trains bios only
    with pytest.raises(ConfigError, match="which it does not train on") as err:
        _train(setup, tmp_path, stages)
    assert "stages.0.scored_as" in err.value.fix and "bios" in err.value.fix
    assert not (tmp_path / "checkpoints").exists()


def test_diagonal_is_scored_as_else_the_largest_mix_entry():
    mostly_plays = StageConfig("A", 1, mix={"plays": 0.7, "bios": 0.3})
    then_plays = StageConfig("B", 1, mix={"plays": 1.0})
    with pytest.raises(ConfigError, match="R's column 0"):
        trainer_mod.diagonal([mostly_plays, then_plays], ["bios", "plays"])
    mostly_plays.scored_as = "bios"  # a minority source can be declared the stage's own
    assert trainer_mod.diagonal([mostly_plays, then_plays], ["bios", "plays"]) == ["bios", "plays"]
    # stages past the last source have no column to match
    extra = StageConfig("C", 1, mix={"bios": 1.0})
    assert trainer_mod.diagonal([mostly_plays, then_plays, extra], ["bios", "plays"]) == ["bios", "plays", "bios"]


# --- hold: the no-re-warm arm ------------------------------------------------------------------------


def _hold_stages(steps: int) -> list[StageConfig]:
    return [
        StageConfig(
            "A",
            steps * TOKENS_PER_STEP,
            mix={"bios": 1.0},
            lr=1e-3,
            schedule=ScheduleConfig(name="cosine", warmup_steps=2, min_lr_ratio=0.1),
        ),
        # its own lr is ignored: it holds where A ended, 1e-3 * 0.1
        StageConfig("B", steps * TOKENS_PER_STEP, mix={"plays": 1.0}, lr=3e-3, schedule=ScheduleConfig(name="hold")),
    ]


def _lrs(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["train/lr"] for r in read_metrics(run_dir) if "train/lr" in r}


def test_hold_keeps_the_previous_stages_final_rate_through_the_stage_and_a_resume(setup, tmp_path):
    tok, sources = setup
    lr = {}
    for name, stops in (("whole", [None]), ("resumed", [15, None])):  # a checkpoint at 15 = B's 7th update
        run_dir = tmp_path / name
        for k, stop in enumerate(stops):
            offset = tracker_resume_offset(run_dir) if k else None
            with Tracker(run_dir, resume_offset=offset) as tracker:
                result = train_stages(
                    _model(tok),
                    sources,
                    _hold_stages(8),
                    TRAIN,
                    EVAL,
                    run_dir,
                    tracker,
                    seed=0,
                    resume=k > 0,
                    stop_after=stop,
                )
            assert result["stopped"] == (stop is not None)
        assert result["global_step"] == 16
        lr[name] = _lrs(run_dir)
    whole = lr["whole"]
    assert sorted(whole) == list(range(1, 17))
    assert whole[1] == 0.0 and whole[3] == pytest.approx(1e-3) and whole[8] > 1.5e-4  # A: warmup, then cosine
    assert [whole[s] for s in range(9, 17)] == pytest.approx([1e-4] * 8, rel=1e-9)  # B: A's final rate, held
    assert lr["resumed"] == pytest.approx(whole, rel=1e-12)
    assert (tmp_path / "resumed" / "checkpoints" / "step_000000000015").exists()  # B was resumed from inside


def test_hold_is_refused_in_a_first_stage_and_after_a_fresh_model(setup, tmp_path):
    stages = _hold_stages(4)
    with pytest.raises(ConfigError, match="first stage 'B' has schedule hold"):
        _train(setup, tmp_path / "first", stages[1:])
    assert read_metrics(tmp_path / "first") == []
    # method=reset starts every stage from the fresh model: there is no rate to hold
    with pytest.raises(ConfigError, match="holds the previous stage's final rate") as err:
        _train(setup, tmp_path / "reset", stages, method={"name": "reset"})
    assert "schedule of its own" in err.value.fix


# --- token-matched infinite branches -----------------------------------------------------------------


def test_branch_anneal_steps_count_only_a_flagged_infinite_anneal():
    infinite = ScheduleConfig(name="infinite", warmup_steps=2, cooldown_steps=2, const_lr_ratio=0.5, anneal_steps=4)
    stage = StageConfig("A", 8 * TOKENS_PER_STEP, mix={"bios": 1.0}, schedule=infinite, anneal_after_budget=True)
    assert trainer_mod.branch_anneal_steps(stage) == 4 and trainer_mod.stage_steps(stage, TRAIN) == 12
    stage.anneal_after_budget = False  # the anneal inside the budget
    assert trainer_mod.branch_anneal_steps(stage) == 0 and trainer_mod.stage_steps(stage, TRAIN) == 8
    wsd = StageConfig("W", 8 * TOKENS_PER_STEP, mix={"bios": 1.0}, schedule=ScheduleConfig(name="wsd"))
    wsd.anneal_after_budget = True  # only the infinite schedule's anneal moves past the budget
    assert trainer_mod.stage_steps(wsd, TRAIN) == 8


def test_a_token_matched_infinite_branch_anneals_past_the_budget(setup, tmp_path):
    infinite = ScheduleConfig(name="infinite", warmup_steps=2, cooldown_steps=2, const_lr_ratio=0.5, anneal_steps=4)
    budget = 8
    stages = [
        StageConfig(
            "A", budget * TOKENS_PER_STEP, mix={"bios": 1.0}, lr=1e-3, schedule=infinite, anneal_after_budget=True
        ),
        StageConfig(
            "B",
            4 * TOKENS_PER_STEP,
            mix={"plays": 1.0},
            lr=1e-3,
            schedule=ScheduleConfig(name="infinite", const_lr_ratio=0.5, skip_warmup_and_cooldown=True),
            inherit=InheritConfig(from_checkpoint="pre_anneal"),
        ),
    ]
    result = _train(setup, tmp_path, stages)
    lr = sorted(_lrs(tmp_path).items())
    stage_a = [rate for step, rate in lr if step <= budget + 4]
    assert len(stage_a) == budget + 4  # the budget, then the anneal on top of it
    assert stage_a[2:4] == pytest.approx([1e-3, 0.75e-3])  # warmed up, cooling down...
    assert stage_a[4 : budget + 1] == pytest.approx([0.5e-3] * (budget - 3))  # ...η_const to the budget's end
    assert all(a > b for a, b in zip(stage_a[budget:], stage_a[budget + 1 :]))  # then the anneal, down
    saved = list((tmp_path / "checkpoints" / "pre_anneal" / "A").glob("step_*"))
    assert [p.name for p in saved] == [f"step_{budget:012d}"]  # the branch point is the budget's end
    assert load_checkpoint(saved[0])[1]["learner"]["stage_step"] == budget
    stage_b = [(step, rate) for step, rate in lr if step > budget + 4]
    assert [step for step, _ in stage_b] == [13, 14, 15, 16]
    assert [rate for _, rate in stage_b] == pytest.approx([0.5e-3] * 4)  # η_const from its first update: no re-warm
    assert result["global_step"] == 16


def test_a_probe_of_a_domain_has_its_domains_kind_in_the_stability_gap(setup, tmp_path):
    """A probe named after a source counts with it: the earlier domain's probe is De Lange's gap, the stage's own
    domain's is Guo's; a probe of a domain not trained yet gets none."""
    calls = []

    def probe(model):
        calls.append(1)
        return {"bios/knowledge_accuracy": 0.5 - 0.1 * len(calls), "plays/knowledge_accuracy": 0.3, "quiz/acc": 0.2}

    result = _train(setup, tmp_path, _stages(steps=4), probe=probe)
    first, second = result["stability_gap"]
    assert first["probe:bios/knowledge_accuracy"]["kind"] == "target" and "probe:plays/knowledge_accuracy" not in first
    assert second["probe:bios/knowledge_accuracy"]["kind"] == "earlier"  # stage B trains plays
    assert second["probe:bios/knowledge_accuracy"]["depth"] == pytest.approx(0.1)  # 0.3 at the start, 0.2 at the end
    assert second["probe:plays/knowledge_accuracy"]["kind"] == "target"
    assert second["probe:plays/knowledge_accuracy"]["probe"] is True
    assert "probe:quiz/acc" not in second  # the CPT learner measures the gaps of knowledge accuracies only
