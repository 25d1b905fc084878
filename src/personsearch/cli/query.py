"""``personsearch query``: rank the images of a gallery index by a description."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text

from personsearch.cli.common import JsonOption, print_json, stderr, stdout, terminal_safe
from personsearch.errors import InputError


def query(
    texts: Annotated[
        list[str] | None,
        typer.Argument(
            help='Descriptions to search for, e.g. "woman in a red coat" (one or more).', show_default=False
        ),
    ] = None,
    index: Annotated[
        Path | None,
        typer.Option(
            "--index", "-i", help="Index folder (default: RUN/index of the most recent run that has one)."
        ),
    ] = None,
    run: Annotated[
        Path | None,
        typer.Option(
            "--run",
            help="Model to encode with (default: the one the index header records); must match the index.",
        ),
    ] = None,
    k: Annotated[
        int, typer.Option("-k", "--top-k", min=1, help="Images per query (all when the gallery is smaller).")
    ] = 10,
    file: Annotated[
        Path | None, typer.Option("--file", "-f", help="Read queries from a text file, one per line.")
    ] = None,
    sheet: Annotated[
        Path | None, typer.Option("--sheet", help="Write the top-k images as a contact sheet PNG.")
    ] = None,
    faiss: Annotated[
        bool, typer.Option("--faiss", help="Search the index's approximate FAISS index.")
    ] = False,
    nprobe: Annotated[
        int | None, typer.Option("--nprobe", min=1, help="FAISS lists to probe (implies --faiss).")
    ] = None,
    check_recall: Annotated[
        bool,
        typer.Option(
            "--check-recall", help="Report the FAISS recall@k against exact search for these queries."
        ),
    ] = False,
    verify: Annotated[
        bool, typer.Option("--verify/--no-verify", help="Check every shard's sha256 before searching.")
    ] = True,
    precision: Annotated[str, typer.Option("--precision", help="fp32, bf16 or fp16 (CUDA).")] = "fp32",
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:N.")] = "cpu",
    json_: JsonOption = False,
) -> None:
    """Search a gallery index by description.

    With --json: {"query", "results": [{"rank", "score", "path", "pid"}]} for one query, a list of
    those for several; with --check-recall they sit under "queries" beside "recall_at_k".
    """
    from personsearch.accel import check_precision, resolve_device
    from personsearch.retrieval.ann import recall_at_k
    from personsearch.retrieval.index import GalleryIndex
    from personsearch.retrieval.query import (
        check_result_count,
        clean_queries,
        encode_queries,
        find_index,
        model_for_index,
        rank_results,
        read_queries,
        render_query_sheet,
    )
    from personsearch.sheet import check_sheet_path, check_sheet_size, check_sheet_target
    from personsearch.settings import resolve_settings

    if sheet is not None:
        check_sheet_path(sheet, "--sheet")  # before the index and the model are loaded
    given = list(texts or [])
    if given:
        given = clean_queries(given)
    if file is not None:
        given += read_queries(file)
    if not given:
        raise InputError(
            "no query text given", hint='pass a description, e.g. "woman in a red coat", or --file'
        )
    if sheet is not None:
        check_sheet_size(len(given), k)
    torch_device = resolve_device(device)
    check_precision(precision, torch_device)
    index_path, automatic = find_index(index, resolve_settings().runtime.output_dir)
    if automatic:
        stderr.print(terminal_safe(f"using index {index_path}"), style="dim")
    if sheet is not None:
        check_sheet_target(sheet, owned=[("the index", index_path)])
    gallery = GalleryIndex.open(index_path, verify=verify)
    check_result_count(len(given), k, len(gallery))  # before the model loads
    model = model_for_index(gallery, run)
    if sheet is not None:  # never over a gallery image, the weights or a run's files
        check_sheet_target(
            sheet,
            owned=[("the gallery's image folder", gallery.image_root), ("the model weights", model.weights)],
            runs=[("the run", model.source)],
        )
    features, truncated = encode_queries(model, given, device=torch_device, precision=precision)
    for number, cut in enumerate(truncated, 1):
        if cut:
            stderr.print(
                Text(
                    f"note: query {number} is longer than the model's {model.settings.model.text_length} "
                    "tokens; "
                    "only its beginning is searched",
                    style="yellow",
                )
            )
    backend = "faiss" if faiss or nprobe is not None else "exact"
    results = rank_results(gallery, given, features, k, backend=backend, nprobe=nprobe, truncated=truncated)
    recall = recall_at_k(gallery, features, min(k, len(gallery)), nprobe) if check_recall else None
    if sheet is not None:
        render_query_sheet(gallery, results, sheet)
    if json_:
        objects: Any = [r.to_json() for r in results]
        if len(objects) == 1:
            objects = objects[0]
        if recall is not None:
            objects = {"recall_at_k": round(recall, 6), "k": k, "queries": objects}
        print_json(objects)
        return
    for result in results:
        _table(result, gallery_size=len(gallery))
    if recall is not None:
        stderr.print(f"FAISS recall@{k} against exact search: {recall:.3f} over {len(given)} queries")
    if sheet is not None:
        stderr.print(terminal_safe(f"sheet written to {sheet}"))


def _table(result: Any, gallery_size: int) -> None:
    from rich.table import Table

    title = result.query if len(result.query) <= 200 else result.query[:199] + "…"
    table = Table(title=terminal_safe(title), title_justify="left")
    table.add_column("rank", justify="right")
    table.add_column("score", justify="right")
    table.add_column("path", overflow="fold")
    table.add_column("identity", justify="right")
    for hit in result.results:
        table.add_row(
            str(hit.rank), f"{hit.score:.4f}", terminal_safe(hit.path), "" if hit.pid is None else str(hit.pid)
        )
    if not result.results:
        table.caption = f"no results in a gallery of {gallery_size}"
    stdout.print(table)
