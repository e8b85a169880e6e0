"""Encoders (MLP, conv + spatial softmax, histories), the shareable encoder folder, every representation
objective's loss on a tiny batch, augmentation, and the pair data the trainer draws from."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from agents.encoders import (
    EncoderConfig,
    SpatialSoftmax,
    build_encoder,
    encoder_config,
    load_encoder,
    save_encoder,
    stack_history,
)
from envs import pointmass
from pretrain.objectives import OBJECTIVE_CLASSES, ObjectiveSettings
from pretrain.objectives.base import random_shift
from pretrain.pair_data import EpisodeArrays, PairData
from retain.errors import ConfigError

pointmass.register()
PIXELS = gym.spaces.Box(0, 255, (64, 64, 3), np.uint8)
STATES = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
TINY_CONV = EncoderConfig(channels=[4, 8], strides=[2, 2], keypoints=8, latent=16)
TINY_MLP = EncoderConfig(hidden=[32], latent=16)


def test_encoders_fit_their_observations_and_end_normalized():
    conv = build_encoder(TINY_CONV, PIXELS)
    assert conv.cfg.kind == "conv" and conv.cfg.frame_shape == [64, 64, 3]
    z = conv(torch.randint(0, 256, (5, 64, 64, 3), dtype=torch.uint8))
    assert z.shape == (5, 16) and z.abs().max() <= 1.0
    stacked = build_encoder(EncoderConfig(**{**TINY_CONV.__dict__, "history": 3}), PIXELS)
    assert stacked(torch.zeros(2, 3, 64, 64, 3, dtype=torch.uint8)).shape == (2, 16)
    assert stacked.body[0].in_channels == 9  # frames stacked along channels, one conv pass
    mlp = build_encoder(TINY_MLP, STATES)
    assert mlp.cfg.kind == "mlp" and mlp(torch.zeros(7, 4)).shape == (7, 16)
    with pytest.raises(ConfigError, match="conv encoder takes uint8"):
        encoder_config(EncoderConfig(kind="conv"), STATES)
    with pytest.raises(ConfigError, match="one stride per conv layer"):
        encoder_config(EncoderConfig(channels=[4, 8], strides=[2]), PIXELS)


def test_spatial_softmax_finds_where_a_map_is_hot():
    maps = torch.full((1, 1, 5, 5), -1e4)
    maps[0, 0, 4, 0] = 0.0  # bottom-left pixel
    assert SpatialSoftmax(5, 5)(maps).tolist() == [[-1.0, 1.0]]  # (x, y) on the [-1, 1] grid, rows downwards


def test_encoder_folder_round_trips_and_damage_is_one_clear_error(tmp_path):
    encoder = build_encoder(TINY_CONV, PIXELS)
    save_encoder(encoder, tmp_path / "enc", {"objective": "idm"}, {"idm_head": {"w": torch.ones(2)}})
    loaded = load_encoder(tmp_path / "enc")
    x = torch.randint(0, 256, (3, 64, 64, 3), dtype=torch.uint8)
    assert torch.equal(loaded(x), encoder(x)) and loaded.meta == {"objective": "idm"}
    assert (tmp_path / "enc" / "idm_head.safetensors").is_file()
    (tmp_path / "enc" / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ConfigError, match="cannot read"):
        load_encoder(tmp_path / "enc")
    with pytest.raises(ConfigError, match="no encoder at"):
        load_encoder(tmp_path / "nowhere")


def test_stacked_histories_match_gymnasiums_frame_stack():
    env = gym.wrappers.FrameStackObservation(gym.make(pointmass.STATE_ID), 3, padding_type="reset")
    obs, _ = env.reset(seed=1)
    stacked, frames = [obs], [obs[-1]]
    for _ in range(4):
        obs, *_ = env.step(env.action_space.sample())
        stacked.append(obs)
        frames.append(obs[-1])
    np.testing.assert_array_equal(stack_history(np.stack(frames), np.array([0]), 3), np.stack(stacked))


def test_random_shift_moves_whole_frames_by_at_most_pad():
    frames = torch.zeros(4, 2, 16, 16, 3, dtype=torch.uint8)
    frames[:, :, 8, 8] = 255  # one lit pixel per frame of each history
    torch.manual_seed(0)
    shifted = random_shift(frames, 2, [16, 16, 3])
    assert shifted.shape == frames.shape
    for sample in shifted:
        a, b = (torch.nonzero(sample[h, :, :, 0] == 255).tolist() for h in range(2))
        assert a == b and len(a) == 1  # the history's frames share one shift
        assert max(abs(a[0][0] - 8), abs(a[0][1] - 8)) <= 2


def _batch(space: gym.spaces.Box, history: int, n: int = 32) -> dict:
    """n real transitions of the point mass (states or 64-px frames), stacked ``history`` deep."""
    env = gym.wrappers.FrameStackObservation(
        gym.make(pointmass.PIXELS_ID if space.dtype == np.uint8 else pointmass.STATE_ID), history
    )
    obs, after, actions = [], [], []
    for seed in range(n):
        o, _ = env.reset(seed=seed)
        for _ in range(3):  # moving
            o, *_ = env.step(np.ones(2, np.float32))
        inner = env.unwrapped  # the PD expert's action towards the goal (a function of the state, as in real data)
        action = np.clip(10 * (inner.goal - inner.pos) - inner.vel, -1, 1).astype(np.float32)
        o2, *_ = env.step(action)
        obs.append(o if history > 1 else o[0])
        after.append(o2 if history > 1 else o2[0])
        actions.append(action)
    as_tensor = torch.as_tensor
    return {
        "obs": as_tensor(np.stack(obs)),
        "next": as_tensor(np.stack(after)),
        "action": as_tensor(np.stack(actions)),
        "task": torch.zeros(n, dtype=torch.long),
    }


def _objective(name: str, space: gym.spaces.Box, arch: EncoderConfig, history: int):
    torch.manual_seed(0)
    encoder = build_encoder(EncoderConfig(**{**arch.__dict__, "history": history}), space)
    settings = ObjectiveSettings(hidden=[32], dropout=0.0, augment_pad=2, temperature=0.1)
    return OBJECTIVE_CLASSES[name](encoder, 2, settings)


@pytest.mark.parametrize("name", sorted(OBJECTIVE_CLASSES))
def test_every_objective_lowers_its_loss_on_a_tiny_batch(name):
    model, batch = _objective(name, STATES, TINY_MLP, 1), _batch(STATES, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss, metrics = model(batch)
        assert loss.shape == () and torch.isfinite(loss) and all(torch.isfinite(v) for v in metrics.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0], losses[::10]


@pytest.mark.parametrize("name", sorted(OBJECTIVE_CLASSES))
def test_every_objective_trains_a_pixel_encoder_with_a_history(name):
    """On stacked 64-px frames each objective's gradient reaches the first conv layer; augmentation is on
    while training only (the same batch scores the same twice in eval mode)."""
    model, batch = _objective(name, PIXELS, TINY_CONV, 2), _batch(PIXELS, 2, n=8)
    loss, _ = model(batch)
    loss.backward()
    assert torch.isfinite(loss) and model.encoder.body[0].weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(batch)[0], model(batch)[0])


def _episodes(lengths: list[int]) -> EpisodeArrays:
    n = sum(lengths)
    starts = np.cumsum([0, *lengths[:-1]])
    obs = np.arange(n, dtype=np.float32)[:, None].repeat(2, 1)  # each row's observation is its index
    return EpisodeArrays(obs, np.arange(n, dtype=np.float32)[:, None] / n, starts)


def test_pairs_stay_inside_episodes_and_histories_repeat_the_first_frame():
    data = PairData([_episodes([5, 6, 4, 7]), _episodes([9, 9])], history=3, n_step=2, device=torch.device("cpu"))
    batch = data.batch(256, torch.Generator().manual_seed(0))
    now, after = batch["obs"][:, -1, 0], batch["next"][:, -1, 0]
    assert torch.equal(after - now, torch.full_like(now, 2.0))  # t + n, never across an episode's end
    assert set(batch["task"].tolist()) == {0, 1}
    start = data.frames(torch.tensor([0, 1]))  # rows 0 and 1 of task 0's first episode
    assert start[:, :, 0].tolist() == [[0, 0, 0], [0, 0, 1]]
    # the last episode of each task is held out: its rows are never drawn for training
    assert not set(data.train_rows[0].tolist()) & set(range(15, 22))
    assert data.held_out(0) and data.validation(0, 4, seed=0)["obs"][:, -1, 0].min() >= 15
