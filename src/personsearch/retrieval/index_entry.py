"""One gallery row's metadata: the image's path relative to the image root, its identity, and
the size and modification time that tell whether the file changed since it was embedded.

Rows are stored one JSON object a line in a shard's ``.jsonl`` file (read and checked by
``index_rows``). A row's path is the part that needs trust: ``path_problem`` is the one rule for
what a stored path may look like.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from personsearch.errors import InputError
from personsearch.retrieval.index_format import is_integer


def path_problem(path: Any) -> str | None:
    """Why ``path`` cannot be a gallery path relative to the image root (None when it can): it must
    be non-empty UTF-8 text, relative, without NUL or ``.``/``..``/empty components."""
    if not isinstance(path, str):
        return f"is {type(path).__name__}, not text"
    if not path:
        return "is empty"
    if "\x00" in path:
        return "contains a NUL character"
    if path.startswith("/"):
        return "is absolute"
    if any(part in ("", ".", "..") for part in path.split("/")):
        return "leaves its folder ('..', '.' or an empty component)"
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8 text"
    return None


@dataclass(frozen=True)
class IndexEntry:
    """One gallery image: its path relative to the image root, identity when known, and the
    size and modification time that tell whether the file changed since it was embedded."""

    path: str
    pid: int | None
    size: int
    mtime_ns: int

    @classmethod
    def for_file(cls, image_root: str | Path, file: str | Path, pid: int | None = None) -> IndexEntry:
        """Describe ``file`` (absolute, or relative to ``image_root``) from its current stat."""
        root = Path(os.path.abspath(image_root))
        file = Path(file)
        full = Path(os.path.abspath(file if file.is_absolute() else root / file))
        try:
            stat = full.stat()
        except OSError as exc:
            raise InputError(f"cannot read {full}: {exc.strerror or exc}") from None
        try:
            rel = full.relative_to(root)
        except ValueError:
            raise InputError(f"{full} is not inside the image root {root}") from None
        return cls(rel.as_posix(), pid, stat.st_size, stat.st_mtime_ns)

    @classmethod
    def from_mapping(cls, value: Mapping[str, Any] | IndexEntry, where: str) -> IndexEntry:
        """An entry from a mapping (or an entry, re-checked): path relative to the image root and
        staying inside it, pid an integer or None, size and mtime_ns integers."""
        if isinstance(value, IndexEntry):
            path, pid, size, mtime = value.path, value.pid, value.size, value.mtime_ns
        else:
            try:
                path, pid, size, mtime = value["path"], value.get("pid"), value["size"], value["mtime_ns"]
            except (KeyError, TypeError, AttributeError) as exc:
                raise InputError(
                    f"{where}: metadata must have path, pid (int or null), size and mtime_ns; got {value!r:.200}",
                    hint=f"missing: {exc}",
                ) from None
            if isinstance(path, os.PathLike):
                path = Path(path).as_posix()
        problem = path_problem(path)
        if problem is not None:
            raise InputError(f"{where}: path {path!r:.300} {problem}", hint="paths are relative to the image root")
        if not (pid is None or is_integer(pid)) or not is_integer(size, 0) or not is_integer(mtime):
            raise InputError(
                f"{where}: pid must be an integer or null, size and mtime_ns integers; "
                f"got pid={pid!r:.40} size={size!r:.40} mtime_ns={mtime!r:.40}"
            )
        if isinstance(value, IndexEntry) and type(pid) in (int, type(None)) and type(size) is int \
                and type(mtime) is int:
            return value
        return cls(path, None if pid is None else int(pid), int(size), int(mtime))
