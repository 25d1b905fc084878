"""``personsearch query``: rank the images of a gallery index by a description.

A query is usually the whole life of its process, so its start and its end are kept short: the
library loads only the text encoder; automatic garbage collection pauses while torch is imported
and the model loaded (its passes find nothing to free: about 0.15 s); and at exit the objects made
(torch's thousands of modules, the model) are left to the operating system instead of being walked
by the interpreter's final garbage collections (``gc.freeze`` at exit: about 0.4 s of a 2.5 s query
on 2 cores; see benchmarks/bench_query_startup.py). Nothing is written at exit; run in-process
(tests), collection resumes when the verb returns and the freeze happens at the host's own exit.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text

from personsearch.cli.common import JsonOption, print_json, stderr, stdout, terminal_safe

Option = typer.Option


def query(
    texts: Annotated[
        list[str] | None,
        typer.Argument(help='Descriptions to search for, e.g. "woman in a red coat" (one or more).',
                       show_default=False),
    ] = None,
    index: Annotated[Path | None, Option(
        "--index", "-i", help="Index folder (default: RUN/index of the most recent run that has one).")] = None,
    run: Annotated[Path | None, Option(
        "--run",
        help="Model to encode with (default: the one the index header records); must match the index.")] = None,
    weights: Annotated[str | None, Option(
        "--weights", help="Plain CLIP weights the index was exported with (zero-shot; default: recorded).")] = None,
    k: Annotated[int, Option(
        "-k", "--top-k", min=1, help="Images per query (all when the gallery is smaller).")] = 10,
    file: Annotated[Path | None, Option("--file", "-f", help="Read queries from a text file, one per line.")] = None,
    sheet: Annotated[Path | None, Option("--sheet", help="Write the top-k images as a contact sheet PNG.")] = None,
    faiss: Annotated[bool, Option("--faiss", help="Search the index's approximate FAISS index.")] = False,
    nprobe: Annotated[int | None, Option("--nprobe", min=1, help="FAISS lists to probe (implies --faiss).")] = None,
    check_recall: Annotated[bool, Option(
        "--check-recall", help="Report the FAISS recall@k against exact search for these queries.")] = False,
    verify: Annotated[bool, Option(
        "--verify/--no-verify", help="Check the index's sha256 (row tables; all files of a small index).")] = True,
    precision: Annotated[str, Option("--precision", help="fp32, bf16, fp16 (CUDA) or auto.")] = "fp32",
    device: Annotated[str, Option("--device", help="auto, cpu, cuda, cuda:N.")] = "auto",
    json_: JsonOption = False,
) -> None:
    """Search a gallery index by description.

    With --json: {"query", "results": [{"rank", "score", "path", "pid"}]} for one query, a list of
    those for several; with --check-recall they sit under "queries" beside "recall_at_k".
    """
    _freeze_at_exit()
    with _collection_paused():
        from personsearch.retrieval.query import UNKNOWN_WORDS_NOTE, run_queries

        found = run_queries(
            texts or [], index=index, run=run, weights=weights, k=k, query_file=file, sheet=sheet,
            backend="faiss" if faiss or nprobe is not None else "exact", nprobe=nprobe, check_recall=check_recall,
            verify=verify, device=device, precision=precision,
        )
    if found.index_chosen:
        stderr.print(terminal_safe(f"using index {found.index.path}"), style="dim")
    length = found.model.settings.model.text_length
    for number, result in enumerate(found.results, 1):
        if result.truncated:
            stderr.print(Text(f"note: query {number} is longer than the model's {length} tokens; "
                              "only its beginning is searched", style="yellow"))
        if result.known_words is False:
            stderr.print(Text(f"note: query {number}: {UNKNOWN_WORDS_NOTE}", style="yellow"))
    if json_:
        print_json(found.to_json())
        return
    for result in found.results:
        _table(result, gallery_size=len(found.index))
    if found.recall_at_k is not None:
        stderr.print(f"FAISS recall@{k} against exact search: {found.recall_at_k:.3f} "
                     f"over {len(found.results)} queries")
    if found.sheet is not None:
        stderr.print(terminal_safe(f"sheet written to {found.sheet}"))


_freezing: list[bool] = []


@contextlib.contextmanager
def _collection_paused() -> Iterator[None]:
    """No automatic garbage collection while torch is imported and the model loaded: their hundreds
    of thousands of new objects set off full collections that find nothing to free."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _freeze_at_exit() -> None:
    """At interpreter exit, move every object out of the garbage collector's reach first (once)."""
    if not _freezing:
        _freezing.append(True)
        atexit.register(gc.freeze)


def _table(result: Any, gallery_size: int) -> None:
    from rich.table import Table

    title = result.query if len(result.query) <= 200 else result.query[:199] + "…"
    table = Table(title=terminal_safe(title), title_justify="left")
    table.add_column("rank", justify="right")
    table.add_column("score", justify="right")
    table.add_column("path", overflow="fold")
    table.add_column("identity", justify="right")
    for hit in result.results:
        pid = "" if hit.pid is None else str(hit.pid)
        table.add_row(str(hit.rank), f"{hit.score:.4f}", terminal_safe(hit.path), pid)
    if not result.results:
        table.caption = f"no results in a gallery of {gallery_size}"
    stdout.print(table)
