"""Atomic writes: a reader (or a crash) never sees a half-written file or folder.

Everything retain publishes — JSON files, checkpoints, datasets, token shards, model folders — is
written under a temporary name beside its destination and renamed into place once complete, through
``atomic_path``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def _fsync(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_path(
    path: str | Path, *, directory: bool = False, keep_existing: bool | Callable[[Path], bool] = False
) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write into; it becomes ``path`` when the block ends.

    ``directory``: the temporary path is an (empty, created) folder; otherwise a file path to create.
    If the block raises, the temporary path is removed and ``path`` is untouched. When ``path`` already
    exists it is replaced (a folder is swapped out, then deleted), unless ``keep_existing``: then another
    writer published first (e.g. a job of the same sweep producing the same deterministic files) and what
    this block wrote is dropped. A callable decides when the block ends, given ``path`` (e.g. "is theirs
    up to date?").
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name}."
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=path.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        if not directory:
            _fsync(tmp)  # the rename must not reach the disk before the data does
        if path.exists() and (keep_existing(path) if callable(keep_existing) else keep_existing):
            _remove(tmp)
        elif directory and path.exists():
            old = Path(tempfile.mkdtemp(prefix=prefix, suffix=".old", dir=path.parent))
            os.replace(path, old / path.name)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def write_json_atomic(path: str | Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, allow_nan=True, default=str) + "\n")
