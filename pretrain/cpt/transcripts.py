"""BabyAI agent experience as text: one transcript per episode, a text domain for ``retain cpt``.

An LM that is to act as a BabyAI policy reads the world as LID-Text sentences (``envs.lid_text.describe_view``)
and answers with action names (``envs.lid_text.ACTION_NAMES``). Continually pretraining it on expert episodes
written in that same vocabulary teaches it the domain, while ``retain cpt`` replays its upstream text and
measures what it forgets. A transcript::

    mission: go to the red ball
    view: a red ball 2 steps forward 1 step left. a wall 4 steps forward.
    action: forward
    view: ...
    action: left
    outcome: success after 7 steps

It holds one view and one action line per step (the view the action was chosen on), then the outcome.
Transcripts are written once per dataset: the folder (``episode_000000.txt``, ... one document each: the
``text_dir`` kind of ``pretrain.cpt.data``) is built under a temporary name and renamed into place, and its
``transcripts.json`` records the fingerprint of what it was rendered from (the dataset's files, the renderer);
a later call with the same fingerprint returns the folder untouched.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from envs import lid_text
from envs.datasets import dataset_path
from envs.transitions import Transitions, load_transitions
from pretrain.cpt.data import file_sha256
from retain.errors import DatasetError
from retain.io import atomic_path, write_json_atomic
from retain.paths import data_root

FORMAT = "retain.cpt.transcripts/1"
MANIFEST = "transcripts.json"
DEFAULT_EPISODES = 1000
_BABYAI_FIX = "give a dataset written by `retain collect sequence=babyai4`"


def collect_command(dataset: str) -> str:
    """The ``retain collect`` command that writes ``dataset`` (an id ``<namespace>/<sequence>/<task>/<quality>-v0``)."""
    parts = str(dataset).split("/")
    sequence = parts[1] if len(parts) == 4 else "babyai4"
    command = f"retain collect sequence={sequence} episodes={DEFAULT_EPISODES}"
    if len(parts) == 4 and parts[0] != "retain":
        command += f" dataset.namespace={parts[0]}"
    if len(parts) == 4 and parts[3].rsplit("-v", 1)[0] != "expert":
        command += f" dataset.quality={parts[3].rsplit('-v', 1)[0]}"
    return command


def _find(dataset: str) -> Path:
    path = dataset_path(dataset)
    if path is None:
        raise DatasetError(
            f"BabyAI dataset {dataset} not found under RETAIN_DATA={data_root()}",
            f"make it with `{collect_command(dataset)}`",
        )
    if not path.is_dir():  # a D4RL-layout file: arrays, never missions
        raise DatasetError(f"{dataset} is a D4RL file, not a BabyAI dataset", _BABYAI_FIX)
    return path


def fingerprint(path: Path) -> str:
    """What the transcripts of the dataset at ``path`` depend on: its data files and the renderer (this
    format and the LID-Text module, whose sentences they hold)."""
    files = [path / "data" / "main_data.hdf5", path / "data" / "metadata.json", Path(lid_text.__file__)]
    key = {"format": FORMAT, "files": [file_sha256(f) for f in files]}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _up_to_date(out_dir: Path, fp: str) -> bool:
    try:
        return json.loads((out_dir / MANIFEST).read_text()).get("fingerprint") == fp
    except (OSError, ValueError):
        return False


def _check_babyai(data: Transitions, dataset: str) -> None:
    obs = data.observations
    if not isinstance(obs, dict) or not {"image", "mission"} <= set(obs):
        held = ", ".join(obs) if isinstance(obs, dict) else f"an array of shape {np.shape(obs)}"
        raise DatasetError(
            f"dataset {dataset} is not a BabyAI dataset: its observations ({held}) have no image and mission",
            _BABYAI_FIX,
        )


def render_episode(mission: str, images: np.ndarray, actions: np.ndarray, success: bool) -> str:
    """One episode as a transcript: the mission, a view and an action line per step, the outcome."""
    lines = [f"mission: {mission}"]
    for image, action in zip(images, actions, strict=True):
        lines.append(f"view: {lid_text.describe_view(np.asarray(image))}")
        lines.append(f"action: {lid_text.ACTION_NAMES[int(action)]}")
    outcome = "success" if success else "failure"
    lines.append(f"outcome: {outcome} after {len(actions)} step{'' if len(actions) == 1 else 's'}")
    return "\n".join(lines) + "\n"


def episodes(data: Transitions) -> Iterator[str]:
    """The transcript of every episode of ``data``, in dataset order."""
    ends = np.append(data.episode_starts[1:], len(data))
    success = data.infos.get("success")
    for start, end in zip(data.episode_starts, ends, strict=True):
        won = bool(success[start:end].any()) if success is not None else bool(data.rewards[start:end].sum() > 0)
        yield render_episode(
            str(data.observations["mission"][start]),
            data.observations["image"][start:end],
            data.actions[start:end],
            won,
        )


def write_transcripts(dataset: str, out_dir: Path) -> Path:
    """Render every episode of the BabyAI ``dataset`` (an id under RETAIN_DATA or a dataset folder) as one
    ``.txt`` document in ``out_dir``; returns ``out_dir``. Reuses ``out_dir`` when it was rendered from the
    same dataset files already. DatasetError when the dataset is missing or not a BabyAI dataset."""
    path = _find(str(dataset))
    out_dir = Path(out_dir)
    fp = fingerprint(path)
    if _up_to_date(out_dir, fp):
        return out_dir
    data = load_transitions(path)
    _check_babyai(data, str(dataset))
    # Jobs started together (a sweep) render the same files: an up-to-date folder published first is kept.
    with atomic_path(out_dir, directory=True, keep_existing=lambda p: _up_to_date(p, fp)) as tmp:
        for k, text in enumerate(episodes(data)):
            (tmp / f"episode_{k:06d}.txt").write_text(text, encoding="utf-8")
        manifest = {
            "format": FORMAT,
            "dataset": str(dataset),
            "fingerprint": fp,
            "episodes": int(data.num_episodes),
            "steps": len(data),
        }
        write_json_atomic(tmp / MANIFEST, manifest)
    return out_dir
