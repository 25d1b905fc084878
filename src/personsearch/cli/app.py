"""The ``personsearch`` Typer application. Verb modules are imported here; none imports torch at
module level, so ``personsearch --help`` stays fast."""

from __future__ import annotations

from typing import Annotated

import typer

from personsearch import __version__
from personsearch.cli import common
from personsearch.cli import config as config_cli
from personsearch.cli import demo as demo_cli
from personsearch.cli import eval as eval_cli
from personsearch.cli import explain_mask as explain_mask_cli
from personsearch.cli import export as export_cli
from personsearch.cli import prepare as prepare_cli
from personsearch.cli import query as query_cli
from personsearch.cli import serve as serve_cli
from personsearch.cli import train as train_cli
from personsearch.cli.verbs import VerbCommand, VerbGroup
from personsearch.errors import PersonsearchError


class _Group(VerbGroup):
    """Turns library errors into one clear message and the documented exit code."""

    def invoke(self, ctx):  # type: ignore[no-untyped-def]
        try:
            return super().invoke(ctx)
        except PersonsearchError as exc:
            common.report_error(exc)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            common.stderr.print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except Exception as exc:  # the last line of defence: one message, never a traceback
            if common.state.verbose or type(exc).__module__.startswith(("click", "typer")):
                raise  # the command-line parser's own usage errors (exit 2) and exits
            error = unexpected_error(exc)
            common.report_error(error)
            raise typer.Exit(error.exit_code) from None


def unexpected_error(exc: BaseException) -> PersonsearchError:
    """An error no verb anticipated, as one line: input-like OS errors exit 2, the rest 1."""
    import errno

    from personsearch.errors import InputError, RunFailure

    if isinstance(exc, OSError):
        where = f" {exc.filename}" if getattr(exc, "filename", None) else ""
        text = f"cannot use{where}: {exc.strerror or exc}"
        if exc.errno in (errno.ENOENT, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR, errno.EROFS,
                         errno.ELOOP, errno.ENAMETOOLONG, errno.EEXIST, errno.ENXIO):
            return InputError(text, hint="check the path and its permissions")
        if exc.errno == errno.ENOSPC:
            return RunFailure(f"disk full{where}", hint="free space and run again")
        return RunFailure(text)
    if isinstance(exc, RecursionError):
        return InputError("the input is nested too deeply to read", hint="simplify the file")
    if isinstance(exc, MemoryError):
        return RunFailure("out of memory", hint="use smaller batches or inputs")
    first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
    return RunFailure(f"unexpected {type(exc).__name__}{': ' + first if first else ''}",
                      hint="run again with --verbose for the details, and please report it")


app = typer.Typer(
    name="personsearch",
    cls=_Group,
    help="Text-based person search: rank pedestrian images by a sentence (IRRA + attention-guided masking).",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"personsearch {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show debug messages.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only warnings and errors; no progress bars.")] = False,
    json_: Annotated[bool, typer.Option("--json", help="Print only JSON on stdout (for scripts).")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """-v, -q and --json may also follow the verb."""
    common.state.verbose = common.state.quiet = False  # each invocation starts afresh (tests run many)
    common.state.json = json_
    common.set_verbosity(verbose=verbose, quiet=quiet)


# Registration order is the order `personsearch --help` lists the verbs: the flow, then helpers.
app.command("prepare", cls=VerbCommand)(prepare_cli.prepare)
app.command("train", cls=VerbCommand)(train_cli.train)
app.command("eval", cls=VerbCommand)(eval_cli.evaluate)
app.command("export", cls=VerbCommand)(export_cli.export)
app.command("query", cls=VerbCommand)(query_cli.query)
app.command("serve", cls=VerbCommand)(serve_cli.serve)
app.command("demo", cls=VerbCommand)(demo_cli.demo)
app.command("explain-mask", cls=VerbCommand)(explain_mask_cli.explain_mask)
app.add_typer(config_cli.app, name="config")


def main() -> None:
    app()
