"""LID-Text: the agent's egocentric BabyAI view as a short English description, in a closed vocabulary.

LID (Li et al. 2022) feeds a pre-trained language model the goal *and* the observation as text. The
language model sees this text at every step, so it says only what an agent acts on: each visible object
with its colour (a door's state too) and where it lies in steps from the agent, the carried object, and
how far the wall straight ahead is. The text is a pure function of the image, words are drawn from
``VOCABULARY`` (together with every word of a BabyAI mission), and ``parse_view`` reads it back, so a
test can check that nothing the image shows is lost or invented.

MiniGrid's view (``MiniGridEnv.gen_obs_grid``) is rotated so that the agent stands at the bottom middle
cell, ``image[3, 6]`` of the 7×7 view, facing towards smaller ``y``: ``image[x, y]`` lies
``6 - y`` steps forward and ``x - 3`` steps to the right. Each cell is (``OBJECT_TO_IDX``,
``COLOR_TO_IDX``, ``STATE_TO_IDX``); the agent's own cell holds the carried object (or is empty).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

VIEW_SIZE = 7
"""Side of the view the vocabulary covers (MiniGrid's default ``agent_view_size``)."""

ACTION_NAMES = ("left", "right", "forward", "pickup", "drop", "toggle", "done")
"""MiniGrid's ``Actions``, in their order: ``ACTION_NAMES[a]`` names action ``a``."""

# MiniGrid's encodings (minigrid.core.constants), copied so that this module imports without minigrid.
OBJECT_NAMES = ("unseen", "empty", "wall", "floor", "door", "key", "ball", "box", "goal", "lava", "agent")
COLOR_NAMES = ("red", "green", "blue", "purple", "yellow", "grey")
DOOR_STATES = ("open", "closed", "locked")

DESCRIBED_TYPES = ("door", "key", "ball", "box", "goal", "lava")
"""Object types a description names. Walls are said only straight ahead; floor, empty and unseen not at all."""

_SILENT_TYPES = ("unseen", "empty", "wall", "floor")

Object = tuple[str, str, str | None, int, int]
"""(type, colour, door state or None, steps forward, steps right; negative is left)."""


@dataclass(frozen=True)
class ViewFacts:
    """What ``describe_view`` says about a view; two views with equal facts have the same description."""

    objects: tuple[Object, ...]
    """visible objects, sorted by ``object_order``"""
    carrying: tuple[str, str] | None
    """(type, colour) of the carried object"""
    wall_ahead: int | None
    """steps to the nearest visible wall straight ahead"""


def object_order(obj: Object) -> tuple[int, int]:
    """Canonical order of objects: nearest first (steps forward plus steps sideways), then left to right."""
    _, _, _, forward, right = obj
    return forward + abs(right), right


def view_facts(image: np.ndarray) -> ViewFacts:
    """The facts of an egocentric (size, size, 3) view, read off the grid encoding."""
    image = np.asarray(image)
    size = image.shape[0]
    if image.ndim != 3 or image.shape != (size, size, 3) or size % 2 == 0:
        raise ValueError(f"expected an egocentric (n, n, 3) view with n odd, got shape {image.shape}")
    me_x, me_y = size // 2, size - 1
    objects = []
    carrying = None
    wall_ahead = None
    for x in range(size):
        for y in range(size):
            kind, color, state = _cell(image, x, y)
            if (x, y) == (me_x, me_y):
                if kind not in _SILENT_TYPES:
                    carrying = (kind, color)
            elif kind == "wall":
                if x == me_x and (wall_ahead is None or me_y - y < wall_ahead):
                    wall_ahead = me_y - y
            elif kind not in _SILENT_TYPES:
                objects.append((kind, color, state, me_y - y, x - me_x))
    return ViewFacts(tuple(sorted(objects, key=object_order)), carrying, wall_ahead)


def _cell(image: np.ndarray, x: int, y: int) -> tuple[str, str, str | None]:
    kind_idx, color_idx, state_idx = (int(v) for v in image[x, y])
    if kind_idx >= len(OBJECT_NAMES) or OBJECT_NAMES[kind_idx] == "agent":
        raise ValueError(f"cell ({x}, {y}) holds object index {kind_idx}, which a MiniGrid view never shows")
    kind = OBJECT_NAMES[kind_idx]
    if kind in _SILENT_TYPES:
        return kind, "", None
    if color_idx >= len(COLOR_NAMES):
        raise ValueError(f"cell ({x}, {y}) holds colour index {color_idx}")
    state = DOOR_STATES[state_idx] if kind == "door" else None
    return kind, COLOR_NAMES[color_idx], state


def describe_view(image: np.ndarray) -> str:
    """The view as sentences: the carried object, the objects (``object_order``), then the wall ahead.

    E.g. "you carry a blue key. a red ball 2 steps forward 1 step left. a wall 4 steps forward."
    """
    return describe_facts(view_facts(image))


def describe_facts(facts: ViewFacts) -> str:
    sentences = []
    if facts.carrying is not None:
        kind, color = facts.carrying
        sentences.append(f"you carry a {color} {kind}.")
    for kind, color, state, forward, right in facts.objects:
        noun = f"{'an' if state == 'open' else 'a'} {state + ' ' if state else ''}{color} {kind}"
        sentences.append(f"{noun} {_where(forward, right)}.")
    if facts.wall_ahead is not None:
        sentences.append(f"a wall {_steps(facts.wall_ahead)} forward.")
    return " ".join(sentences) if sentences else "you see nothing."


def _steps(n: int) -> str:
    return f"{n} step" if n == 1 else f"{n} steps"


def _where(forward: int, right: int) -> str:
    parts = []
    if forward:
        parts.append(f"{_steps(forward)} forward")
    if right:
        parts.append(f"{_steps(abs(right))} {'right' if right > 0 else 'left'}")
    return " ".join(parts)


_COLOR = "|".join(COLOR_NAMES)
_STEPS = r"(\d+) steps?"
_CARRY = re.compile(rf"you carry a ({_COLOR}) (key|ball|box)")
_WALL = re.compile(rf"a wall {_STEPS} forward")
_OBJECT = re.compile(
    rf"an? (?:({'|'.join(DOOR_STATES)}) )?({_COLOR}) ({'|'.join(DESCRIBED_TYPES)})"
    rf"(?: {_STEPS} forward)?(?: {_STEPS} (left|right))?"
)


def parse_view(text: str) -> ViewFacts:
    """The facts a ``describe_view`` text states; ``ValueError`` on any sentence it would not write."""
    if text == "you see nothing.":
        return ViewFacts((), None, None)
    if not text.endswith("."):
        raise ValueError(f"a view description ends with '.': {text!r}")
    objects = []
    carrying = None
    wall_ahead = None
    for sentence in text[:-1].split(". "):
        if m := _CARRY.fullmatch(sentence):
            carrying = (m[2], m[1])
        elif m := _WALL.fullmatch(sentence):
            wall_ahead = int(m[1])
        elif (m := _OBJECT.fullmatch(sentence)) and (m[4] or m[5]):
            state, color, kind = m[1], m[2], m[3]
            if (kind == "door") != (state is not None) or sentence.startswith("an ") != (state == "open"):
                raise ValueError(f"cannot parse {sentence!r}: a door, and only a door, has a state")
            forward = int(m[4]) if m[4] else 0
            right = (int(m[5]) if m[5] else 0) * (-1 if m[6] == "left" else 1)
            objects.append((kind, color, state, forward, right))
        else:
            raise ValueError(f"cannot parse {sentence!r} in view description {text!r}")
    return ViewFacts(tuple(sorted(objects, key=object_order)), carrying, wall_ahead)


_WORD = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


def words(text: str) -> list[str]:
    """The words of ``text`` as the vocabulary counts them: lower case, each punctuation mark a word of its own."""
    return _WORD.findall(text.lower())


_MISSION_WORDS = (
    # minigrid/envs/babyai/core/verifier.py: the surface forms of ObjDesc and of every Instr
    *("go", "to", "pick", "up", "open", "put", "next"),
    *("a", "the", "object", "box", "ball", "key", "door"),
    *("in", "front", "of", "you", "behind", "on", "your", "left", "right"),
    *(",", "and", "then", "after"),
)
_VIEW_WORDS = (
    *("you", "carry", "see", "nothing", "a", "an", "wall", "step", "steps", "forward", "left", "right", "."),
    *DESCRIBED_TYPES,
    *DOOR_STATES,
    *(str(n) for n in range(1, VIEW_SIZE)),
)

VOCABULARY: tuple[str, ...] = tuple(dict.fromkeys((*_MISSION_WORDS, *COLOR_NAMES, *_VIEW_WORDS)))
"""Every word of a ``describe_view`` text (of a 7×7 view) and of a BabyAI mission, each once, in a fixed order."""
