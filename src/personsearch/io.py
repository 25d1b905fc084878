"""Durable file writing: every file the tool writes appears whole or not at all.

Writes go to a temporary file in the same folder, are fsynced, then renamed over the target, so a
crash, a full disk or Ctrl-C leaves the previous version intact. Folders (prepared datasets,
indexes) are built beside their target and swapped in with a rename. ``RunLock`` keeps two
processes from writing the same run or index.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import stat
import sys
import tempfile
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from personsearch.errors import InputError, RunFailure


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _disk_error(path: Path, exc: OSError) -> RunFailure:
    if exc.errno == errno.ENOSPC:
        return RunFailure(f"disk full while writing {path}; the previous version is intact", hint="free space")
    return RunFailure(f"could not write {path}: {exc.strerror or exc}")


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb", encoding: str | None = None) -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``path`` for writing; rename it over ``path`` on success."""
    if mode not in ("w", "wb"):
        raise ValueError("atomic_open writes whole files: mode must be 'w' or 'wb'")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; outputs get the usual permissions
    try:
        with os.fdopen(fd, mode, encoding=encoding if "b" not in mode else None) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _disk_error(path, exc) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_open(path, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


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


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the
    system or filesystem cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV):
        return False
    raise OSError(code, os.strerror(code), str(a))


def _recover_siblings(path: Path) -> None:
    """Clean up after a writer of ``path`` that was killed: put back a folder it had moved aside
    (when ``path`` is gone) and remove its temporary folders. Live writers' folders are left."""
    # Exactly the names this module makes (mkdtemp adds 8 random characters), never a user's look-alike.
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(?:old-(\d+)|(\d+)\.[a-z0-9_]{{8}}\.tmp)$")
    try:
        siblings = list(path.parent.iterdir())
    except OSError:
        return
    for sibling in siblings:
        match = pattern.match(sibling.name)
        if match is None or not sibling.is_dir():
            continue
        pid = int(match.group(1) or match.group(2))
        if pid == os.getpid() or _pid_alive(pid):
            continue
        if match.group(1) and not path.exists():
            os.replace(sibling, path)  # killed between moving the old folder aside and the swap
            continue
        if match.group(1) and owner_kind(sibling) is None:
            continue  # an old folder moved aside that carries no marker of ours: left for its owner
        shutil.rmtree(sibling, ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; on success it replaces ``path`` whole.

    Where the system allows, the two folders are exchanged in one atomic rename; otherwise the old
    folder (if any) is moved aside first and removed only after the new one is in place, and the
    next writer puts it back if a crash fell between the two renames. Either way ``path`` holds
    the complete old or the complete new content, never a mix.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _recover_siblings(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_UMASK)
    try:
        yield tmp
        for child in tmp.rglob("*"):
            if child.is_file():
                with open(child, "rb") as handle:
                    os.fsync(handle.fileno())
        old = None
        if path.exists() and _exchange(tmp, path):
            old = tmp  # now holds the previous content
        else:
            if path.exists():
                old = path.with_name(f".{path.name}.old-{os.getpid()}")
                if old.exists():
                    shutil.rmtree(old)
                os.replace(path, old)
            os.replace(tmp, path)
        _fsync_dir(path.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _disk_error(path, exc) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    """An exclusive lock file (``.lock`` holding the owner's pid) on a run or index folder.

    A lock whose process is gone is stale and taken over; a live holder makes the second writer
    fail with a message naming the pid. The holder also keeps an advisory ``flock`` on the file, so
    two processes deciding at the same moment (a fresh lock, or a stale one) cannot both win.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / ".lock"
        self._held = False
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        import fcntl

        self.folder.mkdir(parents=True, exist_ok=True)
        for _ in range(10):
            # Never through a symlink (the pid would overwrite the file it points to), never a FIFO.
            fd = _open_own_file(self.path, os.O_CREAT | os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self._holder(fd)
                os.close(fd)
                raise self._in_use(holder) from None
            if not self._is_current(fd):  # released (unlinked) between our open and flock: try the new file
                os.close(fd)
                continue
            holder = self._holder(fd)
            if holder is not None and holder != os.getpid() and _pid_alive(holder):
                os.close(fd)
                raise self._in_use(holder)
            # Free, or stale (its process is gone): ours now.
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            os.fsync(fd)
            self._fd = fd
            self._held = True
            return self
        raise InputError(f"could not lock {self.folder}: another process keeps taking it")

    def _is_current(self, fd: int) -> bool:
        """``fd`` is still the file at ``self.path`` (not unlinked or replaced meanwhile)."""
        try:
            here, mine = os.lstat(self.path), os.fstat(fd)
        except FileNotFoundError:
            return False
        return (here.st_dev, here.st_ino) == (mine.st_dev, mine.st_ino)

    def _in_use(self, holder: int | None) -> InputError:
        who = f"process {holder}" if holder else "another process"
        return InputError(
            f"{self.folder} is in use by {who}",
            hint=f"wait for it to finish, or remove {self.path} if that process is not personsearch",
        )

    @staticmethod
    def _holder(fd: int) -> int | None:
        """The pid in the lock file, read from the open file and bounded (a pid is a few digits)."""
        try:
            text = os.pread(fd, 32, 0).decode("ascii").strip()
            return int(text or "0") if len(text) < 20 else None
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        if self._fd is not None:
            if self._held and self._holder(self._fd) == os.getpid() and self._is_current(self._fd):
                self.path.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None
        self._held = False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


# ------------------------------------------------------------------ outputs this tool owns

#: A folder this tool writes whole (prepared dataset, index, synthetic set, run, demo) carries this
#: file; only a folder whose marker names the expected kind is ever replaced or cleared.
OWNER_MARKER = ".personsearch.json"
OWNER_FORMAT = "personsearch-output"
OWNER_VERSION = 1


def write_owner_marker(folder: str | Path, kind: str) -> None:
    """Mark ``folder`` as a ``kind`` output written by this tool (inside the folder being built)."""
    atomic_write_json(Path(folder) / OWNER_MARKER, {"format": OWNER_FORMAT, "kind": kind, "version": OWNER_VERSION})


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
