"""The `retain` command as a user meets it: help, jobs, overrides, and one-line errors (exit 2)."""

import json

import pytest

from tests.conftest import ROOT, TINY, error_lines


def test_help_lists_every_job(cli):
    proc = cli("--help")
    assert proc.returncode == 0
    for job in ("demo", "sequence", "collect", "cpt", "data", "report"):
        assert f"  {job} " in proc.stdout


def test_unknown_job(cli):
    proc = cli("trian")
    assert proc.returncode == 2
    assert error_lines(proc) == [
        "retain: error: unknown job 'trian' — choose one of demo, sequence, collect, pretrain, label, cpt, cpt-eval, residual, data, report "
        "(`retain --help` lists them)"
    ]


def test_job_help_and_cfg_work_as_in_hydra(cli):
    helped = cli("sequence", "--help")
    assert helped.returncode == 0 and "retain sequence: continual learning over a task sequence" in helped.stdout
    for group in ("sequence", "method", "learner"):  # every option of the group, in Hydra's order
        options = sorted(f.stem for f in (ROOT / "configs" / group).glob("*.yaml"))
        assert f"{group}: " + ", ".join(options) in helped.stdout
    shown = cli("sequence", "--cfg", "job", "seed=5")
    assert shown.returncode == 0 and "seed: 5" in shown.stdout


@pytest.mark.parametrize(
    "override, words",
    [("nosuchkey=1", "nosuchkey"), ("seed=abc", "seed"), ("agent=nosuchagent", "nosuchagent"), ("seed=[", "seed")],
)
def test_bad_override_is_one_line_exit_2_and_writes_nothing(cli, tmp_path, override, words):
    proc = cli("sequence", override)
    assert proc.returncode == 2, proc.stderr
    lines = error_lines(proc)
    assert (
        len(lines) == 1
        and lines[0].startswith(("retain: error: bad override", "retain: error: cannot parse"))
        and words in lines[0]
    )
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()


def test_unknown_env_id_is_one_line_and_leaves_no_run_dir(cli, tmp_path):
    proc = cli("sequence", "sequence=single", "env.id=NoSuchEnv-v9", "run_dir=out", *TINY)
    assert proc.returncode == 2
    lines = error_lines(proc)
    assert len(lines) == 1 and "unknown env id 'NoSuchEnv-v9'" in lines[0] and "CartPole-v1" in lines[0]
    assert not (tmp_path / "out").exists()


def test_debug_true_shows_the_traceback(cli):
    proc = cli("sequence", "sequence=single", "env.id=NoSuchEnv-v9", "debug=true", "run_dir=out", *TINY)
    assert proc.returncode == 2 and "Traceback" in proc.stderr


def test_metaworld_v2_name_names_the_v3_one(cli):
    proc = cli(
        "sequence", "sequence=single", "env=metaworld_reach", "env.kwargs.env_name=reach-v2", "agent=sac", "run_dir=out"
    )
    assert proc.returncode == 2 and "env_name=reach-v3" in error_lines(proc)[0]


def test_agent_that_cannot_act_in_the_space(cli):
    proc = cli("sequence", "sequence=single", "env=cartpole", "agent=sac", "run_dir=out")
    assert proc.returncode == 2 and "agent=ppo" in error_lines(proc)[0]


def test_existing_run_dir_needs_resume_and_resume_needs_a_run(cli, tmp_path):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "file").write_text("keep me")
    proc = cli("sequence", "run_dir=used", *TINY)
    assert proc.returncode == 2 and "resume=true" in error_lines(proc)[0]
    assert (tmp_path / "used" / "file").read_text() == "keep me"
    proc = cli("sequence", "run_dir=nothing_here", "resume=true", *TINY)
    assert proc.returncode == 2 and "holds no run" in error_lines(proc)[0]


def test_report_of_missing_run_dir(cli):
    proc = cli("report", "runs/does-not-exist")
    assert proc.returncode == 2 and error_lines(proc) == [
        "retain: error: run directory runs/does-not-exist does not exist — pass the path of a run directory (runs/<job>/<date>_<time>)"
    ]


def test_multirun_sweeps_seeds(cli, tmp_path):
    proc = cli(
        "sequence",
        "-m",
        "seed=0,1",
        "sequence.steps_per_task=1024",
        "chunks_per_task=1",
        "eval.during=none",
        "progress=false",
        "hydra.sweep.dir=sweep",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = sorted((tmp_path / "sweep").glob("*/results.json"))
    assert len(results) == 2
    seeds = sorted(json.loads((r.parent / "summary.json").read_text())["seed"] for r in results)
    assert seeds == [0, 1]


def test_joblib_launcher_runs_a_sweep(cli, tmp_path):
    proc = cli(
        "sequence",
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "seed=0,1",
        "sequence=single",
        "env=cartpole",
        "sequence.steps_per_task=2048",
        "chunks_per_task=1",
        "eval.during=none",
        "sequence.eval_episodes=2",
        "progress=false",
        "hydra.sweep.dir=sweep",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(list((tmp_path / "sweep").glob("*/results.json"))) == 2


def test_cuda_without_a_gpu_is_a_clear_error(cli):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    proc = cli("sequence", "device=cuda", "run_dir=out", *TINY)
    assert proc.returncode == 2 and "no CUDA device" in error_lines(proc)[0]


def test_text_observations_are_refused_by_sb3_agents(cli):
    proc = cli("sequence", "sequence=babyai4", "run_dir=out")
    assert proc.returncode == 2 and "observes text" in error_lines(proc)[0]
