"""Errors the CLI turns into one clear line instead of a traceback."""

from __future__ import annotations


class PersonsearchError(Exception):
    """Base of every error meant for the user; ``exit_code`` follows the CLI convention."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class InputError(PersonsearchError):
    """Bad input or usage: a missing file, a malformed entry, an unknown setting (exit 2)."""

    exit_code = 2


class RunFailure(PersonsearchError):
    """The input was fine but the job failed: a non-finite loss, a full disk (exit 1)."""

    exit_code = 1


class Interrupted(PersonsearchError):
    """Stopped by SIGINT or SIGTERM after saving what could be saved; exits 128 + the signal."""

    def __init__(self, message: str, signal: int = 2, hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.signal = signal
        self.exit_code = 128 + signal
