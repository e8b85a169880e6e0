"""Online SB3 agents starting from a pretrained encoder (``learner.encoder.path``): frozen weights never move
(in the actor, the critic and the target critic), tuned ones do, pixels are scaled once, and the sequence
job takes the encoder end to end or refuses it in one line."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.vec_env import DummyVecEnv

from agents.encoders import WEIGHTS, Encoder, EncoderConfig, encoder_config, load_encoder, save_encoder
from agents.sb3_encoder import PretrainedEncoder, encoder_policy_kwargs
from envs.registry import make_env
from envs.spec import EnvSpec
from finetune.sb3_learner import _optimizers
from finetune.sequence import run_sequence
from retain.config import load_config
from retain.errors import ConfigError
from tests.conftest import error_lines

STATE = EnvSpec(id="retain/PointMass-v0", max_episode_steps=50)
PIXELS = EnvSpec(id="retain/PointMassPixels-v0", kwargs={"image_size": 64}, max_episode_steps=50)


def tiny_encoder(folder, spec: EnvSpec, **arch) -> dict[str, torch.Tensor]:
    """A randomly initialized encoder for ``spec``'s observations saved at ``folder``; returns its weights."""
    fields = EncoderConfig.__dataclass_fields__
    arch = {"hidden": [16], "latent": 8, "strides": [2, 1], "keypoints": 8, **arch}  # strides/keypoints: conv
    env = make_env(spec, monitor=False)()
    frame = env.observation_space if spec.frame_stack is None else env.unwrapped.observation_space
    env.close()
    torch.manual_seed(0)
    encoder = Encoder(encoder_config(EncoderConfig(**{k: v for k, v in arch.items() if k in fields}), frame))
    save_encoder(encoder, folder)
    return load_file(str(folder / WEIGHTS))


def extractors(model) -> list[PretrainedEncoder]:
    parts = (model.actor, model.critic, model.critic_target) if isinstance(model, SAC) else (model.policy,)
    found = [part.features_extractor for part in parts]
    assert all(isinstance(e, PretrainedEncoder) for e in found)
    return found


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def heads(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.policy.state_dict().items() if "features_extractor" not in k}


def make(algo, path, freeze: bool, spec: EnvSpec = STATE):
    env = DummyVecEnv([make_env(spec)])
    kwargs = encoder_policy_kwargs(path, freeze)
    if algo is PPO:
        return PPO("MlpPolicy", env, seed=0, policy_kwargs=kwargs, n_steps=64, batch_size=32, n_epochs=2)
    return SAC("MlpPolicy", env, seed=0, policy_kwargs=kwargs, learning_starts=50, buffer_size=500, batch_size=32)


@pytest.mark.parametrize("algo", [PPO, SAC])
def test_a_frozen_encoder_never_changes_while_the_heads_learn(tmp_path, algo):
    saved = tiny_encoder(tmp_path / "enc", STATE)
    model = make(algo, tmp_path / "enc", freeze=True)
    found = extractors(model)
    if algo is SAC:  # actor, critic and target critic each load their own copy of the pretrained weights
        assert len({id(e) for e in found}) == 3
    before = heads(model)
    optimized = {id(p) for opt in _optimizers(model) for g in opt.param_groups for p in g["params"]}
    model.learn(256)
    for extractor in found:
        assert same(extractor.encoder.state_dict(), saved)  # exactly: PPO's ortho init, Adam, Polyak: none touched it
        assert not extractor.encoder.training  # SB3's train mode does not reach a frozen encoder
        assert all(not t.requires_grad and id(t) not in optimized for t in extractor.encoder.state_dict().values())
    assert not [n for n, _ in model.policy.named_parameters() if "features_extractor" in n]
    after = heads(model)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert any(k.startswith(("action_net", "actor.mu")) for k in changed), changed
    if algo is SAC:
        assert any(k.startswith("critic.qf0") for k in changed) and any(k.startswith("critic_target.") for k in changed)


@pytest.mark.parametrize("algo", [PPO, SAC])
def test_a_trainable_encoder_starts_pretrained_and_learns(tmp_path, algo):
    saved = tiny_encoder(tmp_path / "enc", STATE)
    model = make(algo, tmp_path / "enc", freeze=False)
    actor = extractors(model)[0]
    assert same(actor.encoder.state_dict(), saved)  # PPO's orthogonal re-initialization left it alone
    params = {id(p) for p in actor.encoder.parameters()}
    optimizer = model.actor.optimizer if algo is SAC else model.policy.optimizer
    assert params <= {id(p) for g in optimizer.param_groups for p in g["params"]}
    model.learn(256)
    assert not same({k: v.detach() for k, v in actor.encoder.state_dict().items()}, saved)


def test_pixels_are_scaled_once_and_channel_last(tmp_path):
    tiny_encoder(tmp_path / "enc", PIXELS, channels=[8, 8])
    model = make(PPO, tmp_path / "enc", freeze=True, spec=PIXELS)
    assert model.observation_space.shape == (3, 64, 64)  # SB3 transposed the env (VecTransposeImage)
    assert not model.policy.normalize_images
    model.learn(64)
    env = make_env(PIXELS, monitor=False)()
    obs, _ = env.reset(seed=1)
    env.close()
    tensor, _ = model.policy.obs_to_tensor(obs)  # what predict() does with a raw H×W×C frame
    encoder = load_encoder(tmp_path / "enc")
    with torch.no_grad():
        features = model.policy.extract_features(tensor)
        reference = encoder(torch.as_tensor(obs[None]))
        scaled_twice = encoder(torch.as_tensor(obs[None]).float() / 255)
    torch.testing.assert_close(features, reference, rtol=0, atol=1e-6)
    assert (features - scaled_twice).abs().max() > 1e-5  # the comparison tells the two apart


def sequence_cfg(tmp_path, path, *overrides):
    return load_config(
        "sequence",
        [
            "learner=sb3",
            "agent=ppo",
            "agent.n_envs=2",
            "agent.hyperparams.n_steps=64",
            "agent.hyperparams.batch_size=64",
            "agent.hyperparams.n_epochs=1",
            "sequence.steps_per_task=128",
            "chunks_per_task=1",
            "eval.episodes=2",
            "eval.during=none",
            "progress=false",
            f"learner.encoder.path={path}",
            f"run_dir={tmp_path / 'run'}",
            *overrides,
        ],
    )


def test_the_sequence_job_runs_from_an_encoder(tmp_path):
    saved = tiny_encoder(tmp_path / "enc", STATE)
    summary = run_sequence(sequence_cfg(tmp_path, tmp_path / "enc", "sequence=single", "env=pointmass"))
    assert summary["steps"] == 128
    report = (tmp_path / "run" / "report.md").read_text()
    assert f"- encoder: `{(tmp_path / 'enc').resolve()}` (frozen; mlp, latent 8)" in report
    checkpoints = tmp_path / "run" / "checkpoints"
    latest = json.loads((checkpoints / "latest.json").read_text())["path"]
    weights = load_file(str(checkpoints / latest / "weights.safetensors"))
    prefix = "features_extractor.encoder."  # the checkpoint carries the frozen encoder, unchanged
    assert same({k.removeprefix(prefix): v for k, v in weights.items() if k.startswith(prefix)}, saved)


def test_a_sequence_stacks_frames_for_an_encoder_with_history(tmp_path):
    from types import SimpleNamespace

    from finetune.sequence import build_learner, build_tasks
    from retain.learner import StepHooks

    tiny_encoder(tmp_path / "enc", STATE, history=3)
    cfg = sequence_cfg(tmp_path, tmp_path / "enc", "sequence=pointmass4", "learner.encoder.freeze=false")
    learner = build_learner(cfg, build_tasks(cfg))
    try:
        assert [t.env.frame_stack for t in learner.task_list] == [3] * 4
        assert learner.model.observation_space.shape == (3, 4)
        learner.bind(lambda metrics, step: None, StepHooks(), SimpleNamespace(update=lambda n: None))
        learner.train_chunk(0, 0, 128)
        scores = learner.evaluate([0, 3], {})
        assert set(scores) == {0, 3}
        assert "(trainable; mlp, latent 8, 3 stacked frames)" in learner.describe()[-1]
    finally:
        learner.close()


def test_an_encoder_that_does_not_fit_is_refused_before_anything_is_written(tmp_path):
    tiny_encoder(tmp_path / "pixels", PIXELS, channels=[8, 8])
    with pytest.raises(ConfigError, match="do not fit the encoder"):
        run_sequence(sequence_cfg(tmp_path, tmp_path / "pixels", "sequence=single", "env=pointmass"))
    assert not (tmp_path / "run").exists()


def test_a_wrong_encoder_path_is_one_line_and_exit_code_2(cli, tmp_path):
    proc = cli(
        "sequence",
        "learner=sb3",
        "sequence=single",
        "env=pointmass",
        "agent=ppo",
        f"learner.encoder.path={tmp_path / 'missing'}",
        f"run_dir={tmp_path / 'run'}",
    )
    assert proc.returncode == 2 and len(error_lines(proc)) == 1, proc.stderr
    assert "no encoder at" in error_lines(proc)[0] and "retain pretrain" in error_lines(proc)[0]
    assert not (tmp_path / "run").exists()
