"""The row tables of a shard: where each metadata line ends, a digest of it, and keys for appends.

A shard's metadata is one JSON line per row (``index_entry``). Two small arrays beside it let a
reader touch only the rows it needs:

- ``lines`` (int64 [rows, 2]): the byte offset just past row i's newline, and a 64-bit BLAKE2b
  digest of the line (without its newline). Row i is the bytes from the end of row i-1 (0 for the
  first) to its own end; a row read that way is trusted only when its digest matches. The last end
  is the metadata file's size.
- ``keys`` (uint64 [rows, 2]): a 64-bit key of the row's path (BLAKE2b) and one of (path key,
  size, mtime_ns) (a splitmix64 mix, computed for a million candidates at once).
  An append decides "already indexed as it is now" by the pair (both keys must match: a false
  match needs two independent 64-bit collisions) and "superseded" by the path key, confirmed by
  reading the few rows whose path keys meet (``index_supersede``).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from personsearch.errors import InputError
from personsearch.retrieval.index_entry import IndexEntry
from personsearch.retrieval.index_format import damaged, parse_json, short_reason

#: A metadata line longer than this is not one this tool wrote (paths are at most a few KiB).
MAX_LINE_BYTES = 1 << 20
_INT64 = np.dtype("<i8")
_UINT64 = np.dtype("<u8")


def _digest(data: bytes, person: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8, person=person).digest(), "little")


def line_digest(line: bytes) -> int:
    """The digest of one metadata line (without its newline), as a signed 64-bit integer."""
    value = _digest(line, b"ps-line")
    return value - (1 << 64) if value >= 1 << 63 else value


def path_key(path: str) -> int:
    """The 64-bit key of a gallery path."""
    return _digest(path.encode("utf-8"), b"ps-path")


def _mix(values: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser: a bijection of uint64 that spreads every input bit over the output."""
    values = (values ^ (values >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    values = (values ^ (values >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return values ^ (values >> np.uint64(31))


def _file_keys(path_keys: np.ndarray, sizes: np.ndarray, mtimes: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return _mix(_mix(path_keys ^ _mix(sizes.view(_UINT64))) ^ mtimes.view(_UINT64))


def file_key(path: str, size: int, mtime_ns: int) -> int:
    """The 64-bit key of a file as it was: its path (key), size and modification time."""
    keys = _file_keys(np.array([path_key(path)], dtype=_UINT64), np.array([size], dtype=_INT64),
                      np.array([mtime_ns], dtype=_INT64))
    return int(keys[0])


def entry_keys(entries: Sequence[IndexEntry]) -> np.ndarray:
    """The keys table (uint64 [n, 2]) of ``entries``: one hash of each path, the rest vectorised."""
    n = len(entries)
    base = hashlib.blake2b(digest_size=8, person=b"ps-path")

    def digest(entry: IndexEntry) -> bytes:
        hasher = base.copy()
        hasher.update(entry.path.encode("utf-8"))
        return hasher.digest()

    digests = b"".join(map(digest, entries))
    keys = np.empty((n, 2), dtype=_UINT64)
    keys[:, 0] = np.frombuffer(digests, dtype=_UINT64, count=n)
    sizes = np.fromiter((e.size for e in entries), dtype=_INT64, count=n)
    mtimes = np.fromiter((e.mtime_ns for e in entries), dtype=_INT64, count=n)
    keys[:, 1] = _file_keys(keys[:, 0], sizes, mtimes)
    return keys


def encode_rows(entries: Sequence[IndexEntry]) -> tuple[bytes, np.ndarray, np.ndarray]:
    """The metadata file's bytes for ``entries`` and its lines and keys tables."""
    parts: list[bytes] = []
    lines = np.empty((len(entries), 2), dtype=_INT64)
    end = 0
    for i, entry in enumerate(entries):
        line = json.dumps(asdict(entry), ensure_ascii=False).encode("utf-8")
        parts.append(line)
        parts.append(b"\n")
        end += len(line) + 1
        lines[i, 0] = end
        lines[i, 1] = line_digest(line)
    return b"".join(parts), lines, entry_keys(entries)


def lines_table(raw: bytes) -> np.ndarray:
    """The lines table of a metadata file's bytes (one line per row, each ending in a newline)."""
    chunks = raw.split(b"\n")
    if chunks and chunks[-1] == b"":
        chunks.pop()
    lines = np.empty((len(chunks), 2), dtype=_INT64)
    end = 0
    for i, line in enumerate(chunks):
        end += len(line) + 1
        lines[i, 0] = end
        lines[i, 1] = line_digest(line)
    return lines


def parse_row(folder: Path, file: Path, line_no: int, line: bytes) -> IndexEntry:
    """One metadata line as a checked entry; anything else makes the index damaged."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise damaged(folder, f"{file} line {line_no} is not UTF-8 text") from None
    try:
        value = parse_json(text)
    except (ValueError, RecursionError) as exc:
        raise damaged(folder, f"{file} line {line_no} is not valid JSON ({short_reason(exc)})") from None
    if not isinstance(value, dict):
        raise damaged(folder, f"{file} line {line_no} is not a metadata row: {value!r:.200}")
    try:
        return IndexEntry.from_mapping(value, f"{file} line {line_no}")
    except InputError as exc:
        raise damaged(folder, exc.message) from None


def _open_metadata(folder: Path, shard: Mapping[str, Any]) -> int:
    """A descriptor of the shard's metadata file, checked to be the regular file of recorded size."""
    file = folder / shard["metadata"]
    try:
        fd = os.open(file, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise damaged(folder, f"shard file {file} cannot be read ({exc.strerror or exc})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_size != shard["metadata_bytes"]:
            raise damaged(folder, f"shard file {file} changed since the index was opened")
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_rows(
    folder: Path, shard: Mapping[str, Any], lines: np.ndarray, local_rows: Sequence[int]
) -> list[IndexEntry]:
    """The checked entries of ``local_rows`` of one shard, read by offset from its metadata file.

    Each row's byte range must lie inside the file, end with a newline and match the line's
    digest: anything else (a damaged file or table) makes the index damaged, never a wrong row.
    """
    file = folder / shard["metadata"]
    size = int(shard["metadata_bytes"])
    fd = _open_metadata(folder, shard)
    try:
        out = []
        for local in local_rows:
            start = int(lines[local - 1, 0]) if local > 0 else 0
            end, digest = int(lines[local, 0]), int(lines[local, 1])
            if not 0 <= start < end <= size or end - start > MAX_LINE_BYTES:
                raise damaged(folder, f"the line table of {file} gives row {local} the bytes {start}..{end}")
            data = os.pread(fd, end - start, start)
            if len(data) != end - start or not data.endswith(b"\n") or line_digest(data[:-1]) != digest:
                raise damaged(folder, f"{file} line {local + 1} does not match its line table")
            out.append(parse_row(folder, file, local + 1, data[:-1]))
        return out
    finally:
        os.close(fd)


def read_shard(folder: Path, shard: Mapping[str, Any], verify: bool) -> tuple[list[IndexEntry], bytes]:
    """Every checked row of one shard's metadata file and the file's bytes (hashed first with
    ``verify``); anything this tool would not have written makes the index damaged."""
    file = folder / shard["metadata"]
    fd = _open_metadata(folder, shard)
    try:
        with os.fdopen(fd, "rb", closefd=False) as handle:
            raw = handle.read(int(shard["metadata_bytes"]) + 1)
    except OSError as exc:
        raise damaged(folder, f"{file} cannot be read ({exc.strerror or exc})") from None
    finally:
        os.close(fd)
    if verify and hashlib.sha256(raw).hexdigest() != shard["metadata_sha256"]:
        raise damaged(folder, f"shard file {file} is corrupt (sha256 checksum mismatch)")
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    if len(lines) != shard["rows"]:
        raise damaged(folder, f"{file} has {len(lines)} metadata rows but the header records {shard['rows']}")
    return [parse_row(folder, file, number, line) for number, line in enumerate(lines, 1)], raw
