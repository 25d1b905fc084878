"""Why training stops before its last epoch: a signal asking it to stop, or a budget spent.

Either way the loop stops at the next safe point and saves where it is, so the run can resume.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

from personsearch.settings import TrainSettings


class StopTraining(Exception):
    """Raised at a safe point to leave the loop; ``reason`` becomes ``TrainResult.stopped``."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


class StopSignals:
    """SIGINT and SIGTERM ask training to stop at the next safe point (the state is saved, then the
    caller exits 130/143); a second signal stops at once. DataLoader workers forked meanwhile
    inherit the flag handler, so Ctrl-C reaching them does not kill them mid-batch."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        if os.getpid() != self._pid:
            return  # a forked worker: the main process decides
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    @property
    def _pid(self) -> int:
        return self.__dict__.setdefault("_owner", os.getpid())


def ignore_interrupts(_worker_id: int) -> None:
    """DataLoader workers leave Ctrl-C to the main process (which saves and stops cleanly)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


class Budget:
    """train.max_steps and train.max_minutes, the minutes counted from this object's creation."""

    def __init__(self, train: TrainSettings) -> None:
        self.max_steps = train.max_steps
        self.started = time.monotonic()
        self.seconds = train.max_minutes * 60 if train.max_minutes else None

    def stop_reason(self, step: int, interrupted: bool) -> str | None:
        """Why training should stop after ``step`` optimizer steps, or None to go on."""
        if interrupted:
            return "interrupted"
        if self.max_steps is not None and step >= self.max_steps:
            return "max_steps"
        if self.seconds is not None and time.monotonic() - self.started >= self.seconds:
            return "max_minutes"
        return None
