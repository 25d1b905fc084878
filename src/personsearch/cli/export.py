"""``personsearch export``: embed an image folder or a prepared split into a gallery index."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import ProgressColumn
from rich.text import Text

from personsearch.cli.common import (
    PRECISION_HELP,
    JsonOption,
    SetOption,
    print_json,
    state,
    stderr,
    stdout,
    terminal_safe,
)
from personsearch.errors import InputError


def export(
    out: Annotated[Path, typer.Option("--out", "-o", help="Index folder to write (e.g. RUN/index).")],
    run: Annotated[Path | None, typer.Argument(
        help="Run folder, a checkpoint inside one, or an IRRA run folder (or --weights).", show_default=False)] = None,
    images: Annotated[
        Path | None, typer.Option("--images", help="Folder of images (searched recursively).")
    ] = None,
    data: Annotated[
        Path | None, typer.Option("--data", "-d", help="Prepared dataset (records identities).")
    ] = None,
    split: Annotated[str | None, typer.Option("--split", help="Split of --data: train, val or test.")] = None,
    append: Annotated[
        bool, typer.Option("--append", help="Embed only new or changed files into a new shard.")
    ] = False,
    precision: Annotated[str, typer.Option("--precision", help=PRECISION_HELP)] = "auto",
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=1, help="Images per batch.")] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", min=0, help="Image-decoding worker processes.")
    ] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N.")] = "auto",
    faiss: Annotated[
        str | None,
        typer.Option(
            "--faiss",
            help='Also build an approximate FAISS index, e.g. "IVF4096,PQ64" (needs personsearch[faiss]).',
        ),
    ] = None,
    nprobe: Annotated[
        int, typer.Option("--nprobe", min=1, help="Default FAISS lists probed per query.")
    ] = 16,
    weights: Annotated[str | None, typer.Option(
        "--weights", help="Plain CLIP weights instead of a run (zero-shot): a file, folder or ViT-B/16.")] = None,
    nproc: Annotated[int | None, typer.Option(
        "--nproc", min=1, help="Embed with N processes under torchrun, each a share of the files (new index).")
    ] = None,
    compile_: Annotated[bool, typer.Option(
        "--compile", help="Run the image encoder through torch.compile: faster after a one-time compile "
        "(~15-40 s, cached); for large galleries.")] = False,
    set_: SetOption = None,
    json_: JsonOption = False,
) -> None:
    """Embed every image of a folder (or a prepared split) into a searchable index."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from personsearch.engine import dist
    from personsearch.retrieval.export import check_export, export_run

    if nproc is not None and nproc > 1:
        dist.check_nproc(nproc, device)
        if append:
            raise InputError("--append runs in one process", hint="drop --nproc to append")
        # Input errors once, with exit 2, not from every process:
        check_export(run, out, images=images, data=data, split=split, append=append, weights=weights)
        code = dist.launch_torchrun(nproc, None)
        if code:
            raise typer.Exit(code)
        return
    info = dist.init_distributed(_device_of(device)) if dist.launched_by_torchrun() else dist.DistInfo()
    try:
        with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), _RateColumn(),
                      TimeRemainingColumn(), console=stderr, disable=state.quiet or json_ or not info.is_main) \
                as progress:
            task = progress.add_task("embedding", total=None)
            report = export_run(run, out, images=images, data=data, split=split, append=append, device=device,
                                workers=workers, weights=weights, sets=set_ or (), batch_size=batch_size,
                                precision=precision, faiss=faiss, nprobe=nprobe, compile=compile_ or None,
                                on_total=lambda n: progress.update(task, total=n),
                                progress=lambda n: progress.advance(task, n))
    finally:
        dist.shutdown_distributed()
    if not info.is_main:
        return
    if json_:
        print_json(report.to_json())
        return
    _render(report)


def _device_of(device: str) -> Any:
    from personsearch.accel import resolve_device

    return resolve_device(device)


def _render(report: Any) -> None:
    from rich.table import Table

    table = Table(title=terminal_safe(f"index {report.index}"), show_header=False)
    table.add_column("what")
    table.add_column("value", overflow="fold")
    table.add_row("images embedded", str(report.indexed))
    if report.appended:
        table.add_row("already indexed", str(report.unchanged))
    table.add_row("images in index", f"{report.total} ({report.shards} shards)")
    table.add_row("skipped", str(len(report.skipped)))
    table.add_row("time", f"{report.seconds:.1f} s ({report.images_per_s:.1f} images/s)")
    table.add_row("image root", terminal_safe(report.image_root))
    table.add_row("model", terminal_safe(report.fingerprint))
    table.add_row("precision", terminal_safe(f"{report.precision} ({report.precision_reason})"))
    if report.faiss:
        table.add_row("faiss", terminal_safe(f"{report.faiss['factory']} (nprobe {report.faiss['nprobe']})"))
    stdout.print(table)
    for path, reason in report.skipped[:20]:
        stderr.print(terminal_safe(f"skipped {path}: {reason}"), style="yellow")
    if len(report.skipped) > 20:
        stderr.print(f"[yellow]... and {len(report.skipped) - 20} more skipped (see --json)[/]")


class _RateColumn(ProgressColumn):
    """Images per second over the recent batches."""

    def render(self, task: Any) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.1f} img/s" if speed else "- img/s", style="cyan")
