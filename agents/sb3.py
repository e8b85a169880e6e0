"""Stable-Baselines3 glue: build an algorithm from an ``agent/`` config, and move its full training
state in and out of retain's checkpoint format (safetensors weights + ``weights_only`` state).

SB3's own ``save``/``load`` pickle the model; retain keeps checkpoints code-free, so it stores the
same pieces SB3 does (``_get_torch_save_params``) as tensors, plus the counters and the replay
buffer that exact resumption needs.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3 import A2C, DQN, PPO, SAC, TD3
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.vec_env import VecEnv

from retain.checkpoint import check_shapes
from retain.device import resolve_device
from retain.errors import ConfigError

ALGORITHMS: dict[str, type[BaseAlgorithm]] = {"PPO": PPO, "A2C": A2C, "DQN": DQN, "SAC": SAC, "TD3": TD3}
CONTINUOUS_ONLY = {"SAC", "TD3"}
DISCRETE_ONLY = {"DQN"}


@dataclass
class AgentConfig:
    """An SB3 algorithm and its hyper-parameters (in the spirit of RL Zoo's hyperparams files)."""

    algo: str = "PPO"
    """PPO | A2C | DQN | SAC | TD3"""
    policy: str = "MlpPolicy"
    """SB3 policy class name, or a class by dotted path (agents.cw_sac.ContinualWorldPolicy)"""
    reset_optimizer: bool = False
    """clear the optimizers' state (Adam's moments) when a new task starts, as Continual World does"""
    task_id: bool = False
    """append each task's one-hot id to observations; a policy taking ``num_tasks`` (Continual World's
    multi-head one) is told their number"""
    n_envs: int = 8
    """parallel training environments"""
    vec_env: str = "dummy"
    """dummy (in-process) | subproc (one process per env)"""
    hyperparams: dict[str, Any] = field(default_factory=dict)
    """keyword arguments of the algorithm (learning_rate, n_steps, batch_size, ...); constants only"""
    policy_kwargs: dict[str, Any] = field(default_factory=dict)
    """keyword arguments of the policy (net_arch, activation_fn as a torch.nn name, ...)"""


def policy_class(cfg: AgentConfig) -> str | type:
    """SB3's name of a built-in policy, or the class a dotted path names."""
    if "." not in cfg.policy:
        return cfg.policy
    module, _, name = cfg.policy.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ConfigError(
            f"agent.policy={cfg.policy!r} cannot be imported ({e})",
            "use an SB3 policy name (MlpPolicy) or a module.Class path",
        ) from e


def _policy_kwargs(cfg: AgentConfig, num_tasks: int = 0) -> dict:
    kwargs = dict(cfg.policy_kwargs)
    policy = policy_class(cfg)
    if not isinstance(policy, str) and "num_tasks" in inspect.signature(policy).parameters:
        kwargs["num_tasks"] = num_tasks if cfg.task_id else 0
    if isinstance(kwargs.get("activation_fn"), str):
        name = kwargs["activation_fn"]
        if not hasattr(torch.nn, name):
            raise ConfigError(
                f"agent.policy_kwargs.activation_fn={name!r} is not a torch.nn module", "use e.g. ReLU or Tanh"
            )
        kwargs["activation_fn"] = getattr(torch.nn, name)
    if "net_arch" in kwargs and not isinstance(kwargs["net_arch"], list | dict):
        kwargs["net_arch"] = list(kwargs["net_arch"])
    return kwargs


def check_agent(cfg: AgentConfig, action_space: gym.Space, task: str) -> None:
    """Fail early, with one line, when the algorithm cannot act in the task's action space."""
    if cfg.algo not in ALGORITHMS:
        raise ConfigError(f"unknown agent.algo={cfg.algo!r}", f"use one of {', '.join(ALGORITHMS)}")
    if cfg.algo in CONTINUOUS_ONLY and not isinstance(action_space, gym.spaces.Box):
        raise ConfigError(
            f"agent {cfg.algo} needs continuous (Box) actions but task {task!r} has {action_space}",
            "use agent=ppo for discrete actions",
        )
    train_freq = cfg.hyperparams.get("train_freq", 1)
    if not isinstance(train_freq, int) and str(list(train_freq)[-1]).lower().startswith("episode"):
        raise ConfigError(
            f"agent.hyperparams.train_freq={list(train_freq)} counts episodes",
            "give it in steps (e.g. train_freq=1 or [50, step]): retain trains in chunks of whole steps",
        )
    if cfg.algo in DISCRETE_ONLY and not isinstance(action_space, gym.spaces.Discrete):
        raise ConfigError(
            f"agent {cfg.algo} needs Discrete actions but task {task!r} has {action_space}",
            "use agent=sac for continuous actions",
        )


def rollout_size(cfg: AgentConfig) -> int:
    """Environment steps one training iteration consumes: learn() always runs whole iterations."""
    if cfg.algo in ("PPO", "A2C"):
        default = 2048 if cfg.algo == "PPO" else 5
        return int(cfg.hyperparams.get("n_steps", default)) * cfg.n_envs
    train_freq = cfg.hyperparams.get("train_freq", 1)
    steps = train_freq if isinstance(train_freq, int) else int(train_freq[0])
    return steps * cfg.n_envs


def build_model(cfg: AgentConfig, env: VecEnv, seed: int, device: str = "auto", num_tasks: int = 0) -> BaseAlgorithm:
    """A fresh SB3 algorithm on ``env`` with the config's hyper-parameters (``num_tasks``: the length of the
    one-hot task id ending each observation when ``cfg.task_id``)."""
    check_agent(cfg, env.action_space, "?")
    try:
        return ALGORITHMS[cfg.algo](
            policy_class(cfg),
            env,
            seed=seed,
            device=resolve_device(device),
            verbose=0,
            policy_kwargs=_policy_kwargs(cfg, num_tasks),
            **cfg.hyperparams,
        )
    except TypeError as e:
        raise ConfigError(
            f"agent {cfg.algo} rejected a hyper-parameter ({e})",
            "check agent.hyperparams against the SB3 docs of the algorithm",
        ) from e


def _parts(model: BaseAlgorithm) -> tuple[list[str], list[str]]:
    state_dicts, variables = model._get_torch_save_params()
    return [n for n in state_dicts if n != "policy"], variables


def _attr(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def model_state(model: BaseAlgorithm) -> tuple[dict[str, torch.Tensor], dict, dict[str, torch.Tensor]]:
    """``(weights, state, arrays)``: policy tensors, everything else SB3 needs to continue training
    (optimizers, counters, episode stats, replay-buffer position), and the replay buffer contents."""
    optimizers, variables = _parts(model)
    state: dict[str, Any] = {
        "optimizers": {name: _attr(model, name).state_dict() for name in optimizers},
        "variables": {name: _attr(model, name).detach().cpu().clone() for name in variables},
        "num_timesteps": int(model.num_timesteps),
        "n_updates": int(getattr(model, "_n_updates", 0)),
        "episode_num": int(getattr(model, "_episode_num", 0)),
        "n_calls": int(getattr(model, "_n_calls", 0)),  # DQN: when its target network updates
        "ep_info_buffer": [dict(e) for e in (model.ep_info_buffer or [])],
        "ep_success_buffer": [float(s) for s in (model.ep_success_buffer or [])],
    }
    arrays: dict[str, torch.Tensor] = {}
    if isinstance(model, OffPolicyAlgorithm) and model.replay_buffer is not None:
        buffer = model.replay_buffer
        state["replay"] = {"pos": int(buffer.pos), "full": bool(buffer.full)}
        end = buffer.buffer_size if buffer.full else buffer.pos
        for name in ("observations", "next_observations", "actions", "rewards", "dones", "timeouts"):
            value = getattr(buffer, name, None)
            parts = value.items() if isinstance(value, dict) else [(None, value)]  # DictReplayBuffer: per key
            for key, array in parts:
                if isinstance(array, np.ndarray):
                    full = f"replay.{name}" + (f".{key}" if key is not None else "")
                    arrays[full] = torch.from_numpy(np.ascontiguousarray(array[:end]))
    return model.policy.state_dict(), state, arrays


def load_model_state(
    model: BaseAlgorithm, weights: dict[str, torch.Tensor], state: dict, arrays: dict[str, torch.Tensor], where: str
) -> None:
    """Restore what ``model_state`` saved into a model built with the same config."""
    check_shapes(model.policy.state_dict(), weights, where)
    model.policy.load_state_dict(weights)
    for name, opt_state in state["optimizers"].items():
        _attr(model, name).load_state_dict(opt_state)
    for name, value in state["variables"].items():
        _attr(model, name).data.copy_(value)
    model.num_timesteps = state["num_timesteps"]
    model._n_updates = state["n_updates"]
    if hasattr(model, "_episode_num"):
        model._episode_num = state["episode_num"]
    if hasattr(model, "_n_calls"):
        model._n_calls = state.get("n_calls", 0)
    from collections import deque

    model.ep_info_buffer = deque(state["ep_info_buffer"], maxlen=model._stats_window_size)
    model.ep_success_buffer = deque(state["ep_success_buffer"], maxlen=model._stats_window_size)
    if "replay" in state and isinstance(model, OffPolicyAlgorithm):
        buffer = model.replay_buffer
        buffer.pos, buffer.full = state["replay"]["pos"], state["replay"]["full"]
        for key, value in arrays.items():
            name, _, part = key.removeprefix("replay.").partition(".")
            target = getattr(buffer, name)
            target = target[part] if part else target
            target[: len(value)] = value.numpy()
