"""Reading and appending without surprises: only regular files are opened (a FIFO or device
swapped in never hangs a run), links are never followed into, and JSON lines are bounded."""

from __future__ import annotations

import errno
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from personsearch.errors import InputError
from personsearch.io.atomic import _disk_error

#: Formats Pillow may decode (never EPS: it runs Ghostscript on the file's PostScript).
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "DIB", "GIF", "TIFF", "PPM", "TGA", "PCX", "ICO", "SGI")


class NotRegularFile(OSError):
    """A path that names a FIFO, socket, device or folder where a file was expected."""


def open_regular(path: str | Path) -> IO[bytes]:
    """Open ``path`` (links followed) for binary reading only if it is a regular file.

    The open never blocks: a FIFO, a device (a link to /dev/zero), a socket or a folder named like
    an input (``*.jpg``, ``reid_raw.json``, a query file) is refused with ``NotRegularFile`` before
    a byte is read, never waited on.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotRegularFile(errno.EINVAL, "not a regular file (a FIFO, socket, device or folder)", str(path))
        if flags & getattr(os, "O_NONBLOCK", 0):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _special_file(path: Path, exc: OSError | None = None) -> InputError:
    """A run's own file (log, metrics, lock) that is a symlink, folder, FIFO or device: writing or
    reading through it could change a user's file elsewhere or block forever, so it is refused."""
    try:
        mode = os.lstat(path).st_mode
        kind = ("a symbolic link" if stat.S_ISLNK(mode) else "a folder" if stat.S_ISDIR(mode)
                else "not a regular file (a pipe, device or socket)")
    except OSError:
        kind = f"unusable ({exc.strerror if exc is not None else 'cannot be read'})"
    return InputError(f"{path} is {kind}; personsearch writes its own regular file there and never "
                      "follows a link or opens a special file", hint=f"move {path} away (it is yours), then run again")


def _open_own_file(path: Path, flags: int) -> int:
    """Open a file this tool writes in place (appended or locked), never through a symlink or into
    a FIFO/device: O_NOFOLLOW + O_NONBLOCK, then the opened object must be a regular file."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO, errno.ENOTDIR):
            raise _special_file(path, exc) from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise _special_file(path)
    return fd


def append_line(path: str | Path, line: str) -> None:
    """Append one line and fsync it (logs and metrics.jsonl grow line by line; a torn last line is
    skipped by readers). A symlink or special file in its place is refused, never written through."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = _open_own_file(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        with os.fdopen(fd, "a", encoding="utf-8") as handle:
            handle.write(line.rstrip("\n") + "\n")
            handle.flush()
            os.fsync(handle.fileno())
    except InputError:
        raise
    except OSError as exc:
        raise _disk_error(path, exc) from None


#: A JSON-lines record longer than this is not one of ours (metrics lines are a few hundred bytes).
MAX_JSONL_LINE = 1 << 20


def iter_jsonl(path: str | Path) -> Iterator[dict[str, Any]]:
    """Stream a JSON-lines file's objects in bounded memory, skipping a torn final line, overlong
    lines and lines that are not JSON objects. A FIFO, device or symlink in its place is refused."""
    path = Path(path)
    if not os.path.lexists(path):
        return
    with os.fdopen(_open_own_file(path, os.O_RDONLY), "rb") as handle:
        while True:
            raw = handle.readline(MAX_JSONL_LINE + 1)
            if not raw:
                return
            if len(raw) > MAX_JSONL_LINE:
                while raw and not raw.endswith(b"\n"):  # skip the rest of an overlong line
                    raw = handle.readline(MAX_JSONL_LINE)
                continue
            text = raw.decode("utf-8", errors="replace")
            if not text.strip():
                continue
            try:
                value = json.loads(text)
            except (ValueError, RecursionError):
                continue
            if isinstance(value, dict):
                yield value


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSON-lines file, ignoring a torn final line left by a crash."""
    return list(iter_jsonl(path))
