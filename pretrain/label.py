"""``retain label``: pseudo-label action-free observations with an inverse-dynamics model (VPT, Baker et al.
2022) and write them as a Minari dataset an offline learner trains on.

    retain collect env=pointmass episodes=200 dataset.action_free=true     # + observations_only.hdf5
    retain pretrain objective=idm sequence=single env=pointmass objective.max_episodes=10
    retain label idm=<run_dir>/model source=<data>/retain/pointmass/expert-v0/observations_only.hdf5 \\
        dataset.id=retain/pointmass/pseudo-v0

The IDM is non-causal, as VPT's: the action at t is predicted from the observations up to t (its history)
and the one n steps later. An episode of T+1 observations gives T+1-n labelled steps. The source is an
action-free file (``observations``, ``episode_starts``; what ``retain collect dataset.action_free=true``
writes) or any dataset whose actions are ignored. Where the true actions exist — the source's own, or the
dataset an action-free file was exported from — the job scores the labels against them (MSE on actions
scaled to [-1, 1], and R² per action dimension, averaged): the IDM's action accuracy, in ``summary.json``.
Rewards are unknown and written as 0 (behaviour cloning does not read them).

``loop.enabled=true`` runs VPT's whole loop instead (``finetune.vpt_loop``): IDM on a labelled fraction →
labels → BC on them, against BC on the labelled fraction alone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from agents.encoders import load_encoder, stack_history
from envs.spec import EnvSpec
from retain.config import RunConfig
from retain.errors import ConfigError, DatasetError
from retain.rundir import prepare_run_dir, write_summary


@dataclass
class LabelOutput:
    id: str | None = None
    """the pseudo-labelled dataset's id (namespace/name-v0)"""
    overwrite: bool = False


@dataclass
class VptLoopConfig:
    """``loop.enabled=true``: IDM on a labelled fraction → labels → BC, against BC on the fraction alone."""

    enabled: bool = False
    dataset: str | None = None
    """the labelled dataset (a Minari id written with dataset.action_free=true): its first ``fraction`` of
    episodes are the labelled data; its ``observations_only.hdf5`` is the action-free corpus"""
    fraction: float = 0.05
    """share of the dataset's episodes whose actions the IDM and the baseline see"""
    idm: list[str] = field(default_factory=list)
    """overrides of the IDM's ``retain pretrain objective=idm`` run (e.g. objective.updates=1000)"""
    bc: list[str] = field(default_factory=list)
    """overrides of both BC runs (``retain sequence learner=offline``)"""
    eval_episodes: int = 20
    """episodes each BC policy is scored on"""


@dataclass
class LabelJobConfig(RunConfig):
    """``retain label``: pseudo-labels from an inverse-dynamics model."""

    idm: str | None = None
    """the IDM: the model/ folder of `retain pretrain objective=idm`"""
    source: str | None = None
    """action-free observations (observations_only.hdf5), or a dataset whose actions are ignored"""
    dataset: LabelOutput = field(default_factory=LabelOutput)
    env: dict[str, Any] = field(default_factory=dict)
    """the env the observations come from, as an env spec ({id, kwargs, ...}); empty: the source's own"""
    max_episodes: int | None = None
    """label at most this many episodes"""
    batch_size: int = 4096
    """observations per IDM forward pass"""
    loop: VptLoopConfig = field(default_factory=VptLoopConfig)


@dataclass
class Source:
    episodes: list[np.ndarray]
    """each episode's T+1 observations"""
    actions: list[np.ndarray] | None
    """each episode's T true actions, where known"""
    env_spec: dict | None
    origin: str


def load_idm(folder: str):
    """The inverse-dynamics model at ``folder`` (encoder + head) and its action bounds."""
    from safetensors.torch import load_file

    from pretrain.objectives import ObjectiveSettings
    from pretrain.objectives.idm import InverseDynamics

    encoder = load_encoder(folder)
    meta = encoder.meta
    if meta.get("objective") != "idm" or not (Path(folder) / "idm_head.safetensors").is_file():
        raise ConfigError(
            f"{folder} holds a `{meta.get('objective')}` encoder without an inverse-dynamics head",
            "pass the model/ folder of `retain pretrain objective=idm`",
        )
    model = InverseDynamics(encoder, len(meta["action_low"]), ObjectiveSettings(**meta["settings"]))
    model.head.load_state_dict(load_file(str(Path(folder) / "idm_head.safetensors")))
    return model.eval(), np.asarray(meta["action_low"]), np.asarray(meta["action_high"])


def _episodes(observations: np.ndarray, starts: np.ndarray) -> list[np.ndarray]:
    ends = list(starts[1:]) + [len(observations)]
    return [observations[a:b] for a, b in zip(starts, ends, strict=True)]


def read_source(source: str, max_episodes: int | None) -> Source:
    """The episodes' observations (and true actions where known) of an action-free file or a dataset."""
    from envs.datasets import dataset_path, load_transitions

    path = Path(source).expanduser()
    if path.suffix in (".hdf5", ".h5") and path.is_file():
        import h5py

        with h5py.File(path, "r") as f:
            if "observations" not in f or "episode_starts" not in f:
                raise DatasetError(
                    f"{path} is not an action-free file (no observations/episode_starts)",
                    "pass observations_only.hdf5 from `retain collect dataset.action_free=true`, or a dataset",
                )
            if "actions" not in f:
                episodes = _episodes(f["observations"][()], f["episode_starts"][()])[:max_episodes]
                origin = f["metadata"].attrs.get("dataset_id") if "metadata" in f else None
                truth = load_transitions(origin) if origin and dataset_path(origin) else None
                actions = _true_actions(truth, episodes) if truth is not None else None
                return Source(episodes, actions, truth.env_spec if truth is not None else None, str(path))
    if dataset_path(source) is None:
        raise DatasetError(f"source {source} not found", "pass an observations_only.hdf5 file or a dataset id/folder")
    data = load_transitions(source)
    starts = np.asarray(data.episode_starts)[:max_episodes]
    ends = list(np.asarray(data.episode_starts)[1:]) + [len(data.actions)]
    obs, nxt, acts = np.asarray(data.observations), np.asarray(data.next_observations), np.asarray(data.actions)
    episodes = [np.concatenate([obs[a:b], nxt[b - 1 : b]]) for a, b in zip(starts, ends, strict=False)]
    actions = [acts[a:b] for a, b in zip(starts, ends, strict=False)]
    return Source(episodes, actions, data.env_spec, str(data.source))


def _true_actions(truth, episodes: list[np.ndarray]) -> list[np.ndarray] | None:
    """The actions of the dataset an action-free file came from, episode by episode (None if they differ)."""
    starts = list(np.asarray(truth.episode_starts)) + [len(truth.actions)]
    actions = [np.asarray(truth.actions)[a:b] for a, b in zip(starts[:-1], starts[1:], strict=True)]
    if len(actions) < len(episodes) or any(len(a) + 1 != len(e) for a, e in zip(actions, episodes, strict=False)):
        return None
    return actions[: len(episodes)]


@torch.no_grad()
def label_episode(model, obs: np.ndarray, low: np.ndarray, high: np.ndarray, batch: int) -> np.ndarray:
    """Actions (in the env's bounds) for the first T+1-n steps of an episode of T+1 observations."""
    cfg, n = model.encoder.cfg, model.settings.n_step
    inputs = stack_history(obs, np.array([0]), cfg.history) if cfg.history > 1 else obs
    inputs = torch.as_tensor(np.ascontiguousarray(inputs))
    steps = len(obs) - n
    out = []
    for i in range(0, steps, batch):
        j = min(i + batch, steps)
        out.append(model.predict(inputs[i:j], inputs[i + n : j + n]).numpy())
    unit = np.concatenate(out) if out else np.zeros((0, len(low)))
    return (low + (unit + 1.0) / 2.0 * (high - low)).astype(np.float32)


def accuracy(labels: list[np.ndarray], truth: list[np.ndarray], low: np.ndarray, high: np.ndarray) -> dict:
    """MSE of the labels on actions scaled to [-1, 1], and R² per dimension averaged (1: exact, 0: the mean)."""

    def unit(a):
        return 2.0 * (np.asarray(a, np.float64) - low) / (high - low) - 1.0

    pred = np.concatenate([unit(p) for p in labels])
    true = np.concatenate([unit(t[: len(p)]) for p, t in zip(labels, truth, strict=True)])
    mse = float(np.mean((pred - true) ** 2))
    r2 = 1.0 - np.mean((pred - true) ** 2, axis=0) / np.maximum(np.var(true, axis=0), 1e-12)
    return {"action_mse": mse, "action_r2": float(np.mean(r2))}


def _env_spec(cfg: DictConfig, source: Source) -> EnvSpec:
    if cfg.env:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(EnvSpec), cfg.env))
    if source.env_spec:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(EnvSpec), source.env_spec))
    raise ConfigError(f"{source.origin} names no env", "pass env=<option> (the env the observations come from)")


def run_label(cfg: DictConfig) -> dict:
    if cfg.loop.enabled:
        from finetune.vpt_loop import run_vpt_loop  # the loop trains BC: tuning's learner

        return run_vpt_loop(cfg)
    return label(cfg)


def label(cfg: DictConfig) -> dict:
    """Label ``cfg.source`` with ``cfg.idm`` into the dataset ``cfg.dataset.id``; returns the summary."""
    from envs.datasets import dataset_dir, episode_buffer, write_dataset
    from envs.registry import make_env

    started = time.perf_counter()
    cfg.run_dir = str(cfg.run_dir)
    torch.set_num_threads(cfg.threads)
    if not cfg.idm or not cfg.source or not cfg.dataset.id:
        raise ConfigError(
            "retain label needs idm=, source= and dataset.id=",
            "pass idm=<pretrain run>/model source=<observations_only.hdf5 or dataset> dataset.id=<namespace/name-v0>",
        )
    if cfg.batch_size < 1 or (cfg.max_episodes is not None and cfg.max_episodes < 1):
        raise ConfigError("batch_size and max_episodes must be >= 1", "fix the value (max_episodes=null: all)")
    if dataset_dir(cfg.dataset.id).exists() and not cfg.dataset.overwrite:
        raise DatasetError(f"dataset {cfg.dataset.id} already exists", "pass dataset.overwrite=true or another id")
    model, low, high = load_idm(cfg.idm)
    source = read_source(cfg.source, cfg.max_episodes)
    spec = _env_spec(cfg, source)
    env = make_env(spec, monitor=False)()
    obs_space, act_space = env.observation_space, env.action_space
    env.close()
    frame = tuple(model.encoder.cfg.frame_shape)
    if tuple(source.episodes[0].shape[1:]) != frame or tuple(obs_space.shape) != frame:
        raise DatasetError(
            f"observations {source.episodes[0].shape[1:]} (env {obs_space.shape}) do not fit the IDM's {frame}",
            "label observations of the kind the IDM was trained on",
        )
    if not isinstance(act_space, gym.spaces.Box) or act_space.shape != low.shape:
        raise ConfigError(f"env {spec.id} acts in {act_space}; the IDM predicts {low.shape}", "use the IDM's env")
    run_dir = prepare_run_dir(cfg)
    labels = [label_episode(model, e, low, high, cfg.batch_size) for e in source.episodes]
    n = model.settings.n_step
    buffers = [
        episode_buffer(
            i, None, list(e[: len(a) + 1]), list(a), [0.0] * len(a), [False] * len(a), [False] * (len(a) - 1) + [True]
        )
        for i, (e, a) in enumerate(zip(source.episodes, labels, strict=True))
        if len(a)
    ]
    if not buffers:
        raise DatasetError(f"no episode of {source.origin} is longer than n_step={n}", "label longer episodes")
    scores = accuracy(labels, source.actions, low, high) if source.actions is not None else {}
    path = write_dataset(
        cfg.dataset.id,
        buffers,
        observation_space=obs_space,
        action_space=act_space,
        env_spec=spec,
        expert=f"idm:{cfg.idm}",
        overwrite=cfg.dataset.overwrite,
        extra={"labelled_by": str(cfg.idm), "source": source.origin, **scores},
        description=f"{source.origin} pseudo-labelled by the inverse-dynamics model {cfg.idm}",
    )
    summary = {
        "job": "label",
        "dataset": cfg.dataset.id,
        "path": str(path),
        "episodes": len(buffers),
        "steps": int(sum(len(a) for a in labels)),
        "idm": str(cfg.idm),
        "source": source.origin,
        **scores,
        "seconds": time.perf_counter() - started,
    }
    write_summary(run_dir, summary)
    print(
        f"{cfg.dataset.id}: {len(buffers)} episodes labelled"
        + (f", action MSE {scores['action_mse']:.4f}, R² {scores['action_r2']:.3f}" if scores else "")
    )
    return summary
