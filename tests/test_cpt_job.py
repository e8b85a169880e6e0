"""`retain cpt` end to end on the offline corpora: results over sources, report, resume, errors."""

import json

import pytest

from pretrain.cpt.job import run_cpt
from retain.config import load_config
from retain.errors import ConfigError
from retain.metrics import METRIC_KEYS

TINY = [
    "stages.0.tokens=40960",
    "stages.1.tokens=20480",
    "schedule.warmup_steps=2",
    "train.seq_len=64",
    "train.batch_size=8",
    "train.checkpoint_every=20",
    "model.vocab_size=512",
    "bios.people=40",
    "bios.probes=10",
    "eval.val_batches=2",
    "eval.sparse_every=20",
    "model.config.hidden_size=32",
    "model.config.intermediate_size=64",
    "model.config.num_hidden_layers=1",
    "model.config.num_attention_heads=2",
    "model.config.num_key_value_heads=2",
    "progress=false",
]


@pytest.fixture(autouse=True)
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("RETAIN_DATA", str(tmp_path / "data"))


def test_two_stage_cpt_scores_forgetting_over_sources(tmp_path):
    summary = run_cpt(load_config("cpt", [f"run_dir={tmp_path / 'run'}", *TINY]))
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert (
        results["tasks"] == ["shakespeare", "bios"]
        and results["metric"] == "loss"
        and results["higher_is_better"] is False
    )
    assert len(results["matrix"]) == 2 and set(results["metrics"]) == {*METRIC_KEYS, "per_task"}
    R = results["matrix"]
    assert R[0][0] < results["initial"][0] and R[1][1] < R[0][1]  # each stage learns its own source
    assert 0.0 <= summary["knowledge_accuracy"] <= 1.0 and summary["steps"] == 40960 // 512 + 20480 // 512
    for name in ("report.md", "curves.png", "results_heatmap.png", "model/config.json", "tokenizer/tokenizer.json"):
        assert (tmp_path / "run" / name).exists(), name
    # the stability gap and the probes per stage are in results.json and in the report
    assert results["stages"] == ["upstream", "downstream"] and len(results["stability_gap"]) == 2
    assert results["scored_as"] == ["shakespeare", "bios"]
    gaps = results["stability_gap"][1]
    assert {n: g["kind"] for n, g in gaps.items() if not n.startswith("probe:")} == {
        "shakespeare": "earlier",  # De Lange's gap
        "bios": "target",  # Guo's, on the loss
    }
    assert gaps["probe:bios/knowledge_accuracy"]["kind"] == "target"  # Guo's, on the task: probed during the stage
    # one baseline: the stage-start value of every gap is the upstream stage's last curve point
    curves = results["probe_curves"]["bios/knowledge_accuracy"]
    assert gaps["probe:bios/knowledge_accuracy"]["start"] == results["probes"]["stages"][0]["bios/knowledge_accuracy"]
    assert len([step for step, _ in curves if step > 40960 // 512]) > 1  # probed at evaluation points of stage 2
    probes = results["probes"]["stages"][-1]
    assert probes["bios/chance"] == 0.25 and {"bios/unseen_accuracy", "bios/seen/qa/accuracy"} <= set(probes)
    assert summary["knowledge_chance"] == 0.25 and "knowledge_unseen_accuracy" in summary
    assert len(results["probes"]["stages"]) == 2 and "bios/knowledge_accuracy" in results["probes"]["initial"]
    report = (tmp_path / "run" / "report.md").read_text()
    assert "## Stability gap" in report and "| downstream | " in report.split("## Probes")[1]
    assert "### Earlier domains and their probes (De Lange et al. 2023)" in report and "(Guo et al. 2024)" in report
    assert (tmp_path / "run" / "stability_gap.png").exists()
    _tokenizer_never_saw_a_later_domain(tmp_path / "run", tmp_path / "data")


def _tokenizer_never_saw_a_later_domain(run_dir, data_dir):
    """The tokenizer of a run is trained on its first stage's sources only: every piece BPE learnt occurs in
    Shakespeare, and words only the biographies hold stay split (they would be single tokens otherwise)."""
    from transformers import AutoTokenizer

    from pretrain.cpt.corpora import FIRST, LAST

    assert json.loads((run_dir / "tokenizer" / "trained_on.json").read_text())["sources"] == ["shakespeare"]
    plays = "\n".join(f.read_text() for f in sorted(data_dir.glob("cpt/shakespeare-chunks*/*.txt")))
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "tokenizer")
    pieces = [tokenizer.convert_tokens_to_string([t]) for t in tokenizer.get_vocab()]
    learnt = [p for p in pieces if len(p.strip()) >= 4 and p != "<|endoftext|>"]
    assert learnt and all(p in plays for p in learnt)
    bios_only = [w for w in FIRST + LAST if len(w) >= 6 and w not in plays]
    assert len(bios_only) >= 5
    assert all(len(tokenizer.encode(" " + w, add_special_tokens=False)) > 1 for w in bios_only)


def test_stages_must_use_known_sources_and_fitting_schedules(tmp_path):
    with pytest.raises(ConfigError, match="not in sources"):
        run_cpt(load_config("cpt", [f"run_dir={tmp_path / 'a'}", *TINY, "+stages.1.mix.wiki=1.0"]))
    with pytest.raises(ConfigError, match="warmup_steps"):
        run_cpt(load_config("cpt", [f"run_dir={tmp_path / 'b'}", *TINY, "schedule.warmup_steps=1000"]))
    swapped = ["+stages.0.mix.bios=2.0"]  # stage 0 now mostly bios: scored as bios, not as column 0
    with pytest.raises(ConfigError, match="R's column 0 is source 'shakespeare'"):  # stages no longer in source order
        run_cpt(load_config("cpt", [f"run_dir={tmp_path / 'c'}", *TINY, *swapped]))
    with pytest.raises(ConfigError, match="the first stage .upstream. has schedule hold"):
        run_cpt(load_config("cpt", [f"run_dir={tmp_path / 'd'}", *TINY, "schedule=hold", "schedule.warmup_steps=0"]))
    assert not any((tmp_path / name).exists() for name in "abcd")


def test_sigkill_then_resume_gives_the_same_final_weights(tmp_path):
    import os
    import signal
    import subprocess
    import time

    from safetensors.torch import load_file

    from tests.conftest import RETAIN

    env = {**os.environ, "RETAIN_DATA": str(tmp_path / "data")}
    args = [RETAIN, "cpt", *TINY]
    ref = subprocess.run([*args, f"run_dir={tmp_path / 'ref'}"], capture_output=True, text=True, env=env, timeout=600)
    assert ref.returncode == 0, ref.stderr[-2000:]
    proc = subprocess.Popen(
        [*args, f"run_dir={tmp_path / 'killed'}"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    pointer = tmp_path / "killed" / "checkpoints" / "latest.json"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if pointer.exists() and json.loads(pointer.read_text())["step"] >= 40:  # into the second stage
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    resumed = subprocess.run(
        [*args, f"run_dir={tmp_path / 'killed'}", "resume=true"], capture_output=True, text=True, env=env, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = (
        load_file(tmp_path / "ref" / "model" / "model.safetensors"),
        load_file(tmp_path / "killed" / "model" / "model.safetensors"),
    )
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    assert (
        json.loads((tmp_path / "ref" / "results.json").read_text())["matrix"]
        == json.loads((tmp_path / "killed" / "results.json").read_text())["matrix"]
    )


def test_cpt_with_ewc_pulls_the_second_stage_to_the_first(cli, tmp_path):
    """`retain cpt method=ewc debug=fast`: the Fisher of the upstream stage weights a penalty in the downstream one."""
    proc = cli("cpt", "method=ewc", "debug=fast", f"run_dir={tmp_path / 'run'}", "progress=false")
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["method"] == "ewc" and len(summary["stages"]) == 2
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    penalties = [r["train/penalty"] for r in records if "train/penalty" in r]
    trained = [r for r in records if "train/loss" in r]
    assert penalties[0] == 0.0 and max(penalties) > 0  # zero at the anchor, then rising as the weights move away
    assert len(penalties) < len(trained)  # none in the first stage: nothing to be pulled back to yet
