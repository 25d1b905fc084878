"""``personsearch config show``: the fully resolved settings tree."""

from __future__ import annotations

import typer
from rich.syntax import Syntax

from personsearch.cli.common import ConfigOption, JsonOption, SetOption, print_json, stdout
from personsearch.cli.verbs import VerbCommand, VerbGroup

app = typer.Typer(help="Inspect the settings tree.", no_args_is_help=True, cls=VerbGroup)


@app.command("show", cls=VerbCommand)
def show(config: ConfigOption = None, set_: SetOption = None, json_: JsonOption = False) -> None:
    """Print the resolved settings: defaults < --config < PERSONSEARCH_SECTION__KEY < --set."""
    from personsearch.settings import resolve_settings

    settings = resolve_settings(config=config, sets=set_ or ())
    if json_:
        print_json(settings.to_dict())
    else:
        stdout.print(Syntax(settings.to_yaml(), "yaml", theme="ansi_dark", background_color="default"))
