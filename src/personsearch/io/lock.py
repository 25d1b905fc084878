"""``RunLock``: keeps two processes from writing the same run or index folder."""

from __future__ import annotations

import os
from pathlib import Path

from personsearch.errors import InputError
from personsearch.io.atomic import _pid_alive
from personsearch.io.files import _open_own_file


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
