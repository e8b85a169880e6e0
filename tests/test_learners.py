"""Every learner × every method on the one continual runner, for a tiny budget: the run-directory contract,
determinism and exact resume (a run stopped mid-chunk and resumed ends as an uninterrupted one), a different
seed giving a different run, and the method's step hooks reaching each learner's inner step (SB3 through its
optimizer's step pre-hooks)."""

from __future__ import annotations

import json
import signal
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from finetune.sequence import build_learner, build_tasks, run_sequence
from pretrain.cpt.job import run_cpt
from retain.config import load_config
from retain.methods import METHODS
from retain.methods.base import Method, MethodConfig
from retain.runner import Runner
from tests.conftest import TINY, collect_pointmass, error_lines, run_cli, sigkill_after_checkpoint
from tests.test_cpt_job import TINY as CPT_TINY

OFFLINE = [
    "sequence=pointmass4",
    "learner=offline",
    "learner.updates_per_task=40",
    "learner.batch_size=64",
    "learner.policy.hidden=[32,32]",
    "learner.log_every=10",
    "chunks_per_task=2",
    "sequence.eval_episodes=2",
    "progress=false",
]
DT = [
    "sequence=pointmass4",
    "learner=dt",
    "learner.updates_per_task=20",
    "learner.batch_size=16",
    "learner.model.n_embd=16",
    "learner.dataset.qualities=[expert]",
    "learner.log_every=10",
    "chunks_per_task=2",
    "sequence.eval_episodes=2",
    "progress=false",
]
CPT = [o for o in CPT_TINY if not o.startswith(("stages.", "train.checkpoint_every"))] + [
    "stages.0.tokens=20480",
    "stages.1.tokens=10240",
    "train.checkpoint_every=10",
    "bios.probes=0",
]
# (job, overrides, units in the whole run, where to stop it: mid-chunk, after a mid-task checkpoint)
LEARNERS = {
    "sb3": ("sequence", TINY, 3 * 2048, 3500),
    "offline": ("sequence", OFFLINE, 4 * 40, 70),
    "dt": ("sequence", DT, 4 * 20, 35),
    "cpt": ("cpt", CPT, 40 + 20, 47),
}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """RETAIN_DATA with the point mass datasets `retain collect sequence=pointmass4` writes (8 episodes each)."""
    return collect_pointmass(tmp_path_factory.mktemp("data"), episodes=8, ref_episodes=2)


@pytest.fixture(autouse=True)
def _data(data_root, monkeypatch):
    monkeypatch.setenv("RETAIN_DATA", str(data_root))


def _run(learner: str, run_dir, *overrides: str, stop_after: int | None = None) -> dict:
    job, base, _, _ = LEARNERS[learner]
    cfg = load_config(job, [*base, f"run_dir={run_dir}", *overrides])
    return (run_cpt if job == "cpt" else run_sequence)(cfg, stop_after=stop_after)


def _scores(run_dir) -> tuple:
    results = json.loads((run_dir / "results.json").read_text())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [{k: v for k, v in r.items() if k == "step" or k.startswith("eval/")} for r in records]
    return results["matrix"], results["initial"], [e for e in evals if len(e) > 1]


# the continual-learning methods at tiny sizes (their defaults are for 1M-step SAC runs)
SMALL = {
    "l2": ["method=l2", "method.coef=1.0"],
    "ewc": ["method=ewc", "method.coef=1.0", "method.batches=2", "method.batch_size=8"],
    "mas": ["method=mas", "method.coef=1.0", "method.batches=2", "method.batch_size=8"],
    "replay": ["method=replay", "method.share=0.25", "method.memory_per_task=32"],
    "agem": ["method=agem", "method.memory_per_task=64", "method.batch_size=16"],
    "packnet": ["method=packnet", "method.retrain_steps=5"],
}
COMBINATIONS = [(learner, [f"method={m}"]) for learner in LEARNERS for m in ("finetune", "reset", "multitask")]
COMBINATIONS += [("offline", overrides) for overrides in SMALL.values()]
COMBINATIONS += [("sb3", SMALL["agem"]), ("sb3", SMALL["packnet"]), ("cpt", SMALL["ewc"])]  # PPO: on its rollouts
COMBINATIONS += [("dt", SMALL[m]) for m in ("ewc", "replay")]
# the rest of the Decision Transformer's combinations run with `make test-all` (the suite's time budget)
SLOW = pytest.mark.slow
COMBINATIONS = [
    pytest.param(learner, m, marks=SLOW)
    if learner == "dt" and m[0] in ("method=reset", "method=multitask")
    else (learner, m)
    for learner, m in COMBINATIONS
]
COMBINATIONS += [pytest.param("dt", SMALL[m], marks=SLOW) for m in ("mas", "agem", "packnet")]


@pytest.mark.parametrize(("learner", "method"), COMBINATIONS, ids=lambda v: v if isinstance(v, str) else v[0])
def test_stopped_and_resumed_runs_end_as_an_uninterrupted_one(learner, method, tmp_path):
    _, _, total, stop = LEARNERS[learner]
    summary = _run(learner, tmp_path / "a", *method)
    assert summary["method"] == method[0].split("=")[1] and summary["steps"] == total
    results = json.loads((tmp_path / "a" / "results.json").read_text())
    T = len(results["matrix"])
    assert T >= 2 and all(len(row) == len(results["tasks"]) for row in results["matrix"])
    assert len(results["stability_gap"]) == T and (tmp_path / "a" / "report.md").exists()

    assert _run(learner, tmp_path / "b", *method, stop_after=stop) == {"stopped": True}
    assert not (tmp_path / "b" / "results.json").exists()
    _run(learner, tmp_path / "b", *method, "resume=true")
    assert _scores(tmp_path / "b") == _scores(tmp_path / "a")  # R, initial and every logged evaluation


@pytest.mark.parametrize("learner", list(LEARNERS))
def test_the_seed_changes_the_run(learner, tmp_path):
    _run(learner, tmp_path / "a")
    _run(learner, tmp_path / "b", "seed=1")
    assert _scores(tmp_path / "a")[2] != _scores(tmp_path / "b")[2]


def test_multitask_keeps_what_finetuning_forgets_offline(tmp_path):
    """The point mass's goals are hidden context: a policy told the task id learns each; fine-tuning
    overwrites the earlier goals, joint training keeps them."""
    budget = ["learner.updates_per_task=400", "chunks_per_task=1", "eval.during=none", "sequence.eval_episodes=4"]
    finetune = _run("offline", tmp_path / "ft", "method=finetune", *budget)
    multitask = _run("offline", tmp_path / "mt", "method=multitask", *budget)
    assert finetune["forgetting"] >= 0.5 and finetune["plasticity"] >= 0.75, finetune
    assert multitask["forgetting"] <= 0.25 and multitask["average"] >= 0.75, multitask


@dataclass
class _Config(MethodConfig):
    name: str = "probe"
    mode: str = "freeze"


class _Probe(Method):
    """A test method: ``freeze`` zeroes every gradient before each step; ``shrink`` adds a huge L2 penalty."""

    Config = _Config

    def penalty(self, learner):
        if self.cfg.mode != "shrink":
            return None
        return 1e3 * sum((p**2).sum() for _, p in learner.named_parameters() if p.requires_grad)

    def transform_gradients(self, learner):
        if self.cfg.mode == "freeze":
            for _, p in learner.named_parameters():
                if p.grad is not None:
                    p.grad.zero_()


@pytest.mark.parametrize("mode", ["freeze", "shrink"])
@pytest.mark.parametrize("learner", ["sb3", "offline"])
def test_method_step_hooks_reach_the_inner_step(learner, mode, tmp_path, monkeypatch):
    monkeypatch.setitem(METHODS, "probe", _Probe)
    job, base, _, _ = LEARNERS[learner]
    cfg = load_config(job, [*base, f"run_dir={tmp_path}", "chunks_per_task=1", "eval.during=none"])
    learner_ = build_learner(cfg, build_tasks(cfg)[:1])
    before = {k: v.clone() for k, v in learner_.named_parameters()}
    from retain.methods import make_method

    Runner(learner_, make_method({"name": "probe", "mode": mode}), tmp_path).run()
    after = dict(learner_.named_parameters())
    if mode == "freeze":
        assert all(torch.equal(before[k], after[k]) for k in before)
    else:
        # Adam moves each weight by at most ~lr per step, so a huge pull to zero shows as a steady shrink
        norm = lambda ws: float(sum((w.detach() ** 2).sum() for w in ws.values()))  # noqa: E731
        assert norm(after) < 0.9 * norm(before)
    learner_.close()


def test_cpt_step_hooks_reach_the_inner_step(tmp_path, monkeypatch):
    monkeypatch.setitem(METHODS, "probe", _Probe)
    import pretrain.cpt.trainer as trainer

    seen = []
    original = trainer.CptLearner.train_chunk

    def spy(self, task, chunk, units):
        before = {k: v.detach().clone() for k, v in self.model.named_parameters()}
        original(self, task, chunk, units)
        seen.append(all(torch.equal(before[k], p) for k, p in self.model.named_parameters()))

    monkeypatch.setattr(trainer.CptLearner, "train_chunk", spy)
    _run("cpt", tmp_path / "run", "+method.mode=freeze", "method.name=probe", "train.weight_decay=0.0")
    assert seen and all(seen)  # every chunk trained with zero gradients left every weight as it was


def test_a_missing_dataset_names_the_collect_command(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("RETAIN_DATA", str(tmp_path / "empty"))
    proc = cli("sequence", "sequence=pointmass4", "learner=offline", "run_dir=out")
    assert proc.returncode == 2 and not (tmp_path / "out").exists()
    assert error_lines(proc) == [
        "retain: error: task 'goal0': dataset retain/pointmass4/goal0/expert-v0 not found — make it with "
        "`retain collect sequence=pointmass4 dataset.quality=expert`"
    ]


def test_offline_learner_trains_from_a_d4rl_file(tmp_path):
    """A D4RL-layout file (here: the point mass expert's data written by write_d4rl) trains a one-task run."""
    from envs.d4rl import write_d4rl
    from envs.transitions import load_transitions

    data = load_transitions("retain/pointmass4/goal0/expert-v0")
    ends = np.zeros(len(data.actions), dtype=bool)
    ends[np.asarray(data.episode_starts[1:]) - 1] = True
    ends[-1] = True
    path = write_d4rl(
        tmp_path / "pointmass-goal0-expert.hdf5",
        data.observations,
        data.actions,
        data.rewards,
        terminals=np.zeros_like(ends),
        timeouts=ends,
        next_observations=data.next_observations,
    )
    summary = run_sequence(
        load_config(
            "sequence",
            [
                *OFFLINE[1:],
                "sequence=single",
                "env=pointmass",
                f"learner.dataset.path={path}",
                "learner.updates_per_task=300",
                "chunks_per_task=1",
                f"run_dir={tmp_path / 'run'}",
            ],
        )
    )
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert summary["datasets"] == [str(path)] and summary["transitions"] == len(data.actions)
    assert results["matrix"][0][0] > results["initial"][0]  # behaviour cloning learned the goal from the file


def test_sigkill_then_resume_offline(tmp_path):
    """The offline learner killed by SIGKILL after a mid-task checkpoint resumes to the uninterrupted result."""
    budget = [*OFFLINE, "learner.updates_per_task=200", "chunks_per_task=4", "eval.during=current"]
    reference = run_cli("sequence", *budget, f"run_dir={tmp_path / 'reference'}", cwd=tmp_path)
    assert reference.returncode == 0, error_lines(reference)
    killed = tmp_path / "killed"
    returncode = sigkill_after_checkpoint(["sequence", *budget], killed, min_step=250)  # inside the second task
    assert returncode == -signal.SIGKILL, "the run finished before it could be killed"
    resumed = run_cli("sequence", *budget, f"run_dir={killed}", "resume=true", cwd=tmp_path)
    assert resumed.returncode == 0, error_lines(resumed)
    assert _scores(killed) == _scores(tmp_path / "reference")


def test_babyai_missions_reach_the_policy_as_words(tmp_path, monkeypatch):
    """Dict observations with a text mission (BabyAI): the bot's demos train a policy whose encoder embeds the
    mission's hashed words, and it is evaluated in envs whose missions are encoded the same way."""
    from envs.collect import run_collect
    from finetune.offline_learner import OfflineLearner

    monkeypatch.setenv("RETAIN_DATA", str(tmp_path / "data"))
    run_collect(
        load_config(
            "collect",
            [
                "sequence=babyai4",
                "episodes=3",
                "dataset.ref_episodes=1",
                "workers=1",
                "progress=false",
                f"run_dir={tmp_path / 'collect'}",
            ],
        )
    )
    overrides = [
        "sequence=babyai4",
        "learner=offline",
        "learner.updates_per_task=20",
        "chunks_per_task=1",
        "sequence.eval_episodes=2",
        "eval.during=none",
        f"run_dir={tmp_path / 'run'}",
    ]
    cfg = load_config("sequence", overrides)
    learner = build_learner(cfg, build_tasks(cfg)[:2])
    assert isinstance(learner, OfflineLearner)
    assert type(learner.policy.encoder.parts["mission"]).__name__ == "TokenEncoder"
    results = Runner(learner, METHODS["finetune"](MethodConfig()), tmp_path / "run").run()
    learner.close()
    assert len(results["matrix"]) == 2 and all(0.0 <= v <= 1.0 for row in results["matrix"] for v in row)


def test_extra_evaluation_sets_give_a_retention_matrix(tmp_path):
    """Tasks never trained in the sequence (two goals between the sequence's four) are scored before it and
    after every task: a T × K matrix in results.json with retention metrics, and a section of the report."""
    held_out = (
        "+extra_eval.held_out=["
        + ",".join(
            f"{{name: goal{k}, env: {{id: 'retain/PointMass-v0', kwargs: {{goal_index: {k}}}}}}}" for k in (1, 3)
        )
        + "]"
    )
    summary = _run("offline", tmp_path, held_out)
    results = json.loads((tmp_path / "results.json").read_text())
    held = results["extra"]["held_out"]
    assert held["tasks"] == ["goal1", "goal3"] and len(held["matrix"]) == 4 and len(held["initial"]) == 2
    metrics = held["metrics"]
    assert metrics["forgetting"] == pytest.approx(sum(a - b for a, b in zip(held["initial"], held["matrix"][-1])) / 2)
    assert "held_out/forgetting" in summary
    assert "## Extra evaluation set `held_out`" in (tmp_path / "report.md").read_text()
    logged = "".join((tmp_path / "metrics.jsonl").read_text().splitlines())
    assert "eval/held_out/goal1/success" in logged


def test_a_kept_optimizer_still_runs_each_tasks_schedule(tmp_path):
    cfg = load_config(
        "sequence",
        [*OFFLINE, "learner.reset_optimizer=false", "learner.schedule.name=cosine", f"run_dir={tmp_path}"],
    )
    learner = build_learner(cfg, build_tasks(cfg))
    learner.prepare_task(0, [0])
    learner.train_chunk(0, 0, 40)
    assert learner.scheduler.get_last_lr()[0] < 0.2 * cfg.learner.lr  # decayed by task 0's end
    moments = {p: s["exp_avg"].clone() for p, s in learner.optimizer.state.items()}
    learner.prepare_task(1, [1])
    assert learner.scheduler.get_last_lr()[0] == pytest.approx(cfg.learner.lr)  # task 1's own schedule, from its peak
    assert moments and all(torch.equal(learner.optimizer.state[p]["exp_avg"], m) for p, m in moments.items())
    learner.close()
