"""Writing a gallery index (a whole new one, or one more shard appended), and the index's public names.

An index is a folder of float16 embedding shards, per-row metadata and a header; its layout and
the rules every reader checks are in ``personsearch.retrieval.index_format``, a row's metadata in
``index_entry``, and reading, verifying and searching in ``gallery`` (``GalleryIndex``). The names
callers use are all importable from here.

Writing keeps the header the commit point: ``write_index`` builds a new index in a temporary
folder and renames it into place whole; ``append_to_index`` writes its new shard (and, when they
change, a new superseded-rows list and a new FAISS file) first and replaces the header last
(``commit_header``), under the index's lock. An error or Ctrl-C before that removes the new files
again; files a killed append left behind are removed by the next one (``clean_unlisted``).

Each shard is written with its row tables (``index_rows``), and the superseded rows are decided
at write time from their path keys (``index_supersede``), so neither a reader nor the next append
reads every metadata row. An append to a version-1 index writes the tables of its old shards
first (reading their metadata this once) and commits it as version 2.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from personsearch.errors import InputError
from personsearch.io import (
    RunLock,
    atomic_directory,
    atomic_open,
    atomic_write_json,
    ensure_replaceable,
    owner_kind,
    sha256_file,
    write_owner_marker,
)
from personsearch.io.recorded import MAX_RECORDED, RELATIVE, relative_path
from personsearch.retrieval import faiss_backend
from personsearch.retrieval.gallery import GalleryIndex, SearchResults, files_to_embed
from personsearch.retrieval.index_entry import IndexEntry, path_problem
from personsearch.retrieval.index_files import check_faiss_file
from personsearch.retrieval.index_format import (
    FAISS_FILE_RE,
    FORMAT_NAME,
    FORMAT_VERSION,
    HEADER_NAME,
    INDEX_KIND,
    MODEL_PATH_KEYS,
    SHARD_FILE_RE,
    SUPERSEDED_FILE_RE,
    damaged,
    index_file_name,
    is_index_folder,
    listed_files,
    read_header,
    shard_file_names,
    shard_number,
)
from personsearch.retrieval.index_rows import encode_rows
from personsearch.retrieval.index_supersede import supersede, write_superseded
from personsearch.retrieval.index_tables import (
    new_keys,
    new_paths,
    paths_after,
    upgrade_shards,
    write_file,
    write_tables,
)

log = logging.getLogger(__name__)

DEFAULT_SHARD_SIZE = 65536

#: The sha256 hex digest of a file (also used for model fingerprints); ``personsearch.io.sha256_file``.
sha256_of = sha256_file


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _as_float32(batch: Any) -> np.ndarray:
    if isinstance(batch, torch.Tensor):
        batch = batch.detach().to("cpu", torch.float32).numpy()
    return np.asarray(batch, dtype=np.float32)


def normalise_rows(batch: Any, first_row: int, dim: int | None) -> np.ndarray:
    """L2-normalise a batch [B, D] in float32 and store it as float16; rejects bad rows by number."""
    values = _as_float32(batch)
    if values.ndim == 1:
        values = values[None, :]
    if values.ndim != 2:
        raise InputError(f"embeddings must have shape [rows, dim], got {list(values.shape)}")
    if dim is not None and values.shape[1] != dim:
        raise InputError(f"embedding dimension {values.shape[1]} does not match the index dimension {dim}")
    finite = np.isfinite(values).all(axis=1)
    if not finite.all():
        bad = first_row + int(np.flatnonzero(~finite)[0])
        raise InputError(
            f"embedding row {bad} contains NaN or infinite values", hint="check the model's output"
        )
    norms = np.linalg.norm(values, axis=1, keepdims=True)
    if (norms == 0).any():
        bad = first_row + int(np.flatnonzero(norms[:, 0] == 0)[0])
        raise InputError(f"embedding row {bad} is the zero vector and cannot be normalised")
    return (values / norms).astype(np.float16)


def _batches(embeddings: Any) -> Iterator[Any]:
    if isinstance(embeddings, (np.ndarray, torch.Tensor)):
        yield embeddings
    else:
        yield from embeddings


def _write_shard(
    folder: Path, number: int, rows: np.ndarray, entries: Sequence[IndexEntry]
) -> dict[str, Any]:
    """Write one shard's four files atomically and return its header entry."""
    npy_name, meta_name = shard_file_names(number)
    raw, lines, keys = encode_rows(entries)
    with atomic_open(folder / npy_name, "wb") as handle:
        np.save(handle, np.ascontiguousarray(rows), allow_pickle=False)
    info: dict[str, Any] = {"embeddings": npy_name}
    try:
        info.update(write_file(folder, meta_name, raw, "metadata"))
        info.update(write_tables(folder, number, lines, keys))
    except BaseException:
        for kind in ("embeddings", "metadata"):  # a shard is all its files or none
            if kind in info:
                (folder / info[kind]).unlink(missing_ok=True)
        raise
    return {
        **info,
        "rows": int(rows.shape[0]),
        "embeddings_bytes": (folder / npy_name).stat().st_size,
        "embeddings_sha256": sha256_file(folder / npy_name),
    }


class IndexWriter:
    """Streams embeddings and their metadata into shards of ``shard_size`` rows.

    Used by ``write_index`` (a whole new index) and ``append_to_index`` (one new shard). Rows are
    normalised in float32 and stored as float16; at most one shard is held in memory.
    """

    def __init__(
        self, folder: Path, first_shard: int, shard_size: int, dim: int | None, first_row: int = 0
    ) -> None:
        if shard_size < 1:
            raise InputError(f"shard_size must be at least 1, got {shard_size}")
        self.folder = folder
        self.shard_size = shard_size
        self.dim = dim
        self.next_shard = first_shard
        self.rows_written = 0
        self.first_row = first_row
        self.shards: list[dict[str, Any]] = []
        self.files: list[Path] = []
        self._rows: list[np.ndarray] = []
        self._entries: list[IndexEntry] = []
        self._buffered = 0

    def add(self, embeddings: Any, entries: Sequence[Mapping[str, Any] | IndexEntry]) -> None:
        """Add a batch of embeddings [B, D] with its B metadata entries."""
        row0 = self.first_row + self.rows_written + self._buffered
        rows = normalise_rows(embeddings, row0, self.dim)
        if len(entries) != rows.shape[0]:
            raise InputError(
                f"a batch of {rows.shape[0]} embeddings came with {len(entries)} metadata entries"
            )
        self.dim = rows.shape[1]
        parsed = [IndexEntry.from_mapping(e, f"metadata row {row0 + i}") for i, e in enumerate(entries)]
        start = 0
        while start < rows.shape[0]:
            take = min(self.shard_size - self._buffered, rows.shape[0] - start)
            self._rows.append(rows[start : start + take])
            self._entries.extend(parsed[start : start + take])
            self._buffered += take
            start += take
            if self._buffered == self.shard_size:
                self.flush()

    def flush(self) -> None:
        """Write the buffered rows as one shard (no-op when empty)."""
        if not self._buffered:
            return
        info = _write_shard(self.folder, self.next_shard, np.concatenate(self._rows), self._entries)
        self.files += [self.folder / info[kind] for kind in ("embeddings", "metadata", "lines", "keys")]
        self.shards.append(info)
        self.next_shard += 1
        self.rows_written += self._buffered
        self._rows, self._entries, self._buffered = [], [], 0


def feed(writer: IndexWriter, embeddings: Any, metadata: Iterable[Mapping[str, Any] | IndexEntry]) -> None:
    """Stream ``embeddings`` (one array or an iterable of batches) and their ``metadata`` into ``writer``."""
    entries = iter(metadata)
    for batch in _batches(embeddings):
        n = int(batch.shape[0]) if getattr(batch, "ndim", 2) > 1 else 1
        chunk = [e for _, e in zip(range(n), entries, strict=False)]
        writer.add(batch, chunk)
    if next(entries, None) is not None:
        raise InputError(
            f"more metadata entries than the {writer.rows_written + writer._buffered} embeddings given"
        )


def write_index(
    out: str | Path,
    embeddings: Any,
    metadata: Iterable[Mapping[str, Any] | IndexEntry],
    model_fingerprint: str,
    image_root: str | Path,
    shard_size: int = DEFAULT_SHARD_SIZE,
    extra_header: Mapping[str, Any] | None = None,
) -> GalleryIndex:
    """Write a new index at ``out`` (replacing an index there, atomically) and open it.

    ``embeddings``: an array/tensor [N, D] or an iterable of [B, D] batches (streamed, one shard
    in memory at a time). ``metadata``: N ``IndexEntry`` objects or mappings with path (relative
    to ``image_root``), pid (int or None), size and mtime_ns, in row order. ``model_fingerprint``
    identifies weights + preprocessing; ``extra_header`` lands in the header under ``model``.
    ``image_root`` and the absolute paths of ``extra_header`` (``MODEL_PATH_KEYS``) are also
    recorded relative to ``out`` where ``personsearch.io.recorded`` allows, so an index moved or
    copied together with them keeps working. A folder at ``out`` that is not an index this tool
    wrote is refused, never replaced.
    """
    root = check_new_index(model_fingerprint, shard_size, image_root)
    out = Path(out)
    ensure_replaceable(out, INDEX_KIND, "gallery index", legacy=is_index_folder, written=index_file_name)
    with atomic_directory(out) as tmp:
        writer = IndexWriter(tmp, 0, shard_size, None)
        feed(writer, embeddings, metadata)
        writer.flush()
        finish_new_index(tmp, out, writer.shards, writer.dim, model_fingerprint, root, shard_size, extra_header)
    log.info("wrote index %s: %d rows in %d shards", out, writer.rows_written, len(writer.shards))
    return GalleryIndex.open(out, verify=False)


def check_new_index(model_fingerprint: Any, shard_size: Any, image_root: str | Path) -> str:
    """The checked arguments of a new index; returns the absolute image root."""
    if not isinstance(model_fingerprint, str) or not model_fingerprint:
        raise InputError("model_fingerprint must be a non-empty string")
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise InputError(f"shard_size must be a positive integer, got {shard_size!r}")
    root = os.path.abspath(image_root)
    if "\x00" in root:
        raise InputError(f"image root {root!r} contains a NUL character")
    return root


def finish_new_index(
    tmp: Path, out: Path, shards: list[dict[str, Any]], dim: int | None, model_fingerprint: str, root: str,
    shard_size: int, extra_header: Mapping[str, Any] | None,
) -> None:
    """Complete a new index whose ``shards`` (in row order) are written in ``tmp``, the temporary
    folder that becomes ``out``: its superseded rows, owner marker and header (written last)."""
    if dim is None or not shards:
        raise InputError("no embeddings given: an index needs at least one image")
    dead = supersede(np.zeros((0, 2), dtype=np.uint64), np.zeros(0, np.int64), new_keys(tmp, shards),
                     new_paths(tmp, shards, 0))
    superseded, _ = write_superseded(tmp, None, dead, np.zeros(0, np.int64))
    now = _now()
    header = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "dim": dim,
        "dtype": "float16",
        "model_fingerprint": model_fingerprint,
        "image_root": root,
        "count": sum(int(shard["rows"]) for shard in shards),
        "shard_size": shard_size,
        "shards": shards,
        "created": now,
        "updated": now,
        "model": dict(extra_header or {}),
        "faiss": None,
        "superseded": superseded,
    }
    relative = _relative_paths(header, out)
    if relative:
        header[RELATIVE] = relative
    write_owner_marker(tmp, INDEX_KIND)
    atomic_write_json(tmp / HEADER_NAME, header)


def _relative_paths(header: Mapping[str, Any], out: Path) -> dict[str, str]:
    """The header's absolute paths relative to the index folder ``out`` (``RELATIVE_KEYS``)."""
    found = {"image_root": header["image_root"]}
    found.update({f"model.{key}": header["model"].get(key) for key in MODEL_PATH_KEYS})
    relative = {}
    for key, value in found.items():
        if isinstance(value, str) and os.path.isabs(value) and "\x00" not in value:
            moved = relative_path(value, out)
            if moved is not None and len(moved) <= MAX_RECORDED:
                relative[key] = moved
    return relative


def clean_unlisted(folder: Path, header: Mapping[str, Any]) -> None:
    """Remove files a killed append left behind (never anything the header lists)."""
    listed = listed_files(header)
    for child in folder.iterdir():
        name = child.name
        stale = (
            SHARD_FILE_RE.match(name) or FAISS_FILE_RE.match(name) or SUPERSEDED_FILE_RE.match(name)
            or (name.startswith(".") and name.endswith(".tmp"))
        ) and name not in listed
        if stale and child.is_file() and not child.is_symlink():
            log.info("removing stale %s", child)
            child.unlink(missing_ok=True)


def commit_header(folder: Path, header: Mapping[str, Any], new_files: Sequence[Path] = ()) -> None:
    """Make ``header`` the index's committed state (the caller holds the index's ``RunLock``).

    The header is replaced atomically; if that fails, ``new_files`` (written for this header and
    listed by no other) are removed, so the index stays exactly as it was.
    """
    try:
        atomic_write_json(folder / HEADER_NAME, header)
    except BaseException:
        for file in new_files:
            file.unlink(missing_ok=True)
        raise


def append_to_index(
    index_dir: str | Path,
    embeddings: Any,
    metadata: Iterable[Mapping[str, Any] | IndexEntry],
    model_fingerprint: str | None = None,
) -> GalleryIndex:
    """Add ONE new shard holding ``embeddings``/``metadata`` to an existing index and reopen it.

    Pass the caller's ``model_fingerprint`` so an index made by another model is refused. Old
    shards are never rewritten. The index lock is held from reading the header to committing the
    new one, so a second writer is refused rather than racing. The header is replaced last: until
    then readers see the old index, and an error (or Ctrl-C) removes the new files again. A FAISS
    index, when present, gets the new rows added under a new file name committed by the same
    header write.
    """
    folder = Path(index_dir)
    read_header(folder)  # a clear message (and no lock file) for a folder that is not an index
    with RunLock(folder):
        index = GalleryIndex.open(folder, verify=True)
        if model_fingerprint is not None and model_fingerprint != index.model_fingerprint:
            raise InputError(
                f"{index.path} was made by model {index.model_fingerprint}, not {model_fingerprint}",
                hint="append with the same run, or export a new index",
            )
        return append_locked(index, embeddings, metadata)


def append_locked(
    index: GalleryIndex, embeddings: Any, metadata: Iterable[Mapping[str, Any] | IndexEntry]
) -> GalleryIndex:
    """``append_to_index`` for a caller that already holds the index's ``RunLock`` and opened
    ``index`` under it (so what it decided to add was computed from the current header)."""
    folder = index.path
    header = dict(index.header)
    clean_unlisted(folder, header)
    numbers = [shard_number(s) for s in header["shards"]]
    writer = IndexWriter(folder, max(numbers, default=-1) + 1, 2**62, header["dim"], header["count"])
    new_files: list[Path] = []
    try:
        feed(writer, embeddings, metadata)
        writer.flush()
        new_files = list(writer.files)
        if not writer.shards:
            log.info("nothing to append to %s", folder)
            return index
        if header["format_version"] < 2:
            header["shards"] = upgrade_shards(index, new_files)
        old_dead = index.dead_rows()
        dead = supersede(index.all_keys(), old_dead, new_keys(folder, writer.shards),
                         paths_after(index, new_paths(folder, writer.shards, header["count"])))
        header["superseded"], written = write_superseded(folder, header.get("superseded"), dead, old_dead)
        new_files += [written] if written is not None else []
        header["format_version"] = FORMAT_VERSION
        header["shards"] = header["shards"] + writer.shards
        header["count"] = header["count"] + writer.rows_written
        header["updated"] = _now()
        if header.get("faiss"):
            check_faiss_file(folder, header["faiss"], True)  # FAISS reads only a file it wrote
            new_rows = [np.load(folder / s["embeddings"], mmap_mode="r") for s in writer.shards]
            header["faiss"] = faiss_backend.extend_index(folder, header["faiss"], new_rows)
            new_files.append(folder / header["faiss"]["file"])
        commit_header(folder, header)
    except BaseException:
        for file in writer.files + new_files:
            file.unlink(missing_ok=True)
        raise
    if owner_kind(folder) != INDEX_KIND:
        write_owner_marker(folder, INDEX_KIND)  # an index made before markers: mark it now
    clean_unlisted(folder, header)
    log.info("appended %d rows to %s as %s", writer.rows_written, folder, writer.shards[0]["embeddings"])
    return GalleryIndex.open(folder, verify=False)



__all__ = [
    "DEFAULT_SHARD_SIZE",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "GalleryIndex",
    "HEADER_NAME",
    "IndexEntry",
    "IndexWriter",
    "SearchResults",
    "INDEX_KIND",
    "append_locked",
    "append_to_index",
    "check_new_index",
    "clean_unlisted",
    "commit_header",
    "damaged",
    "feed",
    "files_to_embed",
    "finish_new_index",
    "index_file_name",
    "is_index_folder",
    "normalise_rows",
    "path_problem",
    "write_tables",
    "read_header",
    "sha256_of",
    "write_index",
]
