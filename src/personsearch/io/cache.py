"""The user's cache folder: small JSON files that save work between processes (a large weights
file's hash, which precision is fastest on this machine, compiled kernels).

``$PERSONSEARCH_CACHE_DIR``, else ``$XDG_CACHE_HOME/personsearch``, else ``~/.cache/personsearch``;
an empty ``PERSONSEARCH_CACHE_DIR`` turns every cache off. A cache is only ever an optimisation:
one that is missing, damaged, too large or could have been written by someone else (not owned by
this user, or writable by others) reads as empty, and one that cannot be written is skipped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["CACHE_ENV", "cache_folder", "read_cache_json", "write_cache_json"]

CACHE_ENV = "PERSONSEARCH_CACHE_DIR"
_MAX_BYTES = 1 << 20


def cache_folder() -> Path | None:
    """The cache folder (None: caching turned off). Not created here."""
    folder = os.environ.get(CACHE_ENV)
    if folder is None:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        folder = os.path.join(base, "personsearch")
    return Path(folder).expanduser() if folder else None


def read_cache_json(path: Path, version: int) -> dict[str, Any]:
    """The JSON object stored at ``path`` with this ``version``; {} when it cannot be trusted or read."""
    try:
        with open(path, "rb") as handle:
            info = os.fstat(handle.fileno())
            if hasattr(os, "getuid") and (info.st_uid != os.getuid() or info.st_mode & 0o022):
                return {}
            raw = handle.read(_MAX_BYTES + 1)
        data = json.loads(raw) if len(raw) <= _MAX_BYTES else None
    except (OSError, ValueError, RecursionError):
        return {}
    if not isinstance(data, dict) or data.get("version") != version:
        return {}
    return data


def write_cache_json(path: Path, data: dict[str, Any]) -> None:
    """Replace ``path`` atomically, readable and writable by its owner only (best effort)."""
    from personsearch.errors import PersonsearchError
    from personsearch.io.atomic import atomic_write_json

    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        atomic_write_json(path, data)
        os.chmod(path, 0o600)  # a group-writable cache is not trusted when read back
    except (OSError, PersonsearchError):
        pass
