"""BabyAI (and MiniGrid) levels with the mission as plain text, and the BabyAI bot as an expert.

MiniGrid's observation holds the mission in a ``MissionSpace``, which is not a standard gymnasium
space: Minari and other tools cannot store or serialize it. ``TextMissionWrapper`` replaces it by
``gymnasium.spaces.Text``, so observations are ``{"image", "direction", "mission"}`` in a Dict of
standard spaces. ``BabyAIBotExpert`` drives minigrid's ``BabyAIBot``, which solves the levels of
the BabyAI paper by planning on the true grid.

BabyAI's level generator prints "Sampling rejected: ..." to stdout whenever it rejects a sampled
layout (6 to 29 lines per 100 resets of the babyai4 levels), from ``RoomGridLevel._gen_grid``
inside ``env.reset``; ``TextMissionWrapper.reset`` drops those lines, so a collect loop prints nothing.
The bot itself prints nothing.
"""

from __future__ import annotations

import contextlib
import io
import string
import sys
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from retain.errors import ConfigError

MISSION_CHARSET = string.ascii_letters + string.digits + " ,.;:'!?-"
"""Characters a mission may hold. BabyAI missions use lowercase letters, space and comma
("go to the red ball, then open a door"); MiniGrid's add nothing else. Upper case, digits and
common punctuation are included so that hand-written or future missions fit too."""

MISSION_MAX_LENGTH = 512
"""Longest mission a Text space admits. The longest BabyAI surface form is two PutNext pairs joined
by "and" and "after you", each object "the purple object in front of you" (33 characters):
2 * (79 + 5 + 79) + 11 = 337 characters (BossLevel / MiniBossLevel). Seen in practice: 166.
512 is the next power of two, so no generated mission is ever cut or rejected."""

# What BabyAI's level generator prints while it rejects layouts (roomgrid_level.py, _gen_grid).
_GENERATION_NOTES = ("Sampling rejected:", "Timeout during mission generation:")


def _import_minigrid() -> None:
    try:
        import minigrid  # noqa: F401  (registers the MiniGrid-* and BabyAI-* ids)
    except ImportError as e:
        raise ConfigError("BabyAI envs need the minigrid package", "pip install minigrid") from e


class TextMissionWrapper(gym.ObservationWrapper):
    """A MiniGrid/BabyAI env whose observation is a Dict of standard spaces, the mission as ``spaces.Text``.

    Every observation is a member of ``observation_space``; a mission that would not be (too long,
    or a character outside ``MISSION_CHARSET``) raises ``ValueError`` instead of being stored silently.
    ``reset`` drops the level generator's "Sampling rejected" lines from stdout and passes any
    other output through.
    """

    def __init__(self, env: gym.Env, max_length: int = MISSION_MAX_LENGTH, charset: str = MISSION_CHARSET):
        super().__init__(env)
        inner = env.observation_space
        if not isinstance(inner, spaces.Dict) or not {"image", "direction", "mission"} <= set(inner.spaces):
            raise ConfigError(
                f"{env.spec.id if env.spec else env} has no image/direction/mission observation ({inner})",
                "use a MiniGrid-* or BabyAI-* id without observation wrappers",
            )
        self.observation_space = spaces.Dict(
            {
                "image": inner["image"],  # Box(0, 255, (7, 7, 3), uint8) at the default view size
                "direction": inner["direction"],  # Discrete(4)
                "mission": spaces.Text(max_length=max_length, charset=charset),
            }
        )
        self._mission_space: spaces.Text = self.observation_space["mission"]

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict, dict]:
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            obs, info = self.env.reset(seed=seed, options=options)
        # Only the generator's rejection notes are dropped: anything else printed is still shown.
        kept = [ln for ln in printed.getvalue().splitlines(keepends=True) if not ln.startswith(_GENERATION_NOTES)]
        if kept:
            sys.stdout.write("".join(kept))
        return self.observation(obs), info

    def observation(self, observation: dict) -> dict:
        mission = str(observation["mission"])
        if not self._mission_space.contains(mission):
            raise ValueError(
                f"mission {mission!r} ({len(mission)} characters) is not in {self._mission_space}: "
                "raise max_length or extend the charset of TextMissionWrapper"
            )
        return {"image": observation["image"], "direction": observation["direction"], "mission": mission}


def make_babyai(env_id: str, held_out: list[str] | None = None, split: str = "train", **kwargs: Any) -> gym.Env:
    """``gym.make(env_id, **kwargs)`` for a BabyAI-*/MiniGrid-* id, wrapped in ``TextMissionWrapper``.

    ``held_out`` ("colour type" pairs such as "green ball") splits the level's missions by composition:
    split "train" draws only missions that name none of the pairs, "test" only missions that name one
    (``HeldOutMissions``).
    """
    _import_minigrid()
    if split not in ("train", "test"):
        raise ConfigError(f"split={split!r} is not a mission split", "use split=train or split=test")
    env = gym.make(env_id, **kwargs)
    if held_out:
        env = HeldOutMissions(env, held_out, split)
    elif split == "test":
        raise ConfigError(f"split=test of {env_id} needs held-out pairs", 'set held_out, e.g. ["green ball"]')
    return TextMissionWrapper(env)


class HeldOutMissions(gym.Wrapper):
    """A BabyAI level that draws only the missions of one split of its (colour, type) compositions.

    Generalization to new compositions (LID's "novel goals") needs missions whose object pairs training
    never saw. Each ``reset`` draws until the instruction names no held-out pair (split "train") or at
    least one (split "test"); a draw that does not fit is redrawn with a seed derived from ``seed`` and
    the draw's number, so a seed still fixes the episode. An object description without a colour or a
    type ("the red object", "a ball") names no pair. Raises ``ConfigError`` after ``max_draws`` draws
    that all miss, naming the pairs.
    """

    def __init__(self, env: gym.Env, held_out: list[str], split: str, max_draws: int = 1000):
        super().__init__(env)
        from minigrid.core.constants import COLOR_NAMES
        from minigrid.envs.babyai.core.roomgrid_level import RoomGridLevel

        if not isinstance(env.unwrapped, RoomGridLevel):
            raise ConfigError(
                f"held_out needs a BabyAI level with instructions, not {env.unwrapped}", "use a BabyAI-* id"
            )
        if isinstance(held_out, str):
            held_out = [held_out]
        pairs = set()
        for entry in held_out:
            color, _, kind = str(entry).strip().partition(" ")
            if color not in COLOR_NAMES or kind not in ("ball", "box", "key", "door"):
                raise ConfigError(
                    f"held-out pair {entry!r} is not 'colour type'",
                    f"write e.g. 'green ball': a colour of {COLOR_NAMES} and a type of ball, box, key, door",
                )
            pairs.add((color, kind))
        if split not in ("train", "test"):
            raise ConfigError(f"split={split!r} is not a mission split", "use split=train or split=test")
        self.held_out = frozenset(pairs)
        self.split = split
        self.max_draws = max_draws

    @staticmethod
    def named_pairs(instr: Any) -> set[tuple[str, str]]:
        """The (colour, type) pairs a BabyAI instruction names, through And/Before/After to every object."""
        if hasattr(instr, "instr_a"):
            return HeldOutMissions.named_pairs(instr.instr_a) | HeldOutMissions.named_pairs(instr.instr_b)
        descs = [getattr(instr, name) for name in ("desc", "desc_move", "desc_fixed") if hasattr(instr, name)]
        return {(d.color, d.type) for d in descs if d.color is not None and d.type is not None}

    def accepts(self) -> bool:
        """Whether the mission the level drew belongs to this split."""
        named = bool(self.named_pairs(self.env.unwrapped.instrs) & self.held_out)
        return named == (self.split == "test")

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict, dict]:
        obs, info = self.env.reset(seed=seed, options=options)
        for draw in range(1, self.max_draws):
            if self.accepts():
                return obs, info
            # Without a seed the level's own generator goes on drawing, as deterministic as it was.
            redraw = None if seed is None else int(np.random.SeedSequence([seed, draw]).generate_state(1)[0])
            obs, info = self.env.reset(seed=redraw, options=options)
        if self.accepts():
            return obs, info
        env_id = self.env.spec.id if self.env.spec else type(self.env.unwrapped).__name__
        pairs = ", ".join(sorted(f"{c} {t}" for c, t in self.held_out))
        if self.split == "test":
            raise ConfigError(
                f"no mission of {env_id} names a held-out pair ({pairs}) in {self.max_draws} draws",
                "hold out pairs the level can draw",
            )
        raise ConfigError(
            f"every mission of {env_id} named a held-out pair ({pairs}) in {self.max_draws} draws",
            "hold out fewer pairs, or pairs the level draws less often",
        )


class BabyAIBotExpert:
    """minigrid's ``BabyAIBot`` as an ``Expert``: it plans on the env's true grid, not on the observation.

    A new bot is built at every ``reset`` from ``env.unwrapped``. Wrapped in ``NoisyExpert``, the env
    sometimes takes another action than the bot's; the bot then needs to know which, to undo or
    re-plan (e.g. put back an object picked up by mistake), so ``act`` reads it off the grid's change
    since the last step. Should the bot's plan still break (it refuses to go on after a box was opened),
    a fresh bot plans from the grid as it is; if that fails too, ``act`` returns ``done``, a no-op in
    BabyAI, and the episode runs out as a failure (``failures`` counts these steps).
    """

    name = "babyai_bot"

    def __init__(self) -> None:
        self.failures = 0
        self._env: Any = None
        self._bot: Any = None
        self._before: tuple | None = None  # (suggested action, grid state) at the last act

    def reset(self, env: gym.Env, obs: Any, info: dict) -> None:
        from minigrid.utils.baby_ai_bot import BabyAIBot

        self._env = env.unwrapped
        self._bot = BabyAIBot(self._env)
        self._before = None

    def act(self, obs: Any, info: dict) -> int:
        if self._bot is None:
            raise RuntimeError("BabyAIBotExpert.act before reset: call expert.reset(env, obs, info) after env.reset")
        from minigrid.utils.baby_ai_bot import BabyAIBot, DisappearedBoxError

        taken = self._action_taken()
        try:
            action = self._bot.replan(taken)
        except (AssertionError, DisappearedBoxError):
            try:
                self._bot = BabyAIBot(self._env)
                action = self._bot.replan()
            except (AssertionError, DisappearedBoxError):
                self.failures += 1
                action = self._env.actions.done
        self._before = (int(action), self._state())
        return int(action)

    def _state(self) -> tuple:
        """What an action can change: position, direction, carried object, and the cell ahead."""
        env = self._env
        fwd_pos = tuple(env.front_pos)
        fwd = env.grid.get(*fwd_pos)
        door = (fwd.is_open, fwd.is_locked) if fwd is not None and fwd.type == "door" else None
        return tuple(env.agent_pos), env.agent_dir, env.carrying, fwd_pos, fwd, door

    def _action_taken(self) -> int | None:
        """The action the env took since the last ``act``, as the grid shows it; None if it was the suggested one.

        None keeps the bot's own bookkeeping exactly as without noise. An action with no visible
        effect reads as ``done`` (a no-op), which makes the bot retry rather than assume success.
        """
        if self._before is None:
            return None
        suggested, (pos, direction, carrying, fwd_pos, fwd, door) = self._before
        env, actions = self._env, self._env.actions
        now = self._state()
        if env.agent_dir == (direction - 1) % 4:
            taken = actions.left
        elif env.agent_dir == (direction + 1) % 4:
            taken = actions.right
        elif tuple(env.agent_pos) != pos:
            taken = actions.forward
        elif env.carrying is not carrying:
            taken = actions.pickup if carrying is None else actions.drop
        elif now[4] is not fwd or now[5] != door:
            taken = actions.toggle  # a door opened/closed/unlocked, or a box opened into its contents
        else:
            taken = actions.done
        return None if int(taken) == suggested else int(taken)
