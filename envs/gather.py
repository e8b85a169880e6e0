"""Episodes gathered by a learning policy, and their hindsight relabelling (LID's active data gathering).

``gather_episodes`` steps ``n_envs`` BabyAI envs together, a batched policy call per step, one seeded episode
per seed; the episodes come back in seed order, so the same policy and seeds always give the same data.
``hindsight_rows`` turns them into behaviour-cloning rows: a successful episode keeps its mission; every goal
an episode achieved on the way (``envs.hindsight.relabel``) becomes a mission of its own, over the prefix of
the episode that achieved it — whether or not the episode succeeded at its given mission.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from envs.registry import make_env
from envs.spec import EnvSpec

Act = Callable[[list[str], np.ndarray, np.ndarray | None], np.ndarray]
"""``act(missions, images (B, 7, 7, 3), past_actions (B, h) or None) -> actions (B,)``"""


def _succeeded(spec: EnvSpec, episode_return: float, info: dict) -> bool:
    if spec.success_threshold is not None:
        return episode_return >= spec.success_threshold
    return bool(info.get("success") or info.get("is_success"))


def gather_episodes(spec: EnvSpec, seeds: Sequence[int], act: Act, n_envs: int = 16, history: int = 0) -> list[dict]:
    """One episode per seed: ``{"seed", "mission", "images" (T+1, 7, 7, 3), "actions" (T,), "success"}``."""
    envs = [make_env(spec, monitor=False)() for _ in range(min(n_envs, len(seeds)))]
    pending = list(enumerate(seeds))[::-1]
    slots: list[dict | None] = [None] * len(envs)
    done: dict[int, dict] = {}

    def start(i: int) -> None:
        if not pending:
            slots[i] = None
            return
        index, seed = pending.pop()
        obs, _ = envs[i].reset(seed=seed)
        slots[i] = {"index": index, "seed": seed, "mission": obs["mission"], "images": [obs["image"]], "actions": []}
        slots[i]["return"] = 0.0

    try:
        for i in range(len(envs)):
            start(i)
        while any(s is not None for s in slots):
            live = [i for i, s in enumerate(slots) if s is not None]
            past = None
            if history:
                past = np.full((len(live), history), -1, dtype=np.int64)
                for row, i in enumerate(live):
                    taken = slots[i]["actions"][-history:]
                    if taken:
                        past[row, history - len(taken) :] = taken
            missions = [slots[i]["mission"] for i in live]
            images = np.stack([slots[i]["images"][-1] for i in live])
            actions = np.asarray(act(missions, images, past)).reshape(-1)
            for row, i in enumerate(live):
                slot = slots[i]
                obs, reward, terminated, truncated, info = envs[i].step(int(actions[row]))
                slot["actions"].append(int(actions[row]))
                slot["images"].append(obs["image"])
                slot["return"] += float(reward)
                if terminated or truncated:
                    done[slot["index"]] = {
                        "seed": slot["seed"],
                        "mission": slot["mission"],
                        "images": np.stack(slot["images"]),
                        "actions": np.asarray(slot["actions"], dtype=np.int64),
                        "success": _succeeded(spec, slot["return"], info),
                    }
                    start(i)
    finally:
        for env in envs:
            env.close()
    return [done[k] for k in sorted(done)]


def hindsight_rows(episodes: list[dict], kinds: Sequence[str], window: int | None = None) -> dict:
    """BC rows of the episodes: ``missions`` (list), ``images`` (N, 7, 7, 3), ``actions`` (N,), ``starts`` (the
    rows where each relabelled episode begins) and ``relabelled`` (how many relabelled episodes).

    ``window`` keeps only the last this many steps before each goal was reached: an exploring policy's early
    steps wander, and what led *to* the goal is in the steps just before it."""
    from envs.hindsight import relabel

    missions: list[str] = []
    images, actions, starts = [], [], []
    relabelled, row = 0, 0

    def add(mission: str, episode: dict, length: int) -> None:
        nonlocal row
        first = max(0, length - window) if window else 0
        starts.append(row)
        missions.extend([mission] * (length - first))
        images.append(episode["images"][first:length])
        actions.append(episode["actions"][first:length])
        row += length - first

    for episode in episodes:
        if episode["success"]:
            add(episode["mission"], episode, len(episode["actions"]))
        for goal in relabel(episode["images"], episode["actions"], kinds=tuple(kinds)):
            if episode["success"] and goal.mission == episode["mission"]:
                continue  # already there with its own mission
            add(goal.mission, episode, goal.length)
            relabelled += 1
    if not missions:
        return {
            "missions": [],
            "images": np.zeros((0, 7, 7, 3), np.uint8),
            "actions": np.zeros(0, np.int64),
            "starts": np.zeros(0, np.int64),
            "relabelled": 0,
        }
    return {
        "missions": missions,
        "images": np.concatenate(images),
        "actions": np.concatenate(actions),
        "starts": np.asarray(starts, dtype=np.int64),
        "relabelled": relabelled,
    }
