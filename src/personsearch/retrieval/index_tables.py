"""Writing a shard's row tables (``index_rows``), and the helpers an index write needs around
them: the keys and paths of just-written shards, and the upgrade of a version-1 index's shards
(their tables written beside them; no file of theirs rewritten)."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from personsearch.io import atomic_open
from personsearch.retrieval.gallery import GalleryIndex
from personsearch.retrieval.index_files import read_table
from personsearch.retrieval.index_format import damaged, shard_number, table_file_name
from personsearch.retrieval.index_rows import entry_keys, lines_table, read_rows, read_shard

ReadPaths = Callable[[np.ndarray], list[str]]


def write_file(folder: Path, name: str, data: bytes, kind: str) -> dict[str, Any]:
    """Write ``data`` atomically as ``name``; its header fields under ``kind``."""
    with atomic_open(folder / name, "wb") as handle:
        handle.write(data)
    return {kind: name, f"{kind}_bytes": len(data), f"{kind}_sha256": hashlib.sha256(data).hexdigest()}


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def write_tables(folder: Path, number: int, lines: np.ndarray, keys: np.ndarray) -> dict[str, Any]:
    """Write shard ``number``'s row tables atomically and return their header fields."""
    info = write_file(folder, table_file_name(number, "lines"), _npy_bytes(lines), "lines")
    try:
        info.update(write_file(folder, table_file_name(number, "keys"), _npy_bytes(keys), "keys"))
    except BaseException:
        (folder / info["lines"]).unlink(missing_ok=True)
        raise
    return info


def new_keys(folder: Path, shards: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """The keys of the rows of the just-written ``shards``, in row order."""
    parts = [read_table(folder, shard, "keys", False) for shard in shards]
    return np.concatenate(parts) if parts else np.zeros((0, 2), dtype=np.uint64)


def new_paths(folder: Path, shards: Sequence[Mapping[str, Any]], first_row: int) -> ReadPaths:
    """``read_paths`` over the just-written ``shards`` whose first row is ``first_row``."""
    starts = np.cumsum([first_row] + [int(s["rows"]) for s in shards])

    def read_paths(rows: np.ndarray) -> list[str]:
        paths: list[str] = []
        which = np.searchsorted(starts, rows, side="right") - 1
        for s in np.unique(which).tolist():
            local = (rows[which == s] - starts[s]).tolist()
            lines = read_table(folder, shards[s], "lines", False)
            paths += [e.path for e in read_rows(folder, shards[s], lines, local)]
        return paths

    return read_paths


def paths_after(index: GalleryIndex, new_paths: ReadPaths) -> ReadPaths:
    """``read_paths`` over ``index``'s rows followed by new rows (``new_paths``)."""

    def read_paths(rows: np.ndarray) -> list[str]:
        old = rows[rows < len(index)]
        return [e.path for e in index.metadata(old)] + (new_paths(rows[rows >= len(index)]) if old.size < rows.size
                                                        else [])

    return read_paths


def upgrade_shards(index: GalleryIndex, new_files: list[Path]) -> list[dict[str, Any]]:
    """The shard entries of a version-1 ``index`` with row tables written for each shard (its
    metadata, already checked on open, read once more; nothing else rewritten)."""
    shards = []
    for s, shard in enumerate(index.header["shards"]):
        entries, raw = read_shard(index.path, shard, False)
        if entries != index._shard_metadata(s):
            raise damaged(index.path, f"shard file {shard['metadata']} changed while the index was appended to")
        info = write_tables(index.path, shard_number(shard), lines_table(raw), entry_keys(entries))
        new_files += [index.path / info["lines"], index.path / info["keys"]]
        shards.append({**shard, **info})
    return shards
