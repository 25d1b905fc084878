"""``personsearch eval``: R@K / mAP / mINP of a trained model on a prepared split, with pictures."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from personsearch.cli.common import JsonOption, print_json, state, stderr, stdout, terminal_safe
from personsearch.errors import InputError


def evaluate(
    run: Annotated[Path, typer.Argument(help="Run folder, a checkpoint inside one, or an IRRA run folder.")],
    data: Annotated[Path | None, typer.Option("--data", "-d", help="Prepared dataset (default: the run's).")] = None,
    split: Annotated[str | None, typer.Option("--split", help="test or val (default: the run's eval.split).")] = None,
    unmatched: Annotated[str | None, typer.Option(
        "--unmatched", help="Queries with no true match: exclude or miss (default: the run's eval.unmatched).")] = None,
    i2t: Annotated[bool, typer.Option("--i2t", help="Also report image→text retrieval.")] = False,
    sheet: Annotated[Path | None, typer.Option("--sheet", help="Write a contact sheet PNG of sample queries.")] = None,
    queries: Annotated[int, typer.Option("--queries", min=1, max=100, help="Queries on the sheet.")] = 8,
    precision: Annotated[str, typer.Option("--precision", help="fp32, bf16 or fp16 (CUDA).")] = "fp32",
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=1, help="Embedding batch size.")] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N.")] = "auto",
    workers: Annotated[int | None, typer.Option("--workers", min=0, help="Dataloader workers.")] = None,
    json_: JsonOption = False,
) -> None:
    """Evaluate text→image retrieval; appends the result to the run's metrics.jsonl."""
    import json
    import time

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from personsearch.accel import check_precision, resolve_device
    from personsearch.data.prepared import PreparedDataset
    from personsearch.engine.evaluate import evaluate_split, sheet_rows
    from personsearch.io import append_line
    from personsearch.runs import load_trained
    from personsearch.sheet import check_sheet_path, check_sheet_target, render_contact_sheet

    if split is not None and split not in ("test", "val"):
        raise InputError(f"--split {split!r}: choose test or val")
    if unmatched is not None and unmatched not in ("exclude", "miss"):
        raise InputError(f"--unmatched {unmatched!r}: choose exclude or miss")
    if sheet is not None:
        check_sheet_path(sheet, "--sheet")  # before the evaluation, not after it
    model = load_trained(run)
    settings = model.settings
    split = split or settings.eval.split
    if unmatched is not None:
        settings.eval.unmatched = unmatched  # type: ignore[assignment]
    if workers is not None:
        settings.data.workers = workers
    data_dir = data or (Path(settings.data.root) if settings.data.root else None)
    if data_dir is None:
        raise InputError(f"{run} does not record its dataset", hint="pass --data PREPARED")
    prepared = PreparedDataset.load(data_dir)
    if sheet is not None:  # never over the dataset, its images, the weights or the run's files
        check_sheet_target(
            sheet,
            owned=[("the prepared dataset", data_dir), ("the raw dataset", prepared.raw_root),
                   ("the weights", model.weights)],
            runs=[("the run", model.source)],
        )
    torch_device = resolve_device(device)
    check_precision(precision, torch_device)
    model.clip.to(torch_device)
    queries_total = len(prepared.caption_tokens(split))
    total = queries_total + len(prepared.entries(split))
    started = time.monotonic()
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=stderr, disable=state.quiet or json_) as progress:
        task = progress.add_task(f"embedding {split}", total=total)
        result = evaluate_split(model.clip, prepared, split, settings, device=torch_device, precision=precision,
                                i2t=i2t, batch_size=batch_size, keep_similarity=sheet is not None,
                                progress=lambda n: progress.advance(task, n))
    seconds = time.monotonic() - started
    record = {"eval": split, "data": prepared.fingerprint, "weights": model.weights.name,
              "precision": precision, "t2i": result.t2i, **({"i2t": result.i2t} if i2t else {}),
              "seconds": round(seconds, 2), **result.info}
    if model.kind == "run":
        append_line(model.source / "metrics.jsonl", json.dumps(record))
    if sheet is not None:
        rows = sheet_rows(result, prepared.raw_root, queries=queries, seed=settings.runtime.seed)
        render_contact_sheet(rows, sheet, title=f"{model.source.name} on {prepared.name} {split}: "
                                                f"R1 {result.t2i['R1']:.2f}")
    if json_:
        print_json({"t2i": result.t2i, **({"i2t": result.i2t} if i2t else {}), "split": split,
                    "data": prepared.fingerprint, "skipped_images": result.info.get("skipped_images", 0),
                    "queries_without_match": result.info.get("queries_without_match", 0),
                    "unmatched": settings.eval.unmatched,
                    **({"i2t_queries_without_match": result.info["i2t_queries_without_match"]} if i2t else {}),
                    **({"sheet": str(sheet)} if sheet else {})})
        return
    _table(f"{model.source.name} on {prepared.name} ({split}, {queries_total} queries)", result.t2i, result.i2t)
    unreadable = result.info.get("skipped_images")
    if unreadable:
        stderr.print(f"[yellow]{unreadable} gallery images could not be read and were left out[/]")
    skipped = int(result.info.get("queries_without_match", 0))
    how = "counted as misses" if settings.eval.unmatched == "miss" else "excluded"
    stdout.print(f"queries_without_match: {skipped}" + (f" ({how}, eval.unmatched={settings.eval.unmatched})"
                                                         if skipped else ""))
    if sheet is not None:
        stderr.print(terminal_safe(f"sheet written to {sheet}"))


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
