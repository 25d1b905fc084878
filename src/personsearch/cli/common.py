"""What every verb shares: consoles, global verbosity, the settings options and error rendering."""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.logging import RichHandler

from personsearch.errors import PersonsearchError

stdout = Console(soft_wrap=True)
stderr = Console(stderr=True, soft_wrap=True)


@dataclass
class CliState:
    verbose: bool = False
    quiet: bool = False

    @property
    def log_level(self) -> int:
        if self.verbose:
            return logging.DEBUG
        return logging.WARNING if self.quiet else logging.INFO


state = CliState()

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML settings file (see configs/).", show_default=False),
]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override one setting: section.key=value (repeatable).", show_default=False),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print only JSON on stdout (for scripts).")]


def configure_console_logging(json_mode: bool = False) -> None:
    """Library log records go to stderr through rich (never to stdout, which may carry JSON)."""
    logger = logging.getLogger("personsearch")
    for handler in list(logger.handlers):
        if isinstance(handler, RichHandler):
            logger.removeHandler(handler)
    level = logging.WARNING if json_mode and not state.verbose else state.log_level
    handler = RichHandler(console=stderr, show_path=False, show_time=False, markup=False)
    handler.setLevel(level)
    logger.addHandler(handler)
    logger.setLevel(min(level, logging.INFO))
    logger.propagate = False


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()


def report_error(exc: PersonsearchError) -> None:
    from rich.markup import escape

    # Messages quote user input (paths, captions): escaped, so "[/]" in a value is shown, not parsed.
    stderr.print(f"[bold red]error:[/] {escape(exc.message)}", highlight=False, markup=True)
    if exc.hint:
        stderr.print(f"[dim]hint:[/] {escape(exc.hint)}", highlight=False)


def fail(exc: PersonsearchError) -> typer.Exit:
    report_error(exc)
    return typer.Exit(exc.exit_code)
