"""``personsearch eval``: R@K / mAP / mINP of a trained model on a prepared split, with pictures."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from personsearch.cli.common import PRECISION_HELP, JsonOption, print_json, state, stderr, stdout, terminal_safe


def evaluate(
    run: Annotated[Path, typer.Argument(help="Run folder, a checkpoint inside one, or an IRRA run folder.")],
    data: Annotated[Path | None, typer.Option("--data", "-d", help="Prepared dataset (default: the run's).")] = None,
    split: Annotated[str | None, typer.Option("--split", help="test or val (default: the run's eval.split).")] = None,
    unmatched: Annotated[str | None, typer.Option(
        "--unmatched", help="Queries with no true match: exclude or miss (default: the run's eval.unmatched).")] = None,
    i2t: Annotated[bool, typer.Option("--i2t", help="Also report image→text retrieval.")] = False,
    sheet: Annotated[Path | None, typer.Option("--sheet", help="Write a contact sheet PNG of sample queries.")] = None,
    queries: Annotated[int, typer.Option("--queries", min=1, max=100, help="Queries on the sheet.")] = 8,
    precision: Annotated[str, typer.Option("--precision", help=PRECISION_HELP)] = "auto",
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=1, help="Embedding batch size.")] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N.")] = "auto",
    workers: Annotated[int | None, typer.Option("--workers", min=0, help="Dataloader workers.")] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Evaluate even on images the run was trained on (figures inflated).")] = False,
    compile_: Annotated[bool, typer.Option(
        "--compile", help="Run the image encoder through torch.compile: faster after a one-time compile "
        "(~15-40 s, cached); for large galleries.")] = False,
    json_: JsonOption = False,
) -> None:
    """Evaluate text→image retrieval; appends the result to the run's metrics.jsonl."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from personsearch.engine.evaluate_run import evaluate_run

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=stderr, disable=state.quiet or json_) as progress:
        task = progress.add_task(f"embedding {split or ''}".strip(), total=None)
        done = evaluate_run(run, data=data, split=split, unmatched=unmatched, i2t=i2t, sheet=sheet,
                            sheet_queries=queries, precision=precision, batch_size=batch_size, device=device,
                            workers=workers, force=force, compile=compile_ or None,
                            on_total=lambda n: progress.update(task, total=n),
                            progress=lambda n: progress.advance(task, n))
    if json_:
        print_json(done.to_json())
        return
    result = done.result
    _table(f"{done.model.source.name} on {done.prepared.name} ({done.split}, {done.queries} queries)",
           result.t2i, result.i2t)
    stderr.print(terminal_safe(f"precision: {done.precision} ({done.precision_reason})"))
    if done.shared_training_images:
        stderr.print(f"[yellow]warning:[/] {done.shared_training_images} of these images are training images "
                     "of the run (--force): the figures are inflated")
    unreadable = result.info.get("skipped_images")
    if unreadable:
        stderr.print(f"[yellow]{unreadable} gallery images could not be read and were left out[/]")
    skipped = int(result.info.get("queries_without_match", 0))
    how = "counted as misses" if done.unmatched == "miss" else "excluded"
    stdout.print(f"queries_without_match: {skipped}" + (f" ({how}, eval.unmatched={done.unmatched})"
                                                         if skipped else ""))
    if done.sheet is not None:
        stderr.print(terminal_safe(f"sheet written to {done.sheet}"))


def _table(title: str, t2i: dict[str, float], i2t: dict[str, float]) -> None:
    from rich.table import Table

    table = Table(title=terminal_safe(title))  # run and dataset names may hold "[...]": shown, not parsed
    table.add_column("direction")
    keys = ("R1", "R5", "R10", "mAP", "mINP")
    for key in keys:
        table.add_column(key, justify="right")
    table.add_row("text→image", *(f"{t2i[k]:.2f}" for k in keys))
    if i2t:
        table.add_row("image→text", *(f"{i2t[k]:.2f}" for k in keys))
    stdout.print(table)
