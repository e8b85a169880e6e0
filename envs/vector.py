"""A vectorized env whose sub-envs are spread over a few worker processes.

SB3's ``SubprocVecEnv`` and gymnasium's ``AsyncVectorEnv`` start one process per env; evaluating
T tasks × K episodes that way starts 40 processes on a 2-core machine. ``ShardedVecEnv`` runs N
envs in W processes (each steps its shard in a loop) and keeps SB3's VecEnv interface: auto-reset,
``terminal_observation`` in infos, ``seed()`` applying to the next reset.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Sequence
from typing import Any

import cloudpickle
import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env.base_vec_env import VecEnv


def _worker(remote, payload: bytes) -> None:
    import cloudpickle
    import torch

    torch.set_num_threads(1)
    envs = [thunk() for thunk in cloudpickle.loads(payload)]
    while True:
        command, data = remote.recv()
        if command == "reset":
            remote.send([env.reset(seed=seed)[0] for env, seed in zip(envs, data)])
        elif command == "step":
            out = []
            for env, action in zip(envs, data):
                obs, reward, terminated, truncated, info = env.step(action)
                done = terminated or truncated
                if done:
                    info["terminal_observation"] = obs
                    info["TimeLimit.truncated"] = truncated and not terminated
                    obs, _ = env.reset()
                out.append((obs, reward, done, info))
            remote.send(out)
        elif command == "get_attr":
            remote.send([getattr(env.unwrapped, data) for env in envs])
        elif command == "close":
            for env in envs:
                env.close()
            remote.close()
            return


class ShardedVecEnv(VecEnv):
    """``len(thunks)`` envs stepped in ``workers`` processes (contiguous shards, in order)."""

    def __init__(self, thunks: Sequence[Callable[[], gym.Env]], workers: int = 2):
        probe = thunks[0]()
        observation_space, action_space = probe.observation_space, probe.action_space
        probe.close()
        super().__init__(len(thunks), observation_space, action_space)
        bounds = np.linspace(0, len(thunks), min(workers, len(thunks)) + 1).astype(int)
        self._shards = [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
        ctx = mp.get_context("forkserver")
        self._remotes, self._processes = [], []
        for start, end in self._shards:
            parent, child = ctx.Pipe()
            # env thunks are closures: cloudpickle carries them, as SB3's SubprocVecEnv does
            process = ctx.Process(target=_worker, args=(child, cloudpickle.dumps(list(thunks[start:end]))), daemon=True)
            process.start()
            child.close()
            self._remotes.append(parent)
            self._processes.append(process)
        self._seeds: list[int | None] = [None] * self.num_envs
        self.closed = False

    def seed(self, seed: int | None = None) -> Sequence[None]:
        """Seed env i with ``seed + i`` at the next reset (SB3's convention)."""
        self._seeds = [None if seed is None else seed + i for i in range(self.num_envs)]
        return [None] * self.num_envs

    def set_seeds(self, seeds: Sequence[int]) -> None:
        """Seed each env with its own value at the next reset."""
        self._seeds = list(seeds)

    def reset(self):
        for remote, (start, end) in zip(self._remotes, self._shards):
            remote.send(("reset", self._seeds[start:end]))
        obs = [o for remote in self._remotes for o in remote.recv()]
        self._seeds = [None] * self.num_envs
        return np.stack(obs)

    def step_async(self, actions: np.ndarray) -> None:
        for remote, (start, end) in zip(self._remotes, self._shards):
            remote.send(("step", actions[start:end]))

    def step_wait(self):
        results = [r for remote in self._remotes for r in remote.recv()]
        obs, rewards, dones, infos = zip(*results)
        return np.stack(obs), np.asarray(rewards, dtype=np.float32), np.asarray(dones, dtype=bool), list(infos)

    def close(self) -> None:
        if self.closed:
            return
        for remote in self._remotes:
            remote.send(("close", None))
        for process in self._processes:
            process.join(timeout=10)
        self.closed = True

    def get_attr(self, attr_name: str, indices=None) -> list[Any]:
        for remote in self._remotes:
            remote.send(("get_attr", attr_name))
        values = [v for remote in self._remotes for v in remote.recv()]
        return [values[i] for i in self._get_indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices=None) -> None:
        raise NotImplementedError("ShardedVecEnv does not set env attributes")

    def env_method(self, method_name: str, *method_args, indices=None, **method_kwargs) -> list[Any]:
        raise NotImplementedError("ShardedVecEnv does not call env methods")

    def env_is_wrapped(self, wrapper_class, indices=None) -> list[bool]:
        return [False] * len(self._get_indices(indices))
