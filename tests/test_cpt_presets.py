"""`retain cpt`'s config groups and paper presets: every option and every sweep setting composes and
validates, a sweeping preset runs through the CLI and ends in one comparison report, and the GPU preset
runs a few steps with a tiny random GPT-NeoX."""

import itertools
import json

import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf
from transformers import AutoConfig

from pretrain.cpt.job import describe, job_stages, run_cpt
from pretrain.cpt.trainer import diagonal, stage_steps
from retain.config import config_dir, load_config
from retain.jobs import register_job_schemas
from retain.metrics import continual_metrics
from retain.report import compare_runs
from retain.sweep_report import summary_lines, sweep_runs
from retain.training.schedules import check_schedule, resolved
from tests.test_cpt_job import TINY as CPT_TINY

CONFIGS = config_dir()
PRESETS = sorted(p.stem for p in (CONFIGS / "experiment").glob("cpt_*.yaml"))
SWEEPS = ["cpt_replay", "cpt_rewarm", "cpt_infinite_vs_cosine", "cpt_stability_gap"]

# A tiny model and budget (seconds per run): tests/test_cpt_job.py's, without its checkpoints and progress keys.
TINY = [o for o in CPT_TINY if not o.startswith(("train.checkpoint_every=", "progress="))]


@pytest.fixture(autouse=True)
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("RETAIN_DATA", str(tmp_path / "data"))


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


def validate(cfg) -> None:
    """What `retain cpt` checks before writing anything: every value resolves, every stage's schedule fits
    its updates, every stage names known sources, and there is one stage per source (R is square)."""
    OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    train = OmegaConf.to_object(cfg.train)
    stages = job_stages(cfg)
    for stage in stages:
        check_schedule(stage.schedule, stage_steps(stage, train))
        assert set(stage.mix) | set(stage.replay) <= set(cfg.sources), stage.name
    assert len(stages) == len(cfg.sources)
    diagonal(stages, list(cfg.sources))  # stage i is scored as source i
    assert len(describe(cfg)) == len(stages) + 2  # the report's "What was run" can be written for it


def hydra_config(overrides: list[str]):
    register_job_schemas()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("cpt", overrides, return_hydra_config=True)


def sweep_settings(preset: str) -> list[list[str]]:
    """The override lists the preset's sweep launches (Hydra's own expansion), seeds left out."""
    params = hydra_config([f"experiment={preset}"]).hydra.sweeper.params
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items() if k != "seed"])
    return BasicSweeper.split_arguments(parsed, None)[0]


def test_the_default_run_is_unchanged():
    cfg = load_config("cpt")
    assert cfg.model.name_or_path is None and cfg.model.config.num_hidden_layers == 4 and cfg.model.vocab_size == 4096
    assert [(s.name, s.tokens, dict(s.mix), dict(s.replay), s.lr) for s in cfg.stages] == [
        ("upstream", 2_000_000, {"shakespeare": 1.0}, {}, 1e-3),
        ("downstream", 1_000_000, {"bios": 1.0}, {"shakespeare": 0.05}, 1e-3),
    ]
    schedule = cfg.schedule
    assert (schedule.name, schedule.warmup_fraction, schedule.warmup_steps, schedule.min_lr_ratio) == (
        "cosine",
        0.01,  # the papers' ~1% of a stage
        None,
        0.1,
    )
    assert (cfg.bios.people, cfg.bios.paraphrases, cfg.bios.held_out) == (100, 8, 0.1)
    validate(cfg)


def test_rewarm_arms_are_gupta_et_al_s_grid_with_a_true_no_rewarm_arm():
    """Warmup 0 / 0.5 / 1 / 2% of the downstream stage × η_max at three levels around the upstream peak, and no
    re-warm: the downstream stage holds the rate the upstream stage ended at."""
    arms = {}
    for overrides in sweep_settings("cpt_rewarm"):
        cfg = load_config("cpt", ["experiment=cpt_rewarm", *overrides])
        upstream, downstream = job_stages(cfg)
        steps = stage_steps(downstream, OmegaConf.to_object(cfg.train))
        arms[cfg.name] = (downstream.lr, downstream.schedule.name, resolved(downstream.schedule, steps).warmup_steps)
        assert describe(cfg)[2].startswith("- stage `downstream`")
    assert steps == 200 and upstream.lr == 1e-3
    grid = [(lr, "cosine", w) for lr in (3e-4, 1e-3, 3e-3) for w in (0, 1, 2, 4)]  # 0 / 0.5 / 1 / 2% of 200
    assert sorted(arms.values()) == sorted([*grid, (1e-3, "hold", 0)])


@pytest.mark.parametrize("group", ["model", "data", "schedule"])
def test_every_group_option_composes_and_validates(group):
    for option in options(group):
        cfg = load_config("cpt", [f"{group}={option}"])
        validate(cfg)
        if group == "model":  # the architecture a random init would build (no weights allocated)
            arch = dict(cfg.model.config)
            assert AutoConfig.for_model(arch.pop("model_type"), **arch).num_hidden_layers >= 1
        if group == "schedule":
            assert cfg.schedule.name in option or option == "rewarm"


def test_schedule_options_target_the_run_level_schedule():
    assert load_config("cpt", ["schedule=wsd"]).schedule.name == "wsd"
    assert load_config("cpt", ["schedule=rewarm"]).schedule == load_config("cpt", ["schedule=cosine"]).schedule
    stages = job_stages(load_config("cpt", ["schedule=infinite"]))
    assert [s.schedule.skip_warmup_and_cooldown for s in stages] == [False, True]  # one warmup, no re-warm


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_and_every_sweep_setting_composes_and_validates(preset):
    validate(load_config("cpt", [f"experiment={preset}"]))
    if preset not in SWEEPS:
        assert hydra_config([f"experiment={preset}"]).hydra.mode is None  # a single run
        return
    h = hydra_config([f"experiment={preset}"]).hydra
    assert str(h.mode) == "RunMode.MULTIRUN" and h.callbacks.sweep_report._target_ == "retain.sweep_report.SweepReport"
    assert len(str(h.sweeper.params.seed).split(",")) >= (3 if preset == "cpt_infinite_vs_cosine" else 2)
    settings = sweep_settings(preset)
    names = set()
    for overrides in settings:
        cfg = load_config("cpt", [f"experiment={preset}", *overrides])
        validate(cfg)
        names.add(cfg.name)
    assert len(names) == len(settings) > 1  # the report's label (the run's name) tells every setting apart


def test_infinite_vs_cosine_covers_three_stages_and_both_schedules():
    settings = sweep_settings("cpt_infinite_vs_cosine")
    assert sorted(o for s in settings for o in s) == ["schedule=cosine", "schedule=infinite"]
    cfg = load_config("cpt", ["experiment=cpt_infinite_vs_cosine", "schedule=infinite"])
    assert len(cfg.stages) >= 3 and [s.schedule.skip_warmup_and_cooldown for s in job_stages(cfg)] == [
        False,
        True,
        True,
    ]


@pytest.mark.slow
def test_cpt_replay_sweeps_through_the_cli_into_one_comparison(cli, tmp_path):
    proc = cli("cpt", "-m", "experiment=cpt_replay", "seed=0", "stages.1.replay.shakespeare=0,0.25", *TINY, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep,) = (tmp_path / "runs" / "cpt" / "multirun").iterdir()
    runs = sorted(d.name for d in sweep.iterdir() if (d / "results.json").exists())
    assert runs == ["0_replay=0.0_seed0", "1_replay=0.25_seed0"]
    comparison = json.loads((sweep / "comparison.json").read_text())
    assert list(comparison["groups"]) == ["cpt · replay=0.0", "cpt · replay=0.25"]
    for group in comparison["groups"].values():
        per_task = group["per_task"]
        assert per_task["forgetting"]["shakespeare"]["n"] == 1 and per_task["final"]["bios"]["mean"] > 0
    report = (sweep / "report.md").read_text()
    assert "forgetting: shakespeare" in report and "Stability gap" in report
    assert "cpt · replay=0.25:" in proc.stdout and sweep.name in proc.stdout
    rebuilt = cli("report", str(sweep))  # from the files alone
    assert rebuilt.returncode == 0, rebuilt.stderr[-2000:]


def test_pythia410m_preset_runs_a_few_steps_with_a_tiny_random_gpt_neox(tmp_path):
    preset = load_config("cpt", ["experiment=cpt_pythia410m"])
    assert preset.model.name_or_path == "EleutherAI/pythia-410m" and preset.model.tokenizer is None
    assert preset.model.config.model_type == "gpt_neox"
    # No hub here: a random GPT-NeoX of Pythia's family, and a BPE tokenizer trained on the sources.
    tiny = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
    overrides = [
        f"run_dir={tmp_path / 'run'}",
        "model.name_or_path=null",
        "model.vocab_size=512",
        *(f"model.config.{k}={v}" for k, v in tiny.items()),
        "model.config.num_key_value_heads=2",
        "model.config.max_position_embeddings=128",
        "train.seq_len=32",
        "train.batch_size=4",
        "train.grad_accum=2",
        "train.checkpoint_every=0",
        "stages.0.tokens=1024",  # 4 updates of 256 tokens
        "stages.1.tokens=1024",
        "schedule.warmup_steps=1",
        "bios.people=40",
        "bios.paraphrases=2",
        "bios.probes=5",
        "eval.val_batches=1",
        "eval.dense_every=2",
        "progress=false",
        "device=cpu",
    ]
    summary = run_cpt(load_config("cpt", ["experiment=cpt_pythia410m", *overrides]))
    run = tmp_path / "run"
    assert summary["steps"] == 8 and json.loads((run / "model" / "config.json").read_text())["model_type"] == "gpt_neox"
    assert (run / "tokenizer" / "tokenizer.json").exists()
    results = json.loads((run / "results.json").read_text())
    assert results["tasks"] == ["shakespeare", "bios"] and len(results["matrix"]) == 2


def test_sweep_report_groups_seeds_of_a_setting(tmp_path):
    """The callback's comparison: seeds of one name are one group, with a CI over them."""
    sweep = tmp_path / "sweep"
    for num, (replay, seed) in enumerate(itertools.product([0.0, 0.25], [0, 1])):
        run = sweep / f"{num}_replay={replay}_seed{seed}"
        run.mkdir(parents=True)
        forgetting = 1.0 - 2 * replay + 0.1 * seed
        R = [[5.0, 8.0], [5.0 + forgetting, 3.0 + replay]]
        (run / "results.json").write_text(
            json.dumps(
                {
                    "tasks": ["shakespeare", "bios"],
                    "matrix": R,
                    "initial": [8.0, 8.0],
                    "higher_is_better": False,
                    "metric": "loss",
                    "metrics": continual_metrics(R, [8.0, 8.0], higher_is_better=False),
                    "task_boundaries": [10, 20],
                }
            )
        )
        summary = {"job": "cpt", "label": f"cpt · replay={replay}", "stages": ["upstream", "downstream"]}
        (run / "summary.json").write_text(json.dumps(summary))
        (run / "config.yaml").write_text(f"name: replay={replay}\nseed: {seed}\n")
    (sweep / "multirun.yaml").write_text("{}\n")
    assert [r.name for r in sweep_runs(sweep)] == sorted(r.name for r in sweep.iterdir() if r.is_dir())
    compare_runs(sweep_runs(sweep), sweep)
    lines = summary_lines(sweep)
    assert len(lines) == 2 and "cpt · replay=0.0: shakespeare forgetting 1.050 [" in lines[0] and "n=2" in lines[0]
