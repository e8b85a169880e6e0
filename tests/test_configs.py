"""Every config in configs/ composes, and every group option instantiates (nothing can rot)."""

from pathlib import Path

import gymnasium as gym
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import get_class
from omegaconf import OmegaConf

from agents.sb3 import AgentConfig, build_model
from envs.evaluation import make_vec_env
from envs.registry import check_env_spec
from envs.spec import EnvSpec
from finetune.sequence import build_tasks
from retain.config import config_dir, load_config
from retain.errors import ConfigError
from retain.jobs import JOBS, register_job_schemas
from retain.methods import make_method
from retain.tracking import LoggerConfig, Tracker

CONFIGS = config_dir()
PRIMARY = [name for name, job in JOBS.items() if job.schema]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


@pytest.mark.parametrize("job", PRIMARY)
def test_primary_configs_compose_and_resolve(job):
    cfg = load_config(job)
    container = OmegaConf.to_container(cfg, resolve=True)
    assert container["seed"] == 0 and container["run_dir"].startswith(f"runs/{job}/")
    assert OmegaConf.missing_keys(cfg) == set()


def test_every_primary_config_is_a_job():
    assert sorted(p.stem for p in CONFIGS.glob("*.yaml")) == sorted(PRIMARY)


@pytest.mark.parametrize(
    "option",
    [pytest.param(o, marks=pytest.mark.slow) if o in ("mt40_pretrain", "cw20") else o for o in options("sequence")],
)
def test_sequence_options_build_their_tasks(option):
    overrides = [f"sequence={option}"] + (["env=cartpole"] if option == "single" else [])
    cfg = load_config("sequence", overrides)
    if option in ("babyai4", "lid_small", "lid_goto"):  # text observations: LM policies and collection, not SB3
        with pytest.raises(ConfigError, match="observes text"):
            build_tasks(cfg)
        cfg = load_config("sequence", [*overrides, "learner=lm"])
    tasks = build_tasks(cfg)  # checks every env id, shared spaces, and that the agent fits
    assert len(tasks) == (1 if cfg.sequence.from_env else len(cfg.sequence.tasks)) >= 1


@pytest.mark.parametrize("option", options("learner"))
def test_learner_options_are_typed_by_their_learner(option):
    from finetune.dt_learner import DtLearnerConfig
    from finetune.lm_learner import LmLearnerConfig
    from finetune.offline_learner import OfflineLearnerConfig
    from finetune.sb3_learner import Sb3LearnerConfig
    from finetune.sequence import _learner_config

    cfg = load_config("sequence", [f"learner={option}"])
    schemas = {"sb3": Sb3LearnerConfig, "offline": OfflineLearnerConfig, "dt": DtLearnerConfig, "lm": LmLearnerConfig}
    schema = schemas[option]
    assert isinstance(_learner_config(cfg, schema), schema)  # every key of the yaml is a field of the schema
    bad = load_config("sequence", [f"learner={option}", "+learner.no_such_key=1"])
    with pytest.raises(ConfigError, match="no_such_key"):
        _learner_config(bad, schema)


@pytest.mark.parametrize("option", options("env"))
def test_env_options_make_envs(option):
    cfg = load_config("sequence", [f"env={option}", "sequence=single"])
    assert build_tasks(cfg)[0].name == cfg.env.name


@pytest.mark.parametrize("option", options("agent"))
def test_agent_options_build_sb3_models(option):
    cfg = load_config("sequence", [f"agent={option}"])
    agent: AgentConfig = OmegaConf.to_object(cfg.agent)
    if "buffer_size" in agent.hyperparams:
        agent.hyperparams["buffer_size"] = 1000
    env_id = "Pendulum-v1" if agent.algo in ("SAC", "TD3") else "CartPole-v1"
    env = make_vec_env(EnvSpec(id=env_id, one_hot_task=[0, 1] if agent.task_id else None), agent.n_envs)
    model = build_model(agent, env, seed=0, device="cpu", num_tasks=1)
    assert type(model).__name__ == agent.algo
    env.close()


@pytest.mark.parametrize("option", options("method"))
def test_method_options_make_methods(option):
    cfg = load_config("sequence", [f"method={option}"])
    assert make_method(OmegaConf.to_object(cfg.method)).__class__.__name__.lower() == option


@pytest.mark.parametrize("option", [o for o in options("logger") if o != "wandb"])
def test_logger_options_open_trackers(option, tmp_path):
    cfg = load_config("sequence", [f"logger={option}"])
    tracker = Tracker(tmp_path, OmegaConf.to_object(cfg.logger))
    tracker.log({"train/x": 1.0}, 0)
    tracker.close()
    assert isinstance(OmegaConf.to_object(cfg.logger), LoggerConfig)


@pytest.mark.parametrize(
    "option", [o for o in options("experiment") if not o.startswith(("cpt_", "cw_", "l2m_", "idm_", "vpt_"))]
)
def test_experiment_presets_compose_and_build(
    option,
):  # cpt_*, cw_*, l2m_*, idm_*, vpt_*: test_cpt_presets, test_cw_presets, test_l2m_presets, test_idm_presets
    cfg = load_config("sequence", [f"experiment={option}"])
    assert build_tasks(cfg)


@pytest.mark.parametrize("option", options("debug"))
def test_debug_options_compose(option):
    # fast_<job> is that job's own `debug=fast`; the others are shared by every job
    job = option.split("_", 1)[1] if option.startswith("fast_") else "sequence"
    cfg = load_config(job, [f'debug="{option}"'])
    assert cfg.traceback == (option != "false")


def test_debug_fast_shrinks_a_cpt_run_through_the_cli_rule():
    from retain.cli import _normalise

    assert _normalise(["debug=fast"], "cpt") == ['debug="fast_cpt"']
    assert _normalise(["debug=fast"], "sequence") == ['debug="fast"']
    assert load_config("cpt", ['debug="fast_cpt"']).budget_scale == 0.02


@pytest.mark.parametrize("launcher", ["basic", "joblib", "submitit_local", "submitit_slurm"])
def test_launchers_compose(launcher):
    register_job_schemas()
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("sequence", [f"hydra/launcher={launcher}"], return_hydra_config=True)
    assert get_class(cfg.hydra.launcher._target_)


def test_debug_fast_shrinks_any_sequence():
    cfg = load_config("sequence", ["sequence=cw10", 'debug="fast"'])
    assert cfg.sequence.steps_per_task == 1000 and cfg.sequence.eval_episodes == 2


def test_sequences_pick_their_agent_and_command_line_wins():
    assert load_config("sequence", ["sequence=cw10"]).agent.algo == "SAC"
    assert load_config("sequence").agent.hyperparams.ent_coef == 0.1  # frozenlake_goals → ppo_gridworld
    assert load_config("sequence", ["sequence=cw10", "agent=sac"]).agent.policy_kwargs.net_arch == [256, 256]


def test_every_yaml_is_commented():
    for path in Path(CONFIGS).rglob("*.yaml"):
        assert path.read_text().lstrip().startswith("#"), f"{path} should open with a comment saying what it is"


def test_gym_ids_in_configs_exist():
    for path in Path(CONFIGS, "env").glob("*.yaml"):
        spec = OmegaConf.structured(EnvSpec(**OmegaConf.to_container(OmegaConf.load(path))))
        check_env_spec(OmegaConf.to_object(spec))  # registers the family first (retain/, Meta-World/, ...)
        assert gym.spec(spec.id)
