"""Hindsight relabelling of BabyAI episodes: the goals an episode did reach, as BabyAI missions.

LID's Active Data Gathering explores, then relabels each episode with the goals it achieved, so a
failed episode still teaches how to reach *something*. ``relabel`` reads those goals off the agent's
egocentric views and actions alone (no access to the true grid is needed), and gives each mission with
the length of the prefix that achieves it: replayed with that mission, BabyAI's own verifier reports
success exactly at the prefix's last action (``accepts`` checks it).

To be exact, the relabeller follows how BabyAI's verifier (minigrid/envs/babyai/core/verifier.py)
judges, not only what "reaching" means:

- A description names a (colour, type), not an object: "the red ball" is reached by *any* red ball, so
  each pair is relabelled at its first success only.
- GoTo succeeds on any action while the agent faces a position in ``desc.obj_poss``, and those
  positions are refreshed only on ``drop``: an object picked up (or a box toggled away) leaves its
  position behind, so facing an object, then picking it up, counts as "go to" on the pickup step.
- PutNext succeeds when the dropped object ends next to (4-neighbourhood) a matching object. The
  view shows three of the front cell's neighbours; the fourth is the agent's own cell, where an open
  door can be (the agent stands in a doorway), which the view hides; ``relabel`` tracks it from the
  moves.
- The verifier tracks only the objects on the grid when the mission is set: an object that comes out
  of a box (BabyAI-KeyInBox) can be relabelled, but the env will not score it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from envs.lid_text import ACTION_NAMES, COLOR_NAMES, DOOR_STATES, OBJECT_NAMES

KINDS = ("goto", "pickup", "putnext")
NAMED_TYPES = ("ball", "box", "key", "door")
"""Object types a BabyAI mission names (verifier.OBJ_TYPES)."""

_FRONT, _ME = (3, 5), (3, 6)
_FRONT_NEIGHBOURS = ((2, 5), (4, 5), (3, 4))  # in the view; the fourth neighbour is the agent's cell
_LEFT, _RIGHT, _FORWARD, _PICKUP, _DROP, _TOGGLE, _DONE = range(len(ACTION_NAMES))
_STILL = (_PICKUP, _DROP, _TOGGLE, _DONE)  # actions after which the agent faces the same position
_PASSABLE = ("empty", "goal", "lava")  # what `forward` moves the agent onto, besides an open door

Pair = tuple[str, str]  # (colour, type)


@dataclass(frozen=True)
class Relabel:
    """A mission an episode achieved, and the number of its first actions that achieve it."""

    mission: str
    length: int


def relabel(images: np.ndarray, actions: np.ndarray, kinds: tuple[str, ...] = KINDS) -> list[Relabel]:
    """The missions that ``actions`` achieved, from the (T+1, 7, 7, 3) egocentric views around them.

    ``images[t]`` is the view after ``t`` actions. Missions come in the order they were achieved
    ("go to" before "pick up" before "put" within a step), each (colour, type) pair or pair of pairs once.
    """
    images, actions = np.asarray(images), np.asarray(actions)
    if images.ndim != 4 or images.shape[1:] != (7, 7, 3) or images.shape[0] != len(actions) + 1:
        raise ValueError(f"expected (T+1, 7, 7, 3) views for {len(actions)} actions, got {images.shape}")
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown relabel kinds {sorted(unknown)}; choose from {KINDS}")
    found: list[Relabel] = []
    seen: set[str] = set()
    on_door: Pair | None = None  # the open door the agent stands in, hidden from its view

    def add(mission: str, length: int) -> None:
        if mission not in seen:
            seen.add(mission)
            found.append(Relabel(mission, length))

    for t in range(1, len(images)):
        before, after, action = images[t - 1], images[t], int(actions[t - 1])
        if action == _FORWARD:
            on_door = _moved_onto(before[_FRONT], on_door)
        if "goto" in kinds:
            faced = [_pair(after[_FRONT])] + ([_pair(before[_FRONT])] if action in _STILL else [])
            for pair in faced:
                if pair is not None:
                    add(f"go to the {_name(pair)}", t)
        carried_before, carried = _pair(before[_ME]), _pair(after[_ME])
        if "pickup" in kinds and action == _PICKUP and carried_before is None and carried is not None:
            add(f"pick up the {_name(carried)}", t)
        if "putnext" in kinds and action == _DROP and carried_before is not None and carried is None:
            moved = _pair(after[_FRONT])
            fixed = [_pair(after[x, y]) for x, y in _FRONT_NEIGHBOURS] + [on_door]
            for pair in fixed:
                if moved is not None and pair is not None and pair != moved:
                    add(f"put the {_name(moved)} next to the {_name(pair)}", t)
    return found


def _pair(cell: np.ndarray) -> Pair | None:
    """(colour, type) of a view cell, when it holds an object a mission can name."""
    kind = OBJECT_NAMES[int(cell[0])]
    return (COLOR_NAMES[int(cell[1])], kind) if kind in NAMED_TYPES else None


def _name(pair: Pair) -> str:
    return f"{pair[0]} {pair[1]}"


def _moved_onto(front: np.ndarray, on_door: Pair | None) -> Pair | None:
    """The door the agent stands in after ``forward`` towards ``front`` (None: not in a doorway)."""
    kind = OBJECT_NAMES[int(front[0])]
    if kind == "door" and DOOR_STATES[int(front[2])] == "open":
        return (COLOR_NAMES[int(front[1])], "door")
    return None if kind in _PASSABLE else on_door  # anything else blocks: the agent stays where it is


_DESC = r"(?:the|a) (?:(\w+) )?(\w+)"
_FORMS = {
    "goto": re.compile(rf"go to {_DESC}"),
    "pickup": re.compile(rf"pick up {_DESC}"),
    "putnext": re.compile(rf"put {_DESC} next to {_DESC}"),
}


def instruction(mission: str) -> Any:
    """The BabyAI instruction of a simple mission: "go to", "pick up" or "put ... next to" an object.

    Objects are "[the|a] [colour] type", the type one of ball, box, key, door or "object" (any type).
    ``ValueError`` on any other mission (sequences, locations).
    """
    from minigrid.envs.babyai.core.verifier import GoToInstr, PickupInstr, PutNextInstr

    for kind, form in _FORMS.items():
        m = form.fullmatch(mission.strip())
        if m is None:
            continue
        descs = [_desc(m[i], m[i + 1], mission) for i in range(1, len(m.groups()), 2)]
        if kind in ("pickup", "putnext") and descs[0].type == "door":
            raise ValueError(f"{mission!r}: a door cannot be picked up or moved")
        if kind == "goto":
            return GoToInstr(descs[0])
        if kind == "pickup":
            return PickupInstr(descs[0])
        return PutNextInstr(descs[0], descs[1])
    raise ValueError(f"{mission!r} is not a 'go to', 'pick up' or 'put ... next to' mission of one object each")


def _desc(color: str | None, kind: str, mission: str) -> Any:
    from minigrid.envs.babyai.core.verifier import ObjDesc

    if color is not None and color not in COLOR_NAMES:
        raise ValueError(f"{mission!r}: {color!r} is not a colour of {COLOR_NAMES}")
    if kind != "object" and kind not in NAMED_TYPES:
        raise ValueError(f"{mission!r}: {kind!r} is not an object type of {NAMED_TYPES} or 'object'")
    return ObjDesc(None if kind == "object" else kind, color)


def set_mission(env: Any, mission: str) -> str:
    """Make a freshly reset BabyAI env score ``mission`` instead of its own; returns BabyAI's surface form.

    The surface form says "a" instead of "the" where several objects match. ``ValueError`` if no
    object of the env matches a description of the mission.
    """
    level = env.unwrapped
    instrs = instruction(mission)
    try:
        surface = instrs.surface(level)
    except AssertionError as e:  # ObjDesc.surface asserts that some object matches
        raise ValueError(f"{mission!r}: {e} in this episode") from e
    instrs.reset_verifier(level)
    level.instrs = instrs
    level.surface = level.mission = surface
    return surface


def accepts(env_id: str, seed: int, actions: np.ndarray, mission: str, **kwargs: Any) -> bool:
    """Whether ``mission`` succeeds, by BabyAI's verifier, exactly at the last of ``actions`` from ``reset(seed)``.

    False too if the mission names an object the episode does not have, or the episode ends earlier.
    """
    from envs.babyai import make_babyai

    env = make_babyai(env_id, **kwargs)
    try:
        env.reset(seed=seed)
        try:
            set_mission(env, mission)
        except ValueError:
            return False
        for t, action in enumerate(np.asarray(actions).tolist()):
            _, reward, terminated, truncated, _ = env.step(int(action))
            if terminated or truncated:
                return t == len(actions) - 1 and terminated and reward > 0
        return False
    finally:
        env.close()
