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
from rich.text import Text

from personsearch.errors import PersonsearchError

stdout = Console(soft_wrap=True)
stderr = Console(stderr=True, soft_wrap=True)


@dataclass
class CliState:
    verbose: bool = False
    quiet: bool = False
    json: bool = False  # --json given before the verb

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
PRECISION_HELP = ("auto (what is fast on this machine: measured once, then remembered), fp32, bf16 "
                  "or fp16 (CUDA).")


def set_verbosity(verbose: bool = False, quiet: bool = False) -> None:
    """-v/-q, before the verb or after it (either place turns it on); --verbose wins over --quiet."""
    state.verbose = state.verbose or verbose
    state.quiet = (state.quiet or quiet) and not state.verbose
    configure_console_logging()


def configure_console_logging(json_mode: bool = False) -> None:
    """Library log records go to stderr through rich (never to stdout, which may carry JSON)."""
    logger = logging.getLogger("personsearch")
    for handler in list(logger.handlers):
        if isinstance(handler, RichHandler):
            logger.removeHandler(handler)
    level = logging.WARNING if json_mode and not state.verbose else state.log_level
    handler = RichHandler(console=stderr, show_path=False, show_time=False, markup=False)
    handler.setLevel(level)
    if not state.verbose:  # training's per-period lines: the progress bars show them already
        handler.addFilter(lambda record: not record.name.startswith("personsearch.metrics"))
    logger.addHandler(handler)
    logger.setLevel(min(level, logging.INFO))
    logger.propagate = False


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()


def report_error(exc: PersonsearchError) -> None:

    # Messages quote user input (paths, captions): shown as plain text with control characters escaped,
    # so "[/]" in a value is not parsed as markup and an ESC sequence cannot drive the terminal.
    stderr.print(Text.assemble(("error:", "bold red"), " ", terminal_safe(exc.message)), highlight=False)
    if exc.hint:
        stderr.print(Text.assemble(("hint:", "dim"), " ", terminal_safe(exc.hint)), highlight=False)


def terminal_safe(text: object) -> Text:
    """``text`` as plain rich Text with control and format characters (ESC, CR, bidi overrides, undecodable bytes)
    shown as escapes: a caption or an image file name can never drive the terminal or parse as markup."""
    import unicodedata

    out = []
    for char in str(text):
        if unicodedata.category(char) in ("Cc", "Cf", "Cs", "Zl", "Zp") and char != "\t":
            code = ord(char)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(char)
    return Text("".join(out))



def fail(exc: PersonsearchError) -> typer.Exit:
    report_error(exc)
    return typer.Exit(exc.exit_code)
