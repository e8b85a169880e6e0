"""A multi-goal 2-D point mass whose goal is hidden context, and its PD expert.

As in Brandfonbrener et al. 2023 ("Inverse dynamics pretraining learns good representations for multitask
imitation"): every goal is a task, the observation (state or pixels) never shows the goal, so a policy can
only tell tasks apart by the demonstrations it was trained on. ``register()`` adds two gymnasium ids:

- ``retain/PointMass-v0``: observation (x, y, vx, vy), float32;
- ``retain/PointMassPixels-v0``: observation a (size, size, 3) uint8 image of the agent alone.

Both truncate after ``MAX_EPISODE_STEPS`` steps and never terminate.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from retain.errors import ConfigError

DT = 0.1
"""seconds per step"""
MAX_SPEED = 2.0
"""speed limit per axis; from standstill at one wall, full force reaches exactly 2.0 at the other"""
GOAL_RADIUS = 0.7
RANDOM_GOAL_HALF = 0.8
"""``random_goal=True`` draws each episode's goal uniformly in the square of this half-width"""
GOALS = GOAL_RADIUS * np.stack([np.cos(np.arange(8) * np.pi / 4), np.sin(np.arange(8) * np.pi / 4)], axis=1)
"""the 8 fixed goals of ``goal_index``: angles 0°, 45°, …, 315° on a circle of radius 0.7 (index 0 is (0.7, 0))"""
MAX_EPISODE_STEPS = 100
STATE_ID = "retain/PointMass-v0"
PIXELS_ID = "retain/PointMassPixels-v0"
IMAGE_SIZES = (64, 84)
AGENT_RADIUS = 0.1
"""radius of the drawn disc, in world units (3.2 px at 64 px)"""
BACKGROUND = np.array([235, 235, 235], dtype=np.float32)
AGENT_COLOR = np.array([200, 40, 40], dtype=np.float32)


class PointMassError(ConfigError, ValueError):
    """A bad constructor argument: a ``ValueError`` (as gymnasium envs raise) the CLI prints as one line."""


def _goal_from(goal: Any, goal_index: int | None) -> np.ndarray:
    """The goal as a float64 (2,) array in the box; ``goal_index`` 0 when neither is given."""
    if goal is not None and goal_index is not None:
        raise PointMassError(
            "give either goal or goal_index, not both", f"drop one of goal={goal!r}, goal_index={goal_index}"
        )
    if goal is None:
        index = 0 if goal_index is None else goal_index
        if not isinstance(index, int | np.integer) or not 0 <= index < len(GOALS):
            raise PointMassError(f"goal_index={index!r} is out of range", f"use an integer in 0..{len(GOALS) - 1}")
        return GOALS[index].copy()
    point = np.asarray(goal, dtype=np.float64)
    if point.shape != (2,) or not np.all(np.abs(point) <= 1.0):
        raise PointMassError(f"goal={goal!r} is not a point of the box [-1, 1]^2", "give two numbers in [-1, 1]")
    return point


class PointMassEnv(gym.Env):
    """A point mass in the box [-1, 1]^2 that should reach a goal it cannot see.

    Dynamics (a double integrator, semi-implicit Euler with ``DT`` = 0.1): the action a in [-1, 1]^2 is the
    acceleration; ``vel += DT * a``, clipped to ±``MAX_SPEED`` per axis; ``pos += DT * vel``. The walls are
    inelastic: a coordinate that leaves [-1, 1] is clipped back and its velocity set to 0.

    ``reset(seed=...)`` puts the mass at rest at a position uniform in the whole box. Each step's reward is
    ``-||pos - goal||``; ``info["success"]`` is ``||pos - goal|| < success_radius`` and ``info["goal"]`` holds
    the goal (for experts and logging; the observation never holds it). Episodes never terminate; the
    registered ids truncate them after ``MAX_EPISODE_STEPS``.

    Args:
        goal: the goal, a point of the box; or
        goal_index: one of ``GOALS`` (default 0 when neither is given).
        random_goal: a new goal every episode, uniform in the square [-RANDOM_GOAL_HALF, RANDOM_GOAL_HALF]^2 from
            the reset's seed (the paper's pretraining data: every episode its own hidden context).
        obs_type: "state" for (x, y, vx, vy) float32, "pixels" for an (image_size, image_size, 3) uint8 image
            of the agent as a disc (the goal is not drawn; velocity is not visible in one frame).
        image_size: 64 or 84, for pixel observations and ``render()``.
        success_radius: distance to the goal that counts as success.
        render_mode: None or "rgb_array" (``render()`` returns the pixel observation's image).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": int(1 / DT)}

    def __init__(
        self,
        goal: Any = None,
        goal_index: int | None = None,
        random_goal: bool = False,
        obs_type: str = "state",
        image_size: int = 64,
        success_radius: float = 0.1,
        render_mode: str | None = None,
    ):
        if random_goal and (goal is not None or goal_index is not None):
            raise PointMassError("random_goal draws the goal", "drop goal/goal_index, or random_goal")
        self.goal = _goal_from(goal, goal_index)
        self.random_goal = bool(random_goal)
        if obs_type not in ("state", "pixels"):
            raise PointMassError(f"unknown obs_type {obs_type!r}", "use obs_type='state' or 'pixels'")
        if image_size not in IMAGE_SIZES:
            raise PointMassError(f"image_size={image_size!r} is not supported", f"use one of {IMAGE_SIZES}")
        if not success_radius > 0:
            raise PointMassError(f"success_radius={success_radius!r} must be positive")
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise PointMassError(f"unknown render_mode {render_mode!r}", "use None or 'rgb_array'")
        self.obs_type, self.image_size = obs_type, image_size
        self.success_radius, self.render_mode = success_radius, render_mode
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        if obs_type == "state":
            high = np.array([1.0, 1.0, MAX_SPEED, MAX_SPEED], dtype=np.float32)
            self.observation_space = gym.spaces.Box(-high, high, dtype=np.float32)
        else:
            self.observation_space = gym.spaces.Box(0, 255, shape=(image_size, image_size, 3), dtype=np.uint8)
        # World coordinates of the pixel centres, computed once: column → x, row → y with +y up (row 0 at top).
        centres = (np.arange(image_size) + 0.5) / image_size * 2.0 - 1.0
        self._xs, self._ys = centres[None, :], -centres[:, None]
        self.pos = np.zeros(2)
        self.vel = np.zeros(2)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.pos = self.np_random.uniform(-1.0, 1.0, size=2)
        if self.random_goal:
            self.goal = self.np_random.uniform(-RANDOM_GOAL_HALF, RANDOM_GOAL_HALF, size=2)
        self.vel = np.zeros(2)
        return self._obs(), self._info()

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        accel = np.clip(np.asarray(action, dtype=np.float64).reshape(2), -1.0, 1.0)
        self.vel = np.clip(self.vel + DT * accel, -MAX_SPEED, MAX_SPEED)
        self.pos = self.pos + DT * self.vel
        outside = np.abs(self.pos) > 1.0
        self.pos[outside] = np.clip(self.pos[outside], -1.0, 1.0)
        self.vel[outside] = 0.0
        info = self._info()
        return self._obs(), -info["distance"], False, False, info

    def render(self) -> np.ndarray | None:
        """The scene as an (image_size, image_size, 3) uint8 image when render_mode is "rgb_array", else None."""
        return self._image() if self.render_mode == "rgb_array" else None

    def _obs(self) -> np.ndarray:
        if self.obs_type == "pixels":
            return self._image()
        return np.concatenate([self.pos, self.vel]).astype(np.float32)

    def _info(self) -> dict:
        distance = float(np.linalg.norm(self.pos - self.goal))
        return {"success": distance < self.success_radius, "distance": distance, "goal": self.goal.copy()}

    def _image(self) -> np.ndarray:
        """The agent as a disc on a plain background, its edge anti-aliased so sub-pixel positions show."""
        pixel = 2.0 / self.image_size  # world units per pixel
        dist = np.sqrt((self._xs - self.pos[0]) ** 2 + (self._ys - self.pos[1]) ** 2)
        cover = np.clip((AGENT_RADIUS - dist) / pixel + 0.5, 0.0, 1.0)[..., None]
        return np.rint(BACKGROUND + cover * (AGENT_COLOR - BACKGROUND)).astype(np.uint8)


def register() -> None:
    """Register ``retain/PointMass-v0`` (state) and ``retain/PointMassPixels-v0`` (pixels); safe to call again."""
    for env_id, obs_type in ((STATE_ID, "state"), (PIXELS_ID, "pixels")):
        if env_id not in gym.registry:
            gym.register(
                env_id,
                entry_point=f"{__name__}:PointMassEnv",
                kwargs={"obs_type": obs_type},
                max_episode_steps=MAX_EPISODE_STEPS,
            )


class PDExpert:
    """A PD controller towards the hidden goal: ``a = clip(KP (goal - pos) - KD vel + sigma N(0, 1), -1, 1)``.

    It reads the goal, position and velocity from ``env.unwrapped`` (pixel observations hold neither), so
    ``act`` ignores the observation. ``sigma`` adds Gaussian action noise from its own generator seeded by
    ``seed``. With sigma=0 it reaches every goal of ``GOALS`` from anywhere in the box in about 60 steps at most.
    """

    KP = 10.0
    KD = 1.0

    def __init__(self, sigma: float = 0.0, seed: int = 0):
        if sigma < 0:
            raise ValueError(f"need sigma >= 0, got sigma={sigma}")
        self.name = "pd:pointmass"
        self.sigma = sigma
        self.rng = np.random.default_rng(seed)
        self.env: PointMassEnv | None = None

    def seed_episode(self, seed: int) -> None:
        """Draw this episode's noise from its own seed (data then never depends on which worker ran it)."""
        self.rng = np.random.default_rng(seed)

    def reset(self, env: gym.Env, obs: Any, info: dict) -> None:
        self.env = env.unwrapped
        self.goal = np.array(self.env.goal, dtype=np.float64)

    def act(self, obs: Any, info: dict) -> np.ndarray:
        if self.env is None:
            raise RuntimeError("PDExpert.act before PDExpert.reset: call reset(env, obs, info) after env.reset")
        action = self.KP * (self.goal - self.env.pos) - self.KD * self.env.vel
        if self.sigma:
            action = action + self.sigma * self.rng.standard_normal(2)
        return np.clip(action, -1.0, 1.0).astype(np.float32)
