"""``personsearch demo``: every stage of the flow on a synthetic dataset, in minutes, on a CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.text import Text

from personsearch.cli.common import JsonOption, SetOption, print_json, state, stderr, stdout, terminal_safe

_KEYS = ("R1", "R5", "R10", "mAP", "mINP")


def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for everything the demo writes.")] = Path(
        "runs/demo"
    ),
    minutes: Annotated[float | None, typer.Option(
        "--minutes", min=0.05, help="Training budget (wall minutes) per run [default: 8.5].",
        show_default=False)] = None,
    seed: Annotated[int, typer.Option("--seed", min=0, max=2**32 - 1, help="Seed for data and training.")] = 0,
    masking: Annotated[str, typer.Option("--masking", help="attention (AGM) or random (IRRA).")] = "attention",
    compare_masking: Annotated[bool, typer.Option(
        "--compare-masking", help="Train random and attention-guided masking with the same seed and budget.")] = False,
    ids: Annotated[int, typer.Option("--ids", min=8, max=100_000, help="Identities in the synthetic dataset.")] = 800,
    workers: Annotated[int, typer.Option(
        "--workers", min=0, max=256, help="Worker processes for drawing and loading.")] = 2,
    set_: SetOption = None,
    json_: JsonOption = False,
) -> None:
    """Draw data, train, evaluate, export an index and answer a query the test gallery can answer."""
    from personsearch.cli.progress import training_progress
    from personsearch.demo import DemoHooks, run_demo

    quiet = state.quiet or json_
    progresses = []

    def train_callbacks(strategy: str):  # type: ignore[no-untyped-def]
        callbacks, progress = training_progress(quiet)
        if progress is not None:
            progresses.append(progress)
        return callbacks

    def on_stage(text: str) -> None:
        while progresses:
            progresses.pop().stop()
        if not quiet:
            stderr.print(f"[bold cyan]▶[/] {text}")

    try:
        budget = {} if minutes is None else {"minutes": minutes}  # None: run_demo's DEMO_MINUTES
        result = run_demo(out, **budget, seed=seed, masking=masking, compare_masking=compare_masking,
                          ids=ids, workers=workers, sets=list(set_ or []),
                          hooks=DemoHooks(on_stage=on_stage, train=train_callbacks))
    finally:
        while progresses:
            progresses.pop().stop()
    if json_:
        print_json(result.to_json())
        return
    _render(result)


def _render(result) -> None:  # type: ignore[no-untyped-def]
    from rich.table import Table

    table = Table(title=terminal_safe(f"test split of the synthetic set ({result.runs[-1].run})"))
    table.add_column("masking")
    for key in _KEYS:
        table.add_column(key, justify="right")
    table.add_column("steps", justify="right")
    table.add_column("train s", justify="right")
    for run in result.runs:
        table.add_row(run.masking, *(f"{run.metrics.get(k, float('nan')):.2f}" for k in _KEYS), str(run.steps),
                      f"{run.seconds:.0f}")
    stdout.print(table)
    for run in result.runs:
        if run.stopped == "max_minutes":
            stderr.print(Text(f"note: the time budget stopped training ({run.masking} masking) after {run.epochs} "
                              f"of its epochs ({run.steps} steps); the figures are for the best checkpoint so "
                              "far (give --minutes more time for the whole schedule)", style="yellow"))
    hits = Table(title=terminal_safe(f"query: {result.query!r}"))
    for column in ("rank", "score", "path", "pid"):
        hits.add_column(column)
    for hit in result.top:
        hits.add_row(str(hit["rank"]), f"{hit['score']:.3f}", terminal_safe(hit["path"]), str(hit["pid"]))
    stdout.print(hits)
    if result.matching is not None:
        named = ", ".join(f"{name} {value}" for name, value in result.named.items())
        held = "" if result.holders is None else (f"; the test gallery holds {result.holders} such "
                                                  f"image{'' if result.holders == 1 else 's'}")
        stdout.print(f"{result.matching} of {len(result.top)} hits match every attribute the query names "
                     f"({named}{held}); the sheet {result.sheet} frames them green", markup=False)
    run = result.runs[-1].run
    # Paths are shown as written (markup=False): a folder named "x[1]" keeps its "[1]" in the commands.
    stdout.print(Text.assemble("\nEverything is under ", (str(result.out), "bold"),
                               f" ({result.seconds / 60:.1f} min). Try next:"))
    for number, text in enumerate(result.suggestions, 2):  # combinations the test gallery holds
        sheet = result.out / f"query{number}.png"
        stdout.print(f"  personsearch query \"{text}\" --index {run / 'index'} --sheet {sheet}", markup=False)
    stdout.print(f"  personsearch eval {run} --sheet {result.out / 'eval.png'}", markup=False)
    stdout.print(f"  personsearch explain-mask \"a woman in a red coat and black boots\" --run {run}", markup=False)
    stdout.print(f"  open {result.sheet}", markup=False)
