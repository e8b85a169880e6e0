"""Meta-World v3's scripted policies as retain experts, and the task splits that use them.

``MetaWorldExpert("hammer-v3")`` wraps the hand-written policy that Meta-World ships for the task
(``metaworld.policies``) in the ``Expert`` protocol of ``envs/experts.py``; wrap it in ``NoisyExpert``
for noisier data. ``CW10`` is Continual World's sequence and ``MT40_PRETRAIN`` the Learning-to-Modulate
pretraining split (MT50 minus CW10). ``benchmarks/metaworld_expert_success.py`` measures how often the
experts succeed.

metaworld is imported only when an expert is built or the task list is asked for, so the splits can be
read without it.
"""

from __future__ import annotations

import re
import warnings
from typing import Any

import gymnasium as gym
import numpy as np

OBS_DIM = 39
"""Meta-World v3's observation: hand xyz, gripper opening, two objects (xyz + quaternion), the previous
frame's 18 values, and the goal xyz; the scripted policies parse exactly this layout."""

CW10: tuple[str, ...] = (
    "hammer-v3",
    "push-wall-v3",
    "faucet-close-v3",
    "push-back-v3",
    "stick-pull-v3",
    "handle-press-side-v3",
    "push-v3",
    "shelf-place-v3",
    "window-close-v3",
    "peg-unplug-side-v3",
)
"""Continual World's ten tasks (Wołczyk et al. 2021) in its training order, as Meta-World v3 names."""

# Spelled out rather than computed so that the split can be read without importing metaworld;
# tests/test_metaworld_experts.py checks that it is exactly ALL_V3_ENVIRONMENTS minus CW10.
MT40_PRETRAIN: tuple[str, ...] = (
    "assembly-v3",
    "basketball-v3",
    "bin-picking-v3",
    "box-close-v3",
    "button-press-topdown-v3",
    "button-press-topdown-wall-v3",
    "button-press-v3",
    "button-press-wall-v3",
    "coffee-button-v3",
    "coffee-pull-v3",
    "coffee-push-v3",
    "dial-turn-v3",
    "disassemble-v3",
    "door-close-v3",
    "door-lock-v3",
    "door-open-v3",
    "door-unlock-v3",
    "hand-insert-v3",
    "drawer-close-v3",
    "drawer-open-v3",
    "faucet-open-v3",
    "handle-press-v3",
    "handle-pull-side-v3",
    "handle-pull-v3",
    "lever-pull-v3",
    "pick-place-wall-v3",
    "pick-out-of-hole-v3",
    "pick-place-v3",
    "plate-slide-v3",
    "plate-slide-side-v3",
    "plate-slide-back-v3",
    "plate-slide-back-side-v3",
    "peg-insert-side-v3",
    "soccer-v3",
    "stick-push-v3",
    "reach-v3",
    "reach-wall-v3",
    "sweep-into-v3",
    "sweep-v3",
    "window-open-v3",
)
"""The Learning-to-Modulate pretraining split (Schmied et al. 2023): the 50 MT50 tasks minus CW10, in
Meta-World's order."""


def metaworld_task_names() -> list[str]:
    """All Meta-World v3 task names (the 50 of MT50), in ``metaworld.ALL_V3_ENVIRONMENTS`` order."""
    import metaworld

    return list(metaworld.ALL_V3_ENVIRONMENTS)


def _policy_class(task: str) -> type:
    """The scripted policy class for ``task``; ``ValueError`` naming the task and the fix if there is none."""
    import metaworld
    import metaworld.policies as policies

    # ENV_POLICY_MAP is authoritative: class names do not always follow the task name
    # (peg-insert-side-v3 → SawyerPegInsertionSideV3Policy).
    mapping = getattr(policies, "ENV_POLICY_MAP", {})
    if task in mapping:
        return mapping[task]
    # Fall back on the naming convention (hammer-v3 → SawyerHammerV3Policy) for Meta-World versions
    # without the map.
    parsed = re.fullmatch(r"([a-z0-9-]+)-v(\d+)", task)
    if parsed:
        words = "".join(word.capitalize() for word in parsed.group(1).split("-"))
        cls = getattr(policies, f"Sawyer{words}V{parsed.group(2)}Policy", None)
        if isinstance(cls, type):
            return cls
    old = re.fullmatch(r"(.+)-v[12]", task)
    if old:
        raise ValueError(
            f"Meta-World task {task!r} is a v1/v2 name; this Meta-World serves v3 tasks: use {old.group(1)}-v3"
        )
    if task in metaworld.ALL_V3_ENVIRONMENTS:
        raise ValueError(
            f"Meta-World task {task!r} has no scripted policy in metaworld.policies; "
            "upgrade metaworld or pass your own Expert for it"
        )
    raise ValueError(
        f"unknown Meta-World task {task!r}: use a v3 task name such as hammer-v3 "
        "(envs.metaworld_experts.metaworld_task_names() lists them)"
    )


class MetaWorldExpert:
    """Meta-World's scripted policy for one v3 task, as an ``Expert``.

    ``act`` reads only the 39-d observation (hand, gripper, objects, goal), so the expert needs the goal
    to be observable, as it is in ``Meta-World/MT1``; in an env with pixel observations it reads the state
    behind the frame (``envs.registry.PixelObservation.state``). The policies keep no state between steps or
    episodes (none of metaworld 3.1.1's defines attributes).
    """

    def __init__(self, task: str):
        """Look up the policy of ``task`` (e.g. ``"hammer-v3"``); ``ValueError`` if it has none."""
        self.task = task
        self.policy = _policy_class(task)()
        self.name = f"metaworld:{task}"
        self.pixels = None

    def reset(self, env: gym.Env, obs: Any, info: dict) -> None:
        """Find the wrapper that holds the state behind pixel observations, if any (the policies are stateless)."""
        from envs.registry import PixelObservation

        self.pixels, inner = None, env
        while isinstance(inner, gym.Wrapper):
            if isinstance(inner, PixelObservation):
                self.pixels = inner
            inner = inner.env

    def act(self, obs: Any, info: dict) -> np.ndarray:
        """The policy's action for ``obs``, as float32 clipped to the action space [-1, 1]^4.

        ``ValueError`` if ``obs`` is not the 39-d Meta-World observation (e.g. one with a one-hot task id).
        """
        obs = np.asarray(obs, dtype=np.float64)
        if self.pixels is not None and obs.shape != (OBS_DIM,):  # a frame: act on the state behind it
            obs = np.asarray(self.pixels.state, dtype=np.float64)
        if obs.shape != (OBS_DIM,):
            raise ValueError(
                f"{self.name} expects one {OBS_DIM}-d Meta-World observation, got shape {obs.shape}; "
                "strip one-hot task ids and act in one (not vectorized) env"
            )
        # The policies' proportional controllers overshoot on purpose and warn each time
        # ("Constant(s) may be too high"); the env clips, and so do we, so the warning is noise.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            action = self.policy.get_action(obs)
        return np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0)

    def __repr__(self) -> str:
        return f"MetaWorldExpert({self.task!r})"
