"""``personsearch prepare``: validate a raw benchmark dataset (or draw the synthetic one) and write
its prepared form."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from personsearch.cli import common
from personsearch.errors import InputError, RunFailure

_SHOWN_PROBLEMS = 10


def prepare(
    name: Annotated[
        str, typer.Argument(help="CUHK-PEDES, ICFG-PEDES, RSTPReid or synthetic (case-insensitive).")
    ],
    root: Annotated[
        Path | None,
        typer.Option(
            "--root",
            help="Raw dataset folder (or its parent); for synthetic, where to draw it.",
            show_default=False,
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Prepared dataset folder to write.", show_default=False)
    ] = None,
    json_: common.JsonOption = False,
    strict: Annotated[
        bool, typer.Option("--strict", help="Fail on any problem instead of skipping the entry.")
    ] = False,
    check: Annotated[bool, typer.Option("--check", help="Validate and report; write nothing.")] = False,
    verify: Annotated[bool, typer.Option("--verify", help="Decode every image fully (slower).")] = False,
    workers: Annotated[
        int | None, typer.Option("--workers", min=1, help="Parallel image checks.", show_default=False)
    ] = None,
    ids: Annotated[
        int | None,
        typer.Option("--ids", min=3, max=100_000, help="synthetic: identities to draw [800].", show_default=False),
    ] = None,
    seed: Annotated[
        int | None, typer.Option("--seed", min=0, help="synthetic: random seed [0].", show_default=False)
    ] = None,
    preview: Annotated[
        Path | None,
        typer.Option("--preview", help="synthetic: write a contact sheet PNG.", show_default=False),
    ] = None,
    noise: Annotated[
        float | None,
        typer.Option("--noise", min=0, max=0.99, show_default=False,
                     help="synthetic: share of training captions given to other identities (RDE; raw/noise.json)."),
    ] = None,
) -> None:
    """Validate a raw dataset and write the prepared dataset (manifest + tokenized captions)."""
    from personsearch.data.formats import default_workers
    from personsearch.data.prepared import prepare_dataset

    if json_:
        common.configure_console_logging(json_mode=True)
    workers = workers or default_workers()
    synthetic = name.strip().lower() == "synthetic"
    if not synthetic:
        given = [
            flag
            for flag, value in (("--ids", ids), ("--seed", seed), ("--preview", preview), ("--noise", noise))
            if value is not None
        ]
        if given:
            raise InputError(f"{', '.join(given)} only apply to `prepare synthetic`")
        if root is None:
            raise InputError("--root is required: the raw dataset folder", hint="e.g. --root data/CUHK-PEDES")
        if out is None and not check:
            raise InputError("--out is required (or --check to only validate)")
        report = prepare_dataset(name, root, out, strict=strict, verify=verify, workers=workers, check_only=check)
    else:
        try:
            from personsearch.data.synthetic.prepare import prepare_synthetic
        except ImportError as exc:
            raise RunFailure(f"the synthetic dataset generator is not available ({exc})") from None
        if out is None:
            raise InputError("--out is required for `prepare synthetic`")
        quiet = common.state.quiet or json_
        report = prepare_synthetic(
            out, root=root, ids=ids if ids is not None else 800, seed=seed or 0, workers=workers, strict=strict,
            verify=verify, check_only=check, preview=preview, noise=noise or 0.0,
            drawing=None if quiet else lambda: common.stderr.status("drawing the synthetic dataset"))
    if json_:
        common.print_json(report.to_json())
        return
    _render(report, check)


def _render(report, check: bool) -> None:  # noqa: ANN001
    table = Table(title=common.terminal_safe(f"{report.dataset} ({report.root})"), title_justify="left")
    table.add_column("split")
    for column in ("ids", "images", "captions"):
        table.add_column(column, justify="right")
    for split, counts in report.splits.items():
        table.add_row(split, *(f"{counts[column]:,}" for column in ("ids", "images", "captions")))
    common.stdout.print(table)
    if report.problems:
        common.stdout.print(f"[yellow]{len(report.problems)} problem(s); those entries were skipped:[/]")
        for problem in report.problems[:_SHOWN_PROBLEMS]:
            where = f" {problem.path}" if problem.path else ""
            common.stdout.print(
                f"  entry {problem.entry}{where}: {problem.problem}", highlight=False, markup=False
            )
        if len(report.problems) > _SHOWN_PROBLEMS:
            common.stdout.print(
                f"  ... and {len(report.problems) - _SHOWN_PROBLEMS} more (all in --json output)"
            )
    else:
        common.stdout.print("[green]no problems[/]")
    if report.truncated_captions:
        common.stdout.print(f"{report.truncated_captions} caption(s) longer than 77 tokens were cut")
    if check:
        common.stdout.print("checked only; nothing written")
    else:
        common.stdout.print(
            f"prepared dataset written to {report.out} (fingerprint {report.fingerprint})", highlight=False,
            markup=False,
        )
