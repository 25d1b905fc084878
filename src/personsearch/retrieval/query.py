"""Search a gallery index by description: encode the text with the index's own model, rank.

The model must be the one that made the index: its fingerprint (weights + image size, stride,
text length, tokenizer) is compared with the index header before anything is encoded. Captions
are tokenized exactly as in training (CLIP BPE, cut to the model's text length with EOT last).

``run_queries`` (the one-shot ``personsearch query``) loads the text encoder only
(``TEXT_TOWERS``): a text query needs nothing else, and from safetensors weights only those tensors
are read. ``model_for_index`` loads both encoders unless told ``towers=TEXT_TOWERS``, so a caller
that also searches by photo (a server) gets a model that embeds images; ``search_text`` takes
either.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from personsearch.errors import InputError
from personsearch.retrieval.index import HEADER_NAME, GalleryIndex
from personsearch.retrieval.query_sheet import (
    attribute_matches,
    describe_matches,
    gallery_attributes,
    gallery_holders,
    image_file,
    render_query_sheet,
)
from personsearch.retrieval.results import UNKNOWN_WORDS_NOTE, QueryHit, QueryResult
from personsearch.runs import INDEX_DIR, latest_run

log = logging.getLogger(__name__)

#: Where an index lives inside a run folder, so ``query`` without ``--index`` can find it.
RUN_INDEX_DIR = INDEX_DIR
#: The encoders a text query needs, and both (what embedding images needs as well).
TEXT_TOWERS = ("text",)
ALL_TOWERS = ("image", "text")


def clean_queries(texts: Sequence[str], where: str = "query") -> list[str]:
    """The queries as given, refusing empty or whitespace-only ones by number."""
    if not texts:
        raise InputError(
            "no query text given", hint='pass a description, e.g. "woman in a red coat", or --file'
        )
    for number, text in enumerate(texts, 1):
        if not isinstance(text, str) or not text.strip():
            label = where if len(texts) == 1 else f"{where} {number}"
            raise InputError(f"{label} is empty", hint="describe the person to search for")
    return list(texts)


#: A query file larger than this, or holding more queries, is refused: every query is encoded,
#: ranked and printed, so an endless or huge file (/dev/zero, a log) would exhaust memory.
MAX_QUERY_FILE_BYTES = 16 * 1024 * 1024
MAX_QUERIES = 100_000


def read_queries(path: str | Path) -> list[str]:
    """One query per line of a UTF-8 text file; blank lines are skipped, all blank is an error.

    Only a regular file is read (a FIFO or a device would hang or never end), and at most
    ``MAX_QUERY_FILE_BYTES`` of it and ``MAX_QUERIES`` lines.
    """
    from personsearch.io import NotRegularFile, open_regular

    path = Path(path)
    try:
        with open_regular(path) as handle:
            raw = handle.read(MAX_QUERY_FILE_BYTES + 1)
    except FileNotFoundError:
        raise InputError(f"query file not found: {path}") from None
    except NotRegularFile:
        raise InputError(
            f"query file {path} is not a regular file (a FIFO, device, socket or folder)",
            hint="save the queries to a text file, one per line",
        ) from None
    except OSError as exc:
        raise InputError(f"cannot read query file {path}: {exc.strerror or exc}") from None
    if len(raw) > MAX_QUERY_FILE_BYTES:
        raise InputError(
            f"query file {path} is larger than {MAX_QUERY_FILE_BYTES // (1024 * 1024)} MiB",
            hint="split it into smaller files of one description per line",
        )
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise InputError(f"{path} line {line} is not UTF-8 text", hint="save the file as UTF-8") from None
    lines = [line.strip() for line in text.splitlines()]
    queries = [line for line in lines if line]
    if not queries:
        raise InputError(
            f"{path} holds no queries (every line is blank)", hint="write one description per line"
        )
    if len(queries) > MAX_QUERIES:
        raise InputError(
            f"query file {path} holds {len(queries)} queries, more than {MAX_QUERIES}",
            hint="split it into smaller files",
        )
    return queries


#: Results (queries x images) one call returns at most: each is a Python object, printed or
#: written as JSON, so -k 10**12 over a large gallery with many queries would exhaust memory.
MAX_RESULTS = 2_000_000


def check_result_count(queries: int, k: int, gallery_size: int) -> None:
    """Refuse (exit 2) before encoding a search whose results (queries x min(k, gallery)) exceed MAX_RESULTS."""
    total = queries * min(k, gallery_size)
    if total > MAX_RESULTS:
        raise InputError(
            f"{queries} queries x top {min(k, gallery_size)} of {gallery_size} images is {total} results, "
            f"more than {MAX_RESULTS}",
            hint="pass a smaller -k, or fewer queries per call",
        )


def find_index(index: str | Path | None, output_dir: str | Path = "runs") -> tuple[Path, bool]:
    """``index`` itself, or (when None) ``<run>/index`` of the most recent run under
    ``output_dir`` that has one; the flag says whether it was chosen automatically."""
    if index is not None:
        return Path(index), False
    run = latest_run(output_dir, require=f"{RUN_INDEX_DIR}/{HEADER_NAME}")
    if run is None:
        raise InputError(
            f"no run under {output_dir}/ has an index ({RUN_INDEX_DIR}/{HEADER_NAME})",
            hint="pass --index INDEX, or export one with `personsearch export RUN --out RUN/index`",
        )
    return run / RUN_INDEX_DIR, True


def search_target(index: str | Path | None, device: str, precision: str,
                  output_dir: str | Path | None = None) -> tuple[torch.device, Path, bool]:
    """The device (``precision`` checked on it) and the index to search: ``index``, or the newest
    run's under ``output_dir`` (the settings' ``runtime.output_dir`` when None); the flag says
    whether the index was chosen automatically."""
    from personsearch.accel import check_precision, resolve_device

    torch_device = resolve_device(device)
    check_precision(precision, torch_device)
    if output_dir is None:
        from personsearch.settings import resolve_settings

        output_dir = resolve_settings().runtime.output_dir
    index_path, chosen = find_index(index, output_dir)
    return torch_device, index_path, chosen


def model_for_index(index: GalleryIndex, run: str | Path | None = None, weights: str | Path | None = None,
                    *, towers: Sequence[str] = ALL_TOWERS) -> Any:
    """The ``TrainedModel`` that made ``index``: ``run`` (a trained run) or ``weights`` (plain CLIP
    weights, zero-shot) when given, otherwise the model the index header records. A model with
    another fingerprint is refused (exit 2). ``towers=TEXT_TOWERS`` loads the text encoder only
    (enough for text queries); the default loads both."""
    from personsearch.runs import load_trained

    if run is not None and weights is not None:
        raise InputError("give either --run or --weights, not both")
    if run is not None or weights is not None:
        model = load_trained(run, towers=towers) if run is not None else _weights_for(index, weights, towers)
        if model.fingerprint != index.model_fingerprint:
            made_by = index.model_info.get("run", "an unrecorded model")
            raise InputError(
                f"index {index.path} was made by another model ({made_by}, fingerprint "
                f"{index.model_fingerprint}) than {run} (fingerprint {model.fingerprint})",
                hint="query with the run that exported the index, or export the gallery again with this run",
            )
        return model
    info = index.model_info
    source = info.get("weights") if info.get("kind") == "run" else info.get("run")
    if not source:
        raise InputError(f"index {index.path} does not record which model made it", hint="pass --run RUN")
    if not isinstance(source, str) or "\x00" in source:
        from personsearch.retrieval.index import damaged

        raise damaged(index.path, f"{HEADER_NAME} records the model as {source!r:.200}, not a path")
    if not Path(source).exists():
        raise InputError(
            f"the model that made index {index.path} is gone: {source} does not exist",
            hint="pass --run RUN with the (moved) run folder",
        )
    model = (_weights_for(index, source, towers) if info.get("kind") == "weights"
             else load_trained(source, towers=towers))
    if model.fingerprint != index.model_fingerprint:
        raise InputError(
            f"{source} has changed since index {index.path} was made (fingerprint {model.fingerprint}, "
            f"the index records {index.model_fingerprint})",
            hint="export the gallery again, or pass --run with the original weights",
        )
    return model


def _weights_for(index: GalleryIndex, source: str | Path, towers: Sequence[str] = ALL_TOWERS) -> Any:
    """Plain CLIP weights with the preprocessing the index records (zero-shot search)."""
    from personsearch.runs import load_weights

    info = index.model_info
    size, stride, length = info.get("image_size"), info.get("stride"), info.get("text_length")
    return load_weights(source, image_size=size if isinstance(size, list) else None,
                        stride=stride if isinstance(stride, int) else None,
                        text_length=length if isinstance(length, int) else None, towers=towers)


def encode_queries(
    model: Any,
    texts: Sequence[str],
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    batch_size: int = 256,
) -> tuple[torch.Tensor, list[bool]]:
    """Text features [Q, D] (float32) and, per query, whether it was cut to the context length."""
    from personsearch.accel import check_precision
    from personsearch.retrieval.embed import embed_texts
    from personsearch.text import default_tokenizer

    device = torch.device(device)
    check_precision(precision, device)
    length = model.settings.model.text_length
    lengths: list[int] = []
    ids = default_tokenizer().token_matrix(list(texts), length, truncate=True, full_lengths=lengths)
    clip = model.clip.eval().to(device)
    features = embed_texts(
        clip, torch.from_numpy(ids), batch_size=batch_size, device=device, precision=precision
    )
    return features, [n > length for n in lengths]


def rank_results(
    index: GalleryIndex,
    texts: Sequence[str],
    features: torch.Tensor,
    k: int,
    backend: str = "exact",
    nprobe: int | None = None,
    truncated: Sequence[bool] | None = None,
) -> list[QueryResult]:
    """Search ``index`` with encoded queries and attach paths and identities."""
    scores, rows = index.search(features, k, backend=backend, nprobe=nprobe)
    results: list[QueryResult] = []
    for q, text in enumerate(texts):
        hits: list[QueryHit] = []
        for score, row in zip(scores[q].tolist(), rows[q].tolist(), strict=True):
            if row < 0:  # an approximate search that found fewer than k
                continue
            entry = index.entry(row)
            hits.append(QueryHit(len(hits) + 1, float(score), int(row), entry.path, entry.pid))
        results.append(QueryResult(text, hits, bool(truncated[q]) if truncated is not None else False))
    return results


def search_text(
    model: Any,
    index: GalleryIndex | str | Path,
    texts: Sequence[str],
    k: int = 10,
    backend: str = "exact",
    nprobe: int | None = None,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
) -> list[QueryResult]:
    """Rank the gallery of ``index`` for each text with ``model`` (which must have made it): the
    warm path, for a caller that holds the model and the index (the demo, a server).

    Exact search by default; ``backend="faiss"`` uses the index's FAISS index. k larger than the
    gallery returns the whole gallery.
    """
    if not isinstance(index, GalleryIndex):
        index = GalleryIndex.open(index)
    return _search(model, index, texts, k, backend, nprobe, device, precision)[0]


def _search(model: Any, index: GalleryIndex, texts: Sequence[str], k: int, backend: str, nprobe: int | None,
            device: torch.device | str, precision: str) -> tuple[list[QueryResult], torch.Tensor]:
    if model.fingerprint != index.model_fingerprint:
        raise InputError(
            f"index {index.path} was made by model {index.model_fingerprint}, "
            f"not {model.fingerprint} ({model.source})",
            hint="search with the model that exported the index",
        )
    texts = clean_queries(texts)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InputError(f"k must be a positive integer, got {k!r}")
    check_result_count(len(texts), k, len(index))
    features, truncated = encode_queries(model, texts, device=device, precision=precision)
    results = rank_results(index, texts, features, k, backend=backend, nprobe=nprobe, truncated=truncated)
    if getattr(model, "kind", None) == "run":
        from personsearch.runs import knows_query, run_vocabulary

        vocabulary = run_vocabulary(model.source)
        for result in results:
            result.known_words = knows_query(vocabulary, result.query)
    return results, features


@dataclass
class QueryRun:
    """What ``run_queries`` found: the ranked results and how they were made."""

    results: list[QueryResult]
    index: GalleryIndex
    model: Any  # personsearch.runs.TrainedModel
    index_chosen: bool  # the index was found automatically (no --index)
    k: int
    recall_at_k: float | None = None
    sheet: Path | None = None

    def to_json(self) -> Any:
        """One query: its object; several: a list; with a recall check: both under "queries"."""
        objects: Any = [result.to_json() for result in self.results]
        if len(objects) == 1:
            objects = objects[0]
        if self.recall_at_k is not None:
            objects = {"recall_at_k": round(self.recall_at_k, 6), "k": self.k, "queries": objects}
        return objects


def run_queries(
    texts: Sequence[str] = (),
    *,
    index: str | Path | None = None,
    run: str | Path | None = None,
    weights: str | Path | None = None,
    k: int = 10,
    query_file: str | Path | None = None,
    sheet: str | Path | None = None,
    backend: str = "exact",
    nprobe: int | None = None,
    check_recall: bool = False,
    verify: bool = True,
    device: str = "auto",
    precision: str = "fp32",
    output_dir: str | Path | None = None,
    towers: Sequence[str] = TEXT_TOWERS,
) -> QueryRun:
    """``personsearch query`` as one call: find the index (the newest run's when ``index`` is None),
    load the model that made it (or ``run`` / plain CLIP ``weights``, which must match), encode,
    rank, and optionally check FAISS recall and draw a contact sheet. Every input is checked
    before the model loads. The model is loaded with the text encoder only (``towers``; pass
    ``ALL_TOWERS`` to keep ``QueryRun.model`` for embedding images too)."""
    if sheet is not None:  # the sheet module (and PIL) only when a sheet is asked for
        from personsearch.sheet import check_sheet_path, check_sheet_size, check_sheet_target

        check_sheet_path(sheet, "--sheet")  # before the index and the model are loaded
    given = clean_queries(list(texts)) if texts else []
    if query_file is not None:
        given += read_queries(query_file)
    if not given:
        raise InputError("no query text given", hint='pass a description, e.g. "woman in a red coat", or --file')
    if sheet is not None:
        check_sheet_size(len(given), k)
    torch_device, index_path, chosen = search_target(index, device, precision, output_dir)
    if sheet is not None:
        check_sheet_target(sheet, owned=[("the index", index_path)])
    gallery = GalleryIndex.open(index_path, verify=verify)
    check_result_count(len(given), k, len(gallery))  # before the model loads
    model = model_for_index(gallery, run, weights, towers=towers)
    if sheet is not None:  # never over a gallery image, the weights or a run's files
        check_sheet_target(sheet, owned=[("the gallery's image folder", gallery.image_root),
                                         ("the model weights", model.weights)], runs=[("the run", model.source)])
    results, features = _search(model, gallery, given, k, backend, nprobe, torch_device, precision)
    recall = None
    if check_recall:
        from personsearch.retrieval.ann import recall_at_k

        recall = recall_at_k(gallery, features, min(k, len(gallery)), nprobe)
    if sheet is not None:
        render_query_sheet(gallery, results, sheet)
    return QueryRun(results, gallery, model, chosen, k, recall, Path(sheet) if sheet is not None else None)


__all__ = [
    "ALL_TOWERS",
    "RUN_INDEX_DIR",
    "TEXT_TOWERS",
    "UNKNOWN_WORDS_NOTE",
    "QueryHit",
    "QueryResult",
    "QueryRun",
    "check_result_count",
    "attribute_matches",
    "clean_queries",
    "describe_matches",
    "encode_queries",
    "find_index",
    "gallery_attributes",
    "gallery_holders",
    "image_file",
    "model_for_index",
    "rank_results",
    "read_queries",
    "render_query_sheet",
    "run_queries",
    "search_target",
    "search_text",
]
