"""Where retain keeps data on disk, outside run directories."""

from __future__ import annotations

import os
from pathlib import Path


def data_root() -> Path:
    """Datasets, token shards and built-in corpora: ``RETAIN_DATA`` (default ``~/.cache/retain/data``)."""
    return Path(os.environ.get("RETAIN_DATA", Path.home() / ".cache" / "retain" / "data")).expanduser()
