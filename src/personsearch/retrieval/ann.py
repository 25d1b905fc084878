"""Optional approximate search with FAISS, for galleries in the millions.

``build_faiss`` trains a FAISS index (any factory string, inner-product metric) on a sample of the
gallery, adds every row, and records it in the header (file, factory, nprobe, sha256, rows) with
the same commit-by-header rule as the shards. Exact search stays the default and the reference:
``recall_at_k`` measures how much of the exact top k the approximate search finds.
Needs ``pip install personsearch[faiss]``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from personsearch.errors import InputError
from personsearch.io import RunLock, atomic_write_bytes, atomic_write_json

if TYPE_CHECKING:
    from personsearch.retrieval.index import GalleryIndex

log = logging.getLogger(__name__)

_FILE_RE = re.compile(r"^faiss-(\d{5,})\.index$")


def _faiss() -> Any:
    try:
        import faiss
    except ImportError:
        raise InputError(
            "the FAISS backend is not installed", hint="pip install personsearch[faiss]"
        ) from None
    return faiss


def _reason(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return lines[-1] if lines else type(exc).__name__


def _next_file(header: Mapping[str, Any]) -> str:
    current = header.get("faiss")
    number = 0
    if current and (match := _FILE_RE.match(current["file"])):
        number = int(match.group(1)) + 1
    return f"faiss-{number:05d}.index"


def _add_rows(index: Any, arrays: Sequence[np.ndarray], chunk_rows: int = 65536) -> None:
    for array in arrays:
        for start in range(0, array.shape[0], chunk_rows):
            index.add(np.ascontiguousarray(array[start : start + chunk_rows], dtype=np.float32))


def _save(folder: Path, header: Mapping[str, Any], index: Any, settings: Mapping[str, Any]) -> dict[str, Any]:
    from personsearch.retrieval.index import sha256_of

    faiss = _faiss()
    name = _next_file(header)
    atomic_write_bytes(folder / name, faiss.serialize_index(index).tobytes())
    return {**settings, "file": name, "rows": int(index.ntotal), "sha256": sha256_of(folder / name)}


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
    from personsearch.retrieval.index import HEADER_NAME, GalleryIndex, _clean_unlisted, _read_header

    faiss = _faiss()
    gallery = GalleryIndex.open(index_dir, verify=True)
    folder = gallery.path
    try:
        index = faiss.index_factory(gallery.dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise InputError(
            f"FAISS cannot build {factory!r} for dimension {gallery.dim}: {_reason(exc)}",
            hint="see the FAISS index_factory documentation, e.g. 'IVF1024,PQ64' or 'HNSW32'",
        ) from None
    n = len(gallery)
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(n, size=min(n, train_rows), replace=False))
    sample = np.empty((chosen.size, gallery.dim), dtype=np.float32)
    offsets = np.cumsum([0] + [gallery.embeddings(s).shape[0] for s in range(len(gallery.header["shards"]))])
    for s in range(len(offsets) - 1):
        picked = (chosen >= offsets[s]) & (chosen < offsets[s + 1])
        sample[picked] = gallery.embeddings(s)[chosen[picked] - offsets[s]]
    if not index.is_trained:
        try:
            index.train(sample)
        except RuntimeError as exc:
            raise InputError(
                f"cannot train {factory!r} on a gallery of {n} rows: {_reason(exc)}",
                hint="use fewer inverted lists (IVF<n> with n well below the gallery size) or exact search",
            ) from None
    _add_rows(index, [gallery.embeddings(s) for s in range(len(offsets) - 1)])
    settings = {
        "factory": factory,
        "nprobe": int(nprobe),
        "metric": "inner_product",
        "trained_on": int(chosen.size),
    }
    with RunLock(folder):
        header = _read_header(folder)
        if header["count"] != n:
            raise InputError(f"{folder} changed while the FAISS index was being built; build it again")
        entry = _save(folder, header, index, settings)
        try:
            header["faiss"] = entry
            atomic_write_json(folder / HEADER_NAME, header)
        except BaseException:
            (folder / entry["file"]).unlink(missing_ok=True)
            raise
        _clean_unlisted(folder, header)
    log.info("built FAISS %s over %d rows in %s", factory, n, folder)
    return entry


def extend_faiss(
    folder: Path, header: Mapping[str, Any], new_shards: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """Add freshly written shards to the current FAISS index under a new file name (the caller
    commits it by writing the header)."""
    faiss = _faiss()
    current = header["faiss"]
    index = faiss.deserialize_index(np.fromfile(folder / current["file"], dtype=np.uint8))
    _add_rows(index, [np.load(folder / s["embeddings"], mmap_mode="r") for s in new_shards])
    settings = {k: v for k, v in current.items() if k not in ("file", "rows", "sha256")}
    return _save(folder, header, index, settings)


def _load(gallery: GalleryIndex) -> Any:
    if gallery._faiss is None:
        entry = gallery.header.get("faiss")
        if not entry:
            raise InputError(
                f"{gallery.path} has no FAISS index", hint="build one with build_faiss (export --faiss)"
            )
        faiss = _faiss()
        try:
            gallery._faiss = faiss.deserialize_index(np.fromfile(gallery.path / entry["file"], dtype=np.uint8))
        except (RuntimeError, OSError, ValueError) as exc:
            from personsearch.retrieval.index import damaged

            raise damaged(gallery.path, f"FAISS file {entry['file']} cannot be read ({_reason(exc)})") from None
    return gallery._faiss


def search_faiss(
    gallery: GalleryIndex, queries: torch.Tensor, k: int, nprobe: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Approximate top-k for normalised float32 queries. Rows FAISS could not fill (too few
    probed lists) come back as -1 with score -inf; superseded rows are dropped like in exact search."""
    index = _load(gallery)
    faiss = _faiss()
    probes = int(nprobe if nprobe is not None else gallery.header["faiss"].get("nprobe", 16))
    if probes < 1:
        raise InputError(f"nprobe must be at least 1, got {probes}")
    try:
        faiss.ParameterSpace().set_index_parameter(index, "nprobe", probes)
    except RuntimeError:
        if nprobe is not None:
            log.info("nprobe does not apply to %s; ignored", gallery.header["faiss"]["factory"])
    dead_tensors = [d for d in gallery._superseded_rows() if d is not None]
    dead: set[int] = set()
    if dead_tensors:
        offsets = gallery._offsets
        for s, d in enumerate(gallery._superseded_rows()):
            if d is not None:
                dead.update((d + int(offsets[s])).tolist())
    live = len(gallery) - len(dead)
    k_out = min(k, live)
    scores, rows = index.search(np.ascontiguousarray(queries.numpy()), min(len(gallery), k_out + len(dead)))
    if dead:
        keep_scores = np.full((rows.shape[0], k_out), -np.inf, dtype=np.float32)
        keep_rows = np.full((rows.shape[0], k_out), -1, dtype=np.int64)
        for i in range(rows.shape[0]):
            ok = [j for j, r in enumerate(rows[i]) if r >= 0 and int(r) not in dead][:k_out]
            keep_scores[i, : len(ok)] = scores[i, ok]
            keep_rows[i, : len(ok)] = rows[i, ok]
        scores, rows = keep_scores, keep_rows
    scores = np.where(rows >= 0, scores, -np.inf).astype(np.float32)
    return torch.from_numpy(scores[:, :k_out].copy()), torch.from_numpy(rows[:, :k_out].astype(np.int64))


def recall_at_k(gallery: GalleryIndex, queries: Any, k: int, nprobe: int | None = None) -> float:
    """Mean fraction of each query's exact top-k rows that the FAISS search also returns (0..1)."""
    reference = gallery.search(queries, k).rows
    approx = gallery.search(queries, k, backend="faiss", nprobe=nprobe).rows
    pairs = zip(reference.tolist(), approx.tolist(), strict=True)
    found = [len(set(r) & set(a)) / max(1, len(r)) for r, a in pairs]
    return float(np.mean(found)) if found else 1.0
