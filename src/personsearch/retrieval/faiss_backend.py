"""FAISS over arrays and files: the approximate-search backend a gallery index may carry.

Everything here works on plain arrays, FAISS index objects and header entries; it knows nothing of
``GalleryIndex``. The index uses it to search (``read_index``, ``search_index``) and to keep the
FAISS file in step with an append (``extend_index``); ``personsearch.retrieval.ann`` uses it to
build one. A FAISS file is always written under a new name (``next_faiss_file_name``), so the old
one stays valid until the header listing the new one is committed.
Needs ``pip install 'personsearch[faiss]'``.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from personsearch.errors import InputError
from personsearch.io import atomic_write_bytes, sha256_file
from personsearch.retrieval.index_format import next_faiss_file_name

log = logging.getLogger(__name__)


class UnreadableFaissFile(Exception):
    """A FAISS file that FAISS cannot read; the text is FAISS's reason."""


def require_faiss() -> Any:
    """The ``faiss`` module, or the InputError that says how to install it."""
    try:
        import faiss
    except ImportError:
        raise InputError(
            "the FAISS backend is not installed",
            hint="pip install 'personsearch[faiss]' (optional: exact search, without --faiss, needs nothing more)",
        ) from None
    return faiss


def faiss_reason(exc: Exception) -> str:
    """The last line of a FAISS error (the C++ message, without its stack of locations)."""
    lines = str(exc).strip().splitlines()
    return lines[-1] if lines else type(exc).__name__


def add_rows(index: Any, arrays: Sequence[np.ndarray], chunk_rows: int = 65536) -> None:
    """Add every row of ``arrays`` in order (so FAISS ids are gallery rows), in float32 chunks."""
    for array in arrays:
        for start in range(0, array.shape[0], chunk_rows):
            index.add(np.ascontiguousarray(array[start : start + chunk_rows], dtype=np.float32))


def save_index(
    folder: Path, current: Mapping[str, Any] | None, index: Any, settings: Mapping[str, Any]
) -> dict[str, Any]:
    """Write ``index`` next to the ``current`` FAISS file (under a new name) and return its header
    entry: ``settings`` plus file, rows and sha256. Committing it is the caller's header write."""
    faiss = require_faiss()
    name = next_faiss_file_name(current)
    atomic_write_bytes(folder / name, faiss.serialize_index(index).tobytes())
    return {**settings, "file": name, "rows": int(index.ntotal), "sha256": sha256_file(folder / name)}


def extend_index(folder: Path, current: Mapping[str, Any], new_rows: Sequence[np.ndarray]) -> dict[str, Any]:
    """Add ``new_rows`` (the gallery's next rows, in order) to the ``current`` FAISS file and save
    the result under a new name; returns its header entry (the caller commits it)."""
    faiss = require_faiss()
    index = faiss.deserialize_index(np.fromfile(folder / current["file"], dtype=np.uint8))
    add_rows(index, new_rows)
    settings = {k: v for k, v in current.items() if k not in ("file", "rows", "sha256")}
    return save_index(folder, current, index, settings)


def read_index(file: Path) -> Any:
    """The FAISS index stored in ``file``; UnreadableFaissFile when FAISS cannot read it."""
    faiss = require_faiss()
    try:
        return faiss.deserialize_index(np.fromfile(file, dtype=np.uint8))
    except (RuntimeError, OSError, ValueError) as exc:
        raise UnreadableFaissFile(faiss_reason(exc)) from None


def search_index(
    index: Any,
    queries: torch.Tensor,
    k: int,
    nprobe: int | None,
    entry: Mapping[str, Any],
    total_rows: int,
    superseded: Collection[int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Approximate top-k for normalised float32 queries over a gallery of ``total_rows`` rows.

    ``entry`` is the header's FAISS entry (its ``nprobe`` is the default); ``superseded`` rows are
    dropped as in exact search. Places FAISS could not fill (too few probed lists) come back as
    row -1 with score -inf.
    """
    faiss = require_faiss()
    probes = int(nprobe if nprobe is not None else entry.get("nprobe", 16))
    if probes < 1:
        raise InputError(f"nprobe must be at least 1, got {probes}")
    try:
        faiss.ParameterSpace().set_index_parameter(index, "nprobe", probes)
    except RuntimeError:
        if nprobe is not None:
            log.info("nprobe does not apply to %s; ignored", entry["factory"])
    k_out = min(k, total_rows - len(superseded))
    scores, rows = index.search(np.ascontiguousarray(queries.numpy()), min(total_rows, k_out + len(superseded)))
    if superseded:
        keep_scores = np.full((rows.shape[0], k_out), -np.inf, dtype=np.float32)
        keep_rows = np.full((rows.shape[0], k_out), -1, dtype=np.int64)
        for i in range(rows.shape[0]):
            ok = [j for j, r in enumerate(rows[i]) if r >= 0 and int(r) not in superseded][:k_out]
            keep_scores[i, : len(ok)] = scores[i, ok]
            keep_rows[i, : len(ok)] = rows[i, ok]
        scores, rows = keep_scores, keep_rows
    scores = np.where(rows >= 0, scores, -np.inf).astype(np.float32)
    return torch.from_numpy(scores[:, :k_out].copy()), torch.from_numpy(rows[:, :k_out].astype(np.int64))
