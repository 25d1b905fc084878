"""Paths recorded in the files this tool writes (a prepared dataset's raw image folder, a run's
dataset, an index's image folder and model), so that a tree of datasets, runs and indexes moved or
copied elsewhere keeps working.

A path is recorded relative to the folder holding the file (``relative_path``: both with
symbolic links resolved, forward slashes) unless the two share nothing but the filesystem root
(or lie on different drives): then nothing would move together. JSON records keep the absolute
path they always held and add the relative form beside it under ``"relative"``; reading
(``recorded_path``) takes the relative form when its target exists (the tree moved or copied
together) and the absolute one otherwise (the file moved, its target stayed; every file written
before relative paths). A settings file has room for one value: ``path_to_record`` writes the
relative form there when there is one, ``path_from_record`` reads either form.

A relative form names no place an absolute one could not, so readers keep their own checks (rows
inside the image root, entries inside the raw folder) unchanged.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePath

#: The key of the object holding the relative forms in a JSON record (field name -> relative path).
RELATIVE = "relative"
#: The longest recorded path read back.
MAX_RECORDED = 4096


def relative_path(target: str | Path, folder: str | Path) -> str | None:
    """``target`` relative to ``folder`` (links resolved), or None where they share no folder but
    the filesystem root or lie on different drives."""
    real_target = os.path.realpath(os.path.abspath(os.path.expanduser(target)))
    real_folder = os.path.realpath(os.path.abspath(os.path.expanduser(folder)))
    try:
        common = os.path.commonpath([real_target, real_folder])
    except ValueError:  # different drives: no relative path exists
        return None
    if os.path.dirname(common) == common:  # only the filesystem root in common: nothing moves together
        return None
    relative = PurePath(os.path.relpath(real_target, real_folder)).as_posix()
    return f"./{relative}" if relative.startswith("~") else relative  # never read as a home folder


def path_to_record(target: str | Path, folder: str | Path) -> str:
    """The one value to record for ``target`` in a file in ``folder``: relative where the rule
    allows, else absolute."""
    return relative_path(target, folder) or os.path.abspath(os.path.expanduser(target))


def path_from_record(value: str, folder: str | Path) -> Path:
    """The path a recorded ``value`` names: absolute as it is, relative against ``folder``."""
    if os.path.isabs(value):
        return Path(value)
    base = os.path.realpath(os.path.abspath(os.path.expanduser(folder)))
    return Path(os.path.normpath(os.path.join(base, value)))


def recorded_path(absolute: str, relative: str | None, folder: str | Path) -> Path:
    """The path a file in ``folder`` records as ``absolute`` with its ``relative`` form (None: the
    file has none): the relative one when its target exists, else the absolute one."""
    if relative:
        moved = path_from_record(relative, folder)
        if os.path.lexists(moved) or not os.path.lexists(absolute):
            return moved  # (neither there: where it belongs when the tree moves together)
    return Path(absolute)


def describe_recorded(absolute: str, relative: str | None, folder: str | Path) -> str:
    """How an error names a recorded path: the absolute path, and the relative form with what it
    resolves to here."""
    if not relative:
        return repr(absolute)
    return f"{relative!r} relative to {folder} ({path_from_record(relative, folder)}), or {absolute!r}"


def relative_fault(value: object) -> str | None:
    """Why a recorded relative form is not one (None when it is)."""
    if not isinstance(value, str) or not value:
        return "is not a path"
    if "\x00" in value or len(value) > MAX_RECORDED:
        return "holds a NUL character or is too long"
    if os.path.isabs(value) or value.startswith("~"):
        return "is not a relative path"
    return None


__all__ = [
    "MAX_RECORDED", "RELATIVE", "describe_recorded", "path_from_record", "path_to_record", "recorded_path",
    "relative_fault", "relative_path",
]
