"""The marker every folder output of this tool carries (``.personsearch.json``): only a folder
whose marker names the expected kind is ever replaced or cleared."""

from __future__ import annotations

import json
from pathlib import Path

#: A folder this tool writes whole (prepared dataset, index, synthetic set, run, demo) carries this
#: file; only a folder whose marker names the expected kind is ever replaced or cleared.
OWNER_MARKER = ".personsearch.json"
OWNER_FORMAT = "personsearch-output"
OWNER_VERSION = 1


def owner_kind(folder: str | Path) -> str | None:
    """The kind recorded in ``folder``'s marker, or None when the folder carries no valid marker."""
    path = Path(folder) / OWNER_MARKER
    try:
        if not path.is_file() or path.stat().st_size > 4096:
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != OWNER_FORMAT:
        return None
    version, kind = data.get("version"), data.get("kind")
    if type(version) is not int or not 1 <= version <= OWNER_VERSION or not isinstance(kind, str):
        return None
    return kind
