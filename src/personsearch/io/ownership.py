"""Outputs this tool owns: the marker every folder output carries, and the checks that keep a
command from replacing or writing into anything the user owns."""

from __future__ import annotations

import os
import tempfile
import unicodedata
from pathlib import Path
from typing import Any

from personsearch.errors import InputError
from personsearch.io.atomic import atomic_write_json
from personsearch.io.marker import OWNER_FORMAT, OWNER_MARKER, OWNER_VERSION, owner_kind


def write_owner_marker(folder: str | Path, kind: str) -> None:
    """Mark ``folder`` as a ``kind`` output written by this tool (inside the folder being built)."""
    atomic_write_json(Path(folder) / OWNER_MARKER, {"format": OWNER_FORMAT, "kind": kind, "version": OWNER_VERSION})


def ensure_replaceable(path: str | Path, kind: str, what: str, option: str = "--out",
                       legacy: Any = None, written: Any = None) -> bool:
    """Refuse (exit 2) unless ``path`` is absent, an empty folder, or a ``kind`` output of ours.

    Ours means: its marker names ``kind``, or (outputs written before markers existed) ``legacy``,
    a callable on the folder, validates its content; and, when ``written`` is given, every entry in it
    is one such an output holds. Returns True when there is something to
    replace. Never decides by a file's name alone.
    """
    path = Path(path)
    if not os.path.lexists(path):
        return False
    if path.is_symlink() or not path.is_dir():
        raise InputError(
            f"{option} {path} exists and is not a folder",
            hint=f"choose a new path for the {what}; nothing was changed",
        )
    try:
        empty = not any(path.iterdir())
    except OSError as exc:
        raise InputError(f"cannot read {option} {path}: {exc.strerror or exc}") from None
    if empty:
        return False
    marked = owner_kind(path)
    if marked == kind:
        # ``written(name)`` tells the entries such an output holds: a file the user added is never replaced.
        foreign = sorted(child.name for child in path.iterdir() if written is not None and not written(child.name))
        if foreign:
            raise InputError(
                f"{option} {path} is a personsearch {what} but also holds {', '.join(map(repr, foreign[:3]))}"
                f"{' and more' if len(foreign) > 3 else ''}, which personsearch did not write; refusing to replace it",
                hint=f"move those files out, or choose a new folder for the {what}; nothing was changed",
            )
        return True
    if marked is None and legacy is not None:
        try:
            if legacy(path):
                return True
        except (InputError, OSError, ValueError, KeyError, TypeError):
            pass
    found = f"a personsearch {marked}" if marked else "a folder personsearch did not write"
    raise InputError(
        f"{option} {path} is {found}, not a {what}; refusing to replace it",
        hint=f"choose a new or empty folder for the {what}; nothing in {path} was changed",
    )


def ensure_writable(path: str | Path, option: str = "--out", folder: bool = True) -> None:
    """Check, before long work starts, that ``path`` (a folder, or a file when ``folder`` is False)
    can be created: its nearest existing ancestor is a writable folder. Exit 2 otherwise."""
    path = Path(path)
    if not folder and path.is_dir():
        raise InputError(f"{option} {path} is a folder", hint="give a file name")
    if folder and path.exists() and not path.is_dir():
        raise InputError(f"{option} {path} exists and is not a folder", hint="choose another path")
    target = path if folder and path.is_dir() else path.parent
    probe = target
    while not os.path.lexists(probe):
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise InputError(
            f"cannot write {option} {path}: {probe} is a file, not a folder",
            hint="choose a path under a folder",
        )
    try:
        fd, name = tempfile.mkstemp(prefix=".personsearch-probe.", dir=probe)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        raise InputError(
            f"cannot write {option} {path}: {probe} is not writable ({exc.strerror or exc})",
            hint="choose a folder you can write to",
        ) from None


def safe_component(name: str, what: str = "run name", option: str = "--name") -> str:
    """A user-given name used as one folder name: no separators, no '..', nothing hidden or odd."""
    if (not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name
            or "\x00" in name or name.startswith(".") or len(name.encode("utf-8", "surrogatepass")) > 200
            or any(unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp") for c in name)):
        # control, format (bidi overrides, zero-width) and separator characters would let a name
        # display as another one
        raise InputError(
            f"{option} {name!r} is not a valid {what}",
            hint="use one folder name: letters, digits, '-', '_' or '.', not starting with '.'",
        )
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(f"{option} {name!r} is not valid text", hint="use letters, digits, '-', '_'") from None
    return name
