"""Superseded rows: the rows whose file was indexed again by a later row of the same path.

Search never returns them. They are decided when rows are written (a new index, an append) and
kept as one sorted int64 array listed in the header (``superseded-NNNNN.npy``), so a reader never
derives them from every row's path. An append finds them from the 64-bit path keys of the row
tables (``index_rows``): only rows whose path keys meet a new row's are read back, and their
paths compared exactly, so a key collision never hides a row.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from personsearch.io import atomic_write_bytes
from personsearch.retrieval.index_format import next_superseded_file_name


def superseded_by_path(paths: Iterable[str]) -> np.ndarray:
    """The superseded rows of rows with ``paths`` (in row order): all but the last row of each path."""
    last: dict[str, int] = {}
    count = 0
    for row, path in enumerate(paths):
        last[path] = row
        count += 1
    live = np.zeros(count, dtype=bool)
    live[list(last.values())] = True
    return np.flatnonzero(~live).astype(np.int64)


def supersede(
    old_keys: np.ndarray,
    old_dead: np.ndarray,
    new_keys: np.ndarray,
    read_paths: Callable[[np.ndarray], list[str]],
) -> np.ndarray:
    """The superseded rows after rows with ``new_keys`` follow rows with ``old_keys`` (of which
    ``old_dead`` were superseded already). ``read_paths(rows)`` returns the exact paths of sorted
    global rows; it is called only for rows whose path key meets another row's."""
    n_old = old_keys.shape[0]
    live_old = np.ones(n_old, dtype=bool)
    live_old[old_dead] = False
    old_rows = np.flatnonzero(live_old)
    old_paths = old_keys[old_rows, 0]
    new_paths = new_keys[:, 0]
    unique, counts = np.unique(new_paths, return_counts=True)
    meeting = np.union1d(old_paths[np.isin(old_paths, unique)], unique[counts > 1])
    if meeting.size == 0:
        return old_dead.astype(np.int64)
    rows = np.concatenate([old_rows[np.isin(old_paths, meeting)], n_old + np.flatnonzero(np.isin(new_paths, meeting))])
    paths = read_paths(rows)
    last: dict[str, int] = {}
    for row, path in zip(rows.tolist(), paths, strict=True):
        last[path] = row
    newly = [row for row, path in zip(rows.tolist(), paths, strict=True) if last[path] != row]
    return np.union1d(old_dead, np.asarray(newly, dtype=np.int64)).astype(np.int64)


def write_superseded(
    folder: Path, current: Mapping[str, Any] | None, dead: np.ndarray, before: np.ndarray
) -> tuple[dict[str, Any] | None, Path | None]:
    """The header entry for the superseded rows ``dead`` and the file written for it (None when
    the list did not change from ``before``, the rows ``current`` lists, or is empty)."""
    if np.array_equal(dead, before):
        return (dict(current) if current else None), None
    if dead.size == 0:
        return None, None
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(dead, dtype="<i8"), allow_pickle=False)
    data = buffer.getvalue()
    name = next_superseded_file_name(current)
    atomic_write_bytes(folder / name, data)
    entry = {"file": name, "rows": int(dead.size), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    return entry, folder / name
