"""BabyAI episodes as text transcripts for `retain cpt`: one document per episode that says the mission, the
LID-Text view and the action of every step; deterministic and cached; a clear error for a missing or non-BabyAI
dataset; and a tiny `retain cpt data=shakespeare_babyai` run that scores both domains."""

import json
import math

import pytest

from envs.collect import run_collect
from envs.lid_text import ACTION_NAMES, describe_view
from envs.transitions import load_transitions
from pretrain.cpt.job import run_cpt
from pretrain.cpt.transcripts import MANIFEST, write_transcripts
from retain.config import load_config
from retain.errors import DatasetError
from tests.test_cpt_job import TINY

DATASET = "retain/babyai4/goto_local/expert-v0"
EPISODES = 8
# One level of babyai4 alone (the others are not needed here), as a user would collect it.
GOTO_LOCAL = "sequence.tasks=[{name: goto_local, env: {id: BabyAI-GoToLocal-v0, success_threshold: 0.05}}]"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """A RETAIN_DATA holding the goto_local dataset of `retain collect sequence=babyai4`, 8 episodes."""
    root = tmp_path_factory.mktemp("data")
    overrides = ["sequence=babyai4", GOTO_LOCAL, f"episodes={EPISODES}", "workers=1", "dataset.ref_episodes=1"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RETAIN_DATA", str(root))
        run_collect(load_config("collect", [*overrides, "progress=false", f"run_dir={root / 'collect'}"]))
    return root


@pytest.fixture(autouse=True)
def data_dir(data_root, monkeypatch):
    monkeypatch.setenv("RETAIN_DATA", str(data_root))
    return data_root


def test_one_transcript_per_episode_with_mission_views_and_actions(tmp_path):
    out = write_transcripts(DATASET, tmp_path / "a")
    files = sorted(out.glob("*.txt"))
    data = load_transitions(DATASET)
    assert len(files) == data.num_episodes == EPISODES
    for file, start, steps in zip(files, data.episode_starts, data.episode_lengths, strict=True):
        lines = file.read_text().splitlines()
        assert lines[0] == f"mission: {data.observations['mission'][start]}"
        assert lines[1] == f"view: {describe_view(data.observations['image'][start])}"
        actions = [ln.removeprefix("action: ") for ln in lines if ln.startswith("action: ")]
        assert actions == [ACTION_NAMES[a] for a in data.actions[start : start + steps]]
        assert sum(ln.startswith("view: ") for ln in lines) == steps
        assert lines[-1] == f"outcome: success after {steps} step{'s' if steps > 1 else ''}"  # the bot solves it
    assert json.loads((out / MANIFEST).read_text())["episodes"] == EPISODES


def test_transcripts_are_deterministic_and_cached(tmp_path):
    a, b = write_transcripts(DATASET, tmp_path / "a"), write_transcripts(DATASET, tmp_path / "b")
    assert [f.read_bytes() for f in sorted(a.glob("*.txt"))] == [f.read_bytes() for f in sorted(b.glob("*.txt"))]
    written = {f.name: f.stat().st_mtime_ns for f in a.iterdir()}
    assert write_transcripts(DATASET, a) == a  # a second call reuses the folder: nothing is rewritten
    assert {f.name: f.stat().st_mtime_ns for f in a.iterdir()} == written


def test_a_missing_or_non_babyai_dataset_is_a_dataset_error(tmp_path, monkeypatch):
    monkeypatch.setenv("RETAIN_DATA", str(tmp_path / "empty"))  # nothing collected yet
    with pytest.raises(DatasetError, match=r"not found.*retain collect sequence=babyai4"):
        write_transcripts(DATASET, tmp_path / "missing")
    with pytest.raises(DatasetError, match="retain collect sequence=babyai4"):  # before any run directory
        run_cpt(load_config("cpt", ["data=shakespeare_babyai", f"run_dir={tmp_path / 'run'}", *TINY]))
    assert not (tmp_path / "run").exists() and not (tmp_path / "missing").exists()
    pointmass = ["episodes=1", "workers=1", "dataset.ref_episodes=1", "progress=false"]
    run_collect(load_config("collect", [*pointmass, f"run_dir={tmp_path / 'collect'}"]))
    with pytest.raises(DatasetError, match="not a BabyAI dataset"):
        write_transcripts("retain/pointmass/expert-v0", tmp_path / "pointmass")
    assert not (tmp_path / "pointmass").exists()


def test_cpt_on_shakespeare_then_transcripts_scores_both_domains(tmp_path, data_root):
    budgets = ["stages.0.tokens=10240", "stages.1.tokens=10240", "eval.sparse_every=10", "train.checkpoint_every=0"]
    overrides = [o for o in TINY if not o.startswith(("stages.", "eval.sparse_every", "train.checkpoint_every"))]
    run_dir = tmp_path / "run"
    run_cpt(load_config("cpt", ["data=shakespeare_babyai", f"run_dir={run_dir}", *overrides, *budgets]))
    results = json.loads((run_dir / "results.json").read_text())
    assert results["tasks"] == ["shakespeare", "babyai"] and results["stages"] == ["upstream", "transcripts"]
    R = results["matrix"]
    assert all(math.isfinite(v) for row in R for v in row) and R[1][1] < results["initial"][1]
    assert (run_dir / "model" / "config.json").exists()
    assert any((data_root / "cpt" / "babyai").glob(f"*/{MANIFEST}"))  # rendered once under RETAIN_DATA/cpt
