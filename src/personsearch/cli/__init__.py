"""The ``personsearch`` command: a thin Typer layer over the library (one module per verb)."""
