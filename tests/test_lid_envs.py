"""LID's BabyAI pieces: the view as text (envs.lid_text), held-out mission splits (envs.babyai) and
hindsight relabelling (envs.hindsight), checked against real episodes of minigrid's levels."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("minigrid")

from envs.babyai import HeldOutMissions, make_babyai  # noqa: E402
from envs.hindsight import accepts, instruction, relabel, set_mission  # noqa: E402
from envs.lid_text import (  # noqa: E402
    ACTION_NAMES,
    OBJECT_NAMES,
    VOCABULARY,
    ViewFacts,
    describe_view,
    parse_view,
    view_facts,
    words,
)
from envs.registry import make_env  # noqa: E402
from envs.spec import EnvSpec  # noqa: E402
from retain.errors import ConfigError  # noqa: E402

LEVELS = ("BabyAI-GoToLocal-v0", "BabyAI-PickupLoc-v0", "BabyAI-PutNextLocal-v0")
DOOR_LEVEL = "BabyAI-OpenDoor-v0"
# A random policy that moves more than it turns and seldom says done, so episodes pick things up and drop them.
POLICY = np.array([0.15, 0.15, 0.4, 0.15, 0.1, 0.05])


def _episode(env, seed: int, rng: np.random.Generator, steps: int = 200) -> tuple[np.ndarray, np.ndarray, list[str]]:
    obs, _ = env.reset(seed=seed)
    images, actions, missions = [obs["image"]], [], [obs["mission"]]
    for _ in range(steps):
        action = int(rng.choice(len(POLICY), p=POLICY))
        obs, _, terminated, truncated, _ = env.step(action)
        images.append(obs["image"])
        actions.append(action)
        if terminated or truncated:
            break
    return np.array(images), np.array(actions), missions


@pytest.fixture(scope="module")
def views() -> tuple[list[np.ndarray], list[str]]:
    """Views and missions from resets and random steps of the three local levels and a level with doors."""
    rng = np.random.default_rng(0)
    images, missions = [], []
    for level in (*LEVELS, DOOR_LEVEL):
        env = make_babyai(level)
        for seed in range(6):
            ep_images, _, ep_missions = _episode(env, seed, rng, steps=40)
            images.extend(ep_images)
            missions.extend(ep_missions)
    return images, missions


def test_action_names_follow_minigrid():
    from minigrid.core.actions import Actions

    assert tuple(a.name for a in Actions) == ACTION_NAMES


def test_view_layout_and_text():
    """A hand-built view pins the layout (agent at [3, 6] facing -y) and the exact wording."""
    image = np.zeros((7, 7, 3), np.uint8)
    image[:, :, 0] = OBJECT_NAMES.index("empty")
    image[3, 6] = (5, 2, 0)  # carried: blue key
    image[2, 4] = (6, 0, 0)  # red ball, 2 forward 1 left
    image[6, 6] = (4, 4, 2)  # locked yellow door, 3 right
    image[5, 5] = (4, 1, 0)  # open green door, 1 forward 2 right
    image[:, 2] = (2, 5, 0)  # a wall row, 4 forward
    text = describe_view(image)
    assert text == (
        "you carry a blue key. a red ball 2 steps forward 1 step left. an open green door 1 step forward 2 steps"
        " right. a locked yellow door 3 steps right. a wall 4 steps forward."
    )
    assert parse_view(text) == view_facts(image)
    assert view_facts(image) == ViewFacts(
        objects=(("ball", "red", None, 2, -1), ("door", "green", "open", 1, 2), ("door", "yellow", "locked", 0, 3)),
        carrying=("key", "blue"),
        wall_ahead=4,
    )
    empty = np.zeros((7, 7, 3), np.uint8)
    assert parse_view(describe_view(empty)) == view_facts(empty) == ViewFacts((), None, None)


def test_describe_view_round_trips_real_views(views):
    images, _ = views
    facts = [view_facts(image) for image in images]
    for image, fact in zip(images, facts):
        text = describe_view(image)
        assert describe_view(image.copy()) == text
        assert parse_view(text) == fact, text
    # the views exercise every part of a description
    assert any(f.carrying for f in facts)
    assert any(f.wall_ahead for f in facts)
    assert any(o[0] == "door" for f in facts for o in f.objects)
    assert {o[0] for f in facts for o in f.objects} >= {"ball", "box", "key", "door"}


@pytest.mark.parametrize(
    "text",
    [
        "",
        "a red ball.",
        "a red ball 2 steps forward",
        "a pink ball 1 step left.",
        "a red door 1 step left.",
        "an red ball 1 step left.",
        "a wall 2 steps left.",
    ],
)
def test_parse_view_rejects_other_text(text):
    with pytest.raises(ValueError):
        parse_view(text)


def test_vocabulary_covers_views_and_missions(views):
    images, missions = views
    vocabulary = set(VOCABULARY)
    assert len(vocabulary) == len(VOCABULARY)
    for text in [describe_view(image) for image in images] + missions:
        assert set(words(text)) <= vocabulary, text
    assert words("Go to the red ball, then open a door.") == [
        *("go", "to", "the", "red", "ball", ",", "then", "open", "a", "door", "."),
    ]


# --- held-out mission compositions -------------------------------------------------------------------


def _pairs(env) -> set[tuple[str, str]]:
    return HeldOutMissions.named_pairs(env.unwrapped.instrs)


def test_held_out_splits_missions():
    held = ("green", "ball")
    train = make_babyai("BabyAI-GoToLocal-v0", held_out=["green ball"], split="train")
    test = make_env(EnvSpec(id="BabyAI-GoToLocal-v0", kwargs={"held_out": ["green ball"], "split": "test"}))()
    for seed in range(100):
        train.reset(seed=seed)
        assert held not in _pairs(train)
    for seed in range(20):
        obs, _ = test.reset(seed=seed)
        assert _pairs(test) == {held} and obs["mission"].endswith("green ball")
    # unseeded resets draw on, in the split
    test.reset()
    assert held in _pairs(test)


def test_held_out_same_seed_same_episode():
    for split in ("train", "test"):
        a = make_babyai("BabyAI-PutNextLocal-v0", held_out=["green ball", "red key"], split=split)
        b = make_babyai("BabyAI-PutNextLocal-v0", held_out=["green ball", "red key"], split=split)
        for seed in (0, 7):
            obs_a, _ = a.reset(seed=seed)
            obs_b, _ = b.reset(seed=seed)
            assert obs_a["mission"] == obs_b["mission"]
            assert np.array_equal(obs_a["image"], obs_b["image"])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"held_out": ["green"]},
        {"held_out": ["pink ball"]},
        {"held_out": ["green lava"]},
        {"held_out": ["ball green"]},
        {"held_out": ["green ball"], "split": "val"},
        {"split": "test"},
    ],
)
def test_held_out_bad_config(kwargs):
    with pytest.raises(ConfigError):
        make_babyai("BabyAI-GoToLocal-v0", **kwargs)


def test_held_out_pair_the_level_never_draws():
    import gymnasium as gym

    env = HeldOutMissions(gym.make("BabyAI-GoToLocal-v0"), ["green door"], "test", max_draws=20)
    with pytest.raises(ConfigError, match="no mission of BabyAI-GoToLocal-v0 names a held-out pair"):
        env.reset(seed=0)


# --- hindsight relabelling ---------------------------------------------------------------------------


def test_relabels_are_accepted_by_the_env():
    rng = np.random.default_rng(1)
    counts = {"go": 0, "pick": 0, "put": 0}
    for level in LEVELS:
        env = make_babyai(level)
        for seed in range(6):
            images, actions, _ = _episode(env, seed, rng)
            found = relabel(images, actions)
            assert len({r.mission for r in found}) == len(found)
            for r in found:
                counts[r.mission.split()[0]] += 1
                assert accepts(level, seed, actions[: r.length], r.mission), (level, seed, r)
                if r.length > 1:  # one action short, the env has not seen it yet
                    assert not accepts(level, seed, actions[: r.length - 1], r.mission)
            assert relabel(images, actions, kinds=("goto",)) == [r for r in found if r.mission.startswith("go ")]
    assert min(counts.values()) > 0, counts


def test_goto_counts_facing_an_object_then_picking_it_up():
    """BabyAI's GoTo keeps an object's old position until a drop: picking up what one faces is a "go to".

    BabyAI never starts an agent facing an object, so the agent is put in front of one by hand."""
    env = make_babyai("BabyAI-PickupLoc-v0")
    env.reset(seed=0)
    level = env.unwrapped
    obj = next(o for o in level.grid.grid if o is not None and o.type in ("ball", "box", "key"))
    for direction, (dx, dy) in enumerate([(1, 0), (0, 1), (-1, 0), (0, -1)]):
        x, y = obj.cur_pos[0] - dx, obj.cur_pos[1] - dy
        if level.grid.get(x, y) is None:
            level.agent_pos, level.agent_dir = (x, y), direction
            break
    before = level.gen_obs()["image"]
    mission = f"go to the {obj.color} {obj.type}"
    set_mission(env, mission)
    pickup = ACTION_NAMES.index("pickup")
    after, reward, terminated, *_ = env.step(pickup)
    assert terminated and reward > 0
    found = relabel(np.array([before, after["image"]]), np.array([pickup]))
    assert [(r.mission, r.length) for r in found] == [(mission, 1), (f"pick up the {obj.color} {obj.type}", 1)]


def test_wrong_missions_are_not_accepted():
    env = make_babyai("BabyAI-GoToLocal-v0")
    obs, _ = env.reset(seed=0)
    level = env.unwrapped
    present = {(o.color, o.type) for o in level.grid.grid if o is not None and o.type in ("ball", "box", "key")}
    absent = next(
        (c, t)
        for c in ("red", "green", "blue", "purple", "yellow", "grey")
        for t in ("ball", "box", "key")
        if (c, t) not in present
    )
    assert not accepts("BabyAI-GoToLocal-v0", 0, [2, 2, 0, 2], f"go to the {absent[0]} {absent[1]}")
    assert not accepts("BabyAI-GoToLocal-v0", 0, [], obs["mission"])
    with pytest.raises(ValueError):
        set_mission(env, f"pick up the {absent[0]} {absent[1]}")


@pytest.mark.parametrize(
    "mission",
    [
        "go to the red ball, then open a door",
        "pick up the red door",
        "go to the pink ball",
        "go to the red ball on your left",
        "open the red door",
    ],
)
def test_instruction_rejects_other_missions(mission):
    with pytest.raises(ValueError):
        instruction(mission)


def test_set_mission_scores_the_new_mission():
    env = make_babyai("BabyAI-GoToLocal-v0")
    env.reset(seed=0)
    target = next(o for o in env.unwrapped.grid.grid if o is not None and o.type in ("ball", "box", "key"))
    surface = set_mission(env, f"go to the {target.color} {target.type}")
    assert surface.endswith(f"{target.color} {target.type}")
    obs, *_ = env.step(ACTION_NAMES.index("done"))
    assert obs["mission"] == surface
