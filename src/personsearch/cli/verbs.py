"""The command classes of every verb and group: the global flags -v/-q accepted after the verb as
well as before it (and --json before it as well as after), and help shown as written."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Annotated, Any

import typer
from rich.markup import escape
from typer.core import TyperCommand, TyperGroup

from personsearch.cli.common import set_verbosity, state


def _global_flags() -> list[Any]:
    """-v/--verbose and -q/--quiet as options of a verb (built by typer from a signature, fresh each time)."""
    probe = typer.Typer(add_completion=False)

    @probe.command()
    def flags(
        verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show debug messages.", expose_value=False,
                                              callback=lambda value: value and set_verbosity(verbose=True))] = False,
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors; no progress bars.",
                                            expose_value=False,
                                            callback=lambda value: value and set_verbosity(quiet=True))] = False,
    ) -> None: ...

    return list(typer.main.get_command(probe).params)


@contextlib.contextmanager
def _literal_help(command: Any, ctx: Any) -> Iterator[None]:
    """Help texts shown as written, never parsed as rich markup ("personsearch[faiss]" keeps its
    "[faiss]"), and no type shown for a flag (typer writes "<bool>" beside each)."""
    targets = [command, *command.get_params(ctx)]
    if isinstance(command, TyperGroup):
        targets += [command.get_command(ctx, name) for name in command.list_commands(ctx)]
    saved = [(obj, key, getattr(obj, key, None)) for obj in targets for key in ("help", "short_help", "epilog")]
    for obj, key, value in saved:
        if isinstance(value, str):
            setattr(obj, key, escape(value))
    for param in command.get_params(ctx):
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    try:
        yield
    finally:
        for obj, key, value in saved:
            if isinstance(value, str):
                setattr(obj, key, value)


class VerbCommand(TyperCommand):
    """A verb: takes -v/-q after its name as well as before it (and --json before it, as after);
    its help is plain text (``_literal_help``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params.extend(_global_flags())

    def invoke(self, ctx: Any) -> Any:
        if state.json and "json_" in ctx.params:
            ctx.params["json_"] = True
        return super().invoke(ctx)

    def format_help(self, ctx: Any, formatter: Any) -> None:
        with _literal_help(self, ctx):
            super().format_help(ctx, formatter)


class VerbGroup(TyperGroup):
    """A group of verbs (the app, ``config``): plain-text help, as ``VerbCommand``."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        with _literal_help(self, ctx):
            super().format_help(ctx, formatter)
