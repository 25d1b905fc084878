"""Optional approximate search with FAISS, for galleries in the millions: build it, measure it.

``build_faiss`` trains a FAISS index (any factory string, inner-product metric) on a sample of the
gallery, adds every row, and records it in the header (file, factory, nprobe, sha256, rows) with
the same commit-by-header rule as the shards. Exact search stays the default and the reference:
``recall_at_k`` measures how much of the exact top k the approximate search finds. The FAISS
calls themselves (save, extend, read, search) are in ``personsearch.retrieval.faiss_backend``.
Needs ``pip install 'personsearch[faiss]'``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from personsearch.errors import InputError
from personsearch.io import RunLock
from personsearch.retrieval.faiss_backend import add_rows, faiss_reason, require_faiss, save_index
from personsearch.retrieval.index import GalleryIndex, clean_unlisted, commit_header, read_header

log = logging.getLogger(__name__)


def build_faiss(
    index_dir: str | Path,
    factory: str = "IVF4096,PQ64",
    nprobe: int = 16,
    train_rows: int = 200_000,
    seed: int = 0,
) -> dict[str, Any]:
    """Build the FAISS index of ``index_dir`` (replacing an older one) and return its header entry.

    Trains on ``train_rows`` rows drawn at random (seeded), adds all rows in order so FAISS ids
    equal gallery rows. ``nprobe`` is the default number of inverted lists searched.
    """
    faiss = require_faiss()
    gallery = GalleryIndex.open(index_dir, verify=True)
    folder = gallery.path
    try:
        index = faiss.index_factory(gallery.dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise InputError(
            f"FAISS cannot build {factory!r} for dimension {gallery.dim}: {faiss_reason(exc)}",
            hint="see the FAISS index_factory documentation, e.g. 'IVF1024,PQ64' or 'HNSW32'",
        ) from None
    n = len(gallery)
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(n, size=min(n, train_rows), replace=False))
    sample = np.empty((chosen.size, gallery.dim), dtype=np.float32)
    offsets = gallery.row_offsets
    for s in range(gallery.shard_count):
        picked = (chosen >= offsets[s]) & (chosen < offsets[s + 1])
        sample[picked] = gallery.embeddings(s)[chosen[picked] - offsets[s]]
    if not index.is_trained:
        try:
            index.train(sample)
        except RuntimeError as exc:
            raise InputError(
                f"cannot train {factory!r} on a gallery of {n} rows: {faiss_reason(exc)}",
                hint="use fewer inverted lists (IVF<n> with n well below the gallery size) or exact search",
            ) from None
    add_rows(index, [gallery.embeddings(s) for s in range(gallery.shard_count)])
    settings = {
        "factory": factory,
        "nprobe": int(nprobe),
        "metric": "inner_product",
        "trained_on": int(chosen.size),
    }
    with RunLock(folder):
        header = read_header(folder)
        if header["count"] != n:
            raise InputError(f"{folder} changed while the FAISS index was being built; build it again")
        entry = save_index(folder, header.get("faiss"), index, settings)
        header["faiss"] = entry
        commit_header(folder, header, [folder / entry["file"]])
        clean_unlisted(folder, header)
    log.info("built FAISS %s over %d rows in %s", factory, n, folder)
    return entry


def recall_at_k(gallery: GalleryIndex, queries: Any, k: int, nprobe: int | None = None) -> float:
    """Mean fraction of each query's exact top-k rows that the FAISS search also returns (0..1)."""
    reference = gallery.search(queries, k).rows
    approx = gallery.search(queries, k, backend="faiss", nprobe=nprobe).rows
    pairs = zip(reference.tolist(), approx.tolist(), strict=True)
    found = [len(set(r) & set(a)) / max(1, len(r)) for r, a in pairs]
    return float(np.mean(found)) if found else 1.0


__all__ = ["build_faiss", "recall_at_k", "require_faiss"]
