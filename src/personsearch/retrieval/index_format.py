"""The on-disk format of a gallery index: its file names, its header, and the checks every reader makes.

Layout of an index folder (format version 2)::

    header.json             format, version, dimension, model fingerprint, image root, counts,
                            one entry per shard (row count, file names, byte sizes and sha256 of
                            its four files), the superseded-rows entry, created/updated times,
                            free-form ``model`` info, optional ``faiss``
    shard-00000.npy         float16 [rows, dim], L2-normalised, memory-mappable (``mmap_mode="r"``)
    shard-00000.jsonl       one JSON object per row: {"path", "pid", "size", "mtime_ns"}
                            (see ``personsearch.retrieval.index_entry``)
    shard-00000.lines.npy   int64 [rows, 2]: the byte offset just past each row's line in the
                            ``.jsonl`` file, and a 64-bit digest of the line (``index_rows``)
    shard-00000.keys.npy    uint64 [rows, 2]: 64-bit keys of each row's path and of its
                            (path, size, mtime_ns), for appends (``index_rows``)
    superseded-00000.npy    int64 [n], sorted: the rows whose file was indexed again by a later
                            row (header ``superseded``: file, rows, bytes, sha256; null when none)
    faiss-00000.index       optional approximate index (see ``personsearch.retrieval.ann``)

Version 1 (written before the row tables existed) has no ``lines``/``keys`` files and no
``superseded`` entry: readers parse its whole metadata on open, and the next append upgrades it
to version 2 (writing the tables for its shards) without rewriting any of its files.

Paths in the header (``image_root``; ``run``, ``weights``, ``images`` and ``data`` under ``model``)
are absolute, and ``relative`` (optional: none in indexes written before it) holds them relative
to the index folder too (``{"image_root": "../../raw", "model.run": "..", ...}``): read first
where they exist, so an index moved or copied together with its images and run keeps working
(``personsearch.io.recorded``). ``GalleryIndex`` resolves them (``image_root``, ``model_info``).

``header.json`` is the commit point. A new index is built in a temporary folder and renamed into
place whole; an append writes its new shard (and a new superseded list, under a new name) first
and replaces the header last, so readers only ever see files the header lists and an interrupted
append leaves the old index valid. Files the header does not list (left by a killed append) are
ignored by readers and removed by the next append.

Verification, and what a query pays for it (``index_files``, ``GalleryIndex.open``):

- Always, on open: every listed file exists, is a regular file and has the recorded byte size;
  every embeddings file has the recorded dtype and shape. Opening reads the header, the
  superseded list and the ``.npy`` headers, nothing that grows with the rows but the list of
  shards. A shard's line table is read when a row of that shard is first read (and must end where
  the ``.jsonl`` file ends); each row read is checked against its line digest and its path
  against ``path_problem``; ``image_path(row)`` refuses a row that leaves the image root through
  a symbolic link.
- ``verify=True`` (the default) hashes what is read whole: the superseded list on open, a line
  table when it is read (16 bytes a row: 1 MB per full shard), the key tables when an append
  reads them. A query over a 1M-row index hashes the tables of the few shards its hits fall in,
  not 1 GB of embeddings. The choice: a changed embedding (same size and shape) can then change
  a score unnoticed, but never which file a row names, and never a file outside the image root;
  hashing it on every query would cost more than the search. ``verify="full"`` finds it.
- ``verify="full"`` hashes every file (embeddings, metadata, tables, FAISS; ~1 s per GB), parses
  every metadata row and checks it against its line digest, its keys and the superseded list, and
  checks every row for a link out of the image root.
- An index of at most ``CHECK_ALL_ROWS`` rows, and every version-1 index, is opened as ``"full"``
  does (hashing only with ``verify``): there the whole check costs a few milliseconds, and a
  tampered row is refused on open even when no query reaches it. ``verify=False`` skips hashing.

The FAISS file is hashed before FAISS reads it (when ``verify``), which is when a search first
uses it, not on open.

Trust: every index folder carries the owner marker ``.personsearch.json`` (kind ``gallery-index``),
and only such a folder (or an older, unmarked one whose whole content is an index's) is ever
replaced. ``read_header`` checks every header field's type and range; anything this tool would
not have written makes the index "damaged or tampered with" (``damaged``), one message for all.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from personsearch.errors import InputError
from personsearch.io import OWNER_MARKER
from personsearch.io.recorded import RELATIVE, relative_fault

FORMAT_NAME = "personsearch-index"
FORMAT_VERSION = 2
#: Versions this code reads (version 1: no row tables; upgraded by the next append).
READABLE_VERSIONS = (1, 2)
HEADER_NAME = "header.json"
#: The owner-marker kind of an index folder.
INDEX_KIND = "gallery-index"
#: A shard file name: number, then ``npy`` (embeddings), ``jsonl`` (metadata), ``lines.npy`` or
#: ``keys.npy`` (row tables).
SHARD_FILE_RE = re.compile(r"^shard-(\d{5,})\.(npy|jsonl|lines\.npy|keys\.npy)$")
#: The superseded-rows file name, numbered up whenever the list changes.
SUPERSEDED_FILE_RE = re.compile(r"^superseded-(\d{5,})\.npy$")
#: An index of at most this many rows is checked whole on open (see the module docstring).
CHECK_ALL_ROWS = 8192
#: A shard entry's files: header key -> file name suffix (after ``shard-NNNNN.``).
SHARD_FILES = {"embeddings": "npy", "metadata": "jsonl", "lines": "lines.npy", "keys": "keys.npy"}
#: The row-table files of a version-2 shard entry.
TABLE_KINDS = ("lines", "keys")
#: A FAISS file name, numbered up at every rebuild or extension.
FAISS_FILE_RE = re.compile(r"^faiss-(\d{5,})\.index$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_INT64_MAX = 2**63 - 1
_MAX_DIM = 1 << 16
_MAX_HEADER_BYTES = 64 << 20
_REEXPORT = "re-export it with `personsearch export`"


def is_integer(value: Any, low: int = -_INT64_MAX - 1, high: int = _INT64_MAX) -> bool:
    """An integer (not a bool) within [low, high]."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and low <= int(value) <= high


def damaged(folder: Path, detail: str) -> InputError:
    """The one message for an index whose files are not what this tool wrote."""
    return InputError(
        f"index {folder} is damaged or was tampered with: {detail}; {_REEXPORT}",
        hint="nothing was changed; export the gallery again into a new folder or over this index",
    )


def shard_file_names(number: int) -> tuple[str, str]:
    """The (embeddings, metadata) file names of shard ``number``."""
    return f"shard-{number:05d}.npy", f"shard-{number:05d}.jsonl"


def table_file_name(number: int, kind: str) -> str:
    """The file name of shard ``number``'s row table ``kind`` (``lines`` or ``keys``)."""
    return f"shard-{number:05d}.{SHARD_FILES[kind]}"


def shard_number(shard: Mapping[str, Any]) -> int:
    """The number in a (checked) shard entry's embeddings file name."""
    match = SHARD_FILE_RE.match(shard["embeddings"])
    assert match is not None  # read_header checked every name
    return int(match.group(1))


def next_superseded_file_name(current: Mapping[str, Any] | None) -> str:
    """The name for a new superseded-rows file: one past the ``current`` header entry's."""
    number = 0
    if current and (match := SUPERSEDED_FILE_RE.match(current["file"])):
        number = int(match.group(1)) + 1
    return f"superseded-{number:05d}.npy"


def next_faiss_file_name(current: Mapping[str, Any] | None) -> str:
    """The name for a new FAISS file: one past the ``current`` header entry's (a new name, so the
    old file stays valid until the header that lists the new one is committed)."""
    number = 0
    if current and (match := FAISS_FILE_RE.match(current["file"])):
        number = int(match.group(1)) + 1
    return f"faiss-{number:05d}.index"


def listed_files(header: Mapping[str, Any]) -> set[str]:
    """Every file the header lists (itself included): the committed index."""
    names = {HEADER_NAME}
    for shard in header["shards"]:
        names |= {shard[kind] for kind in SHARD_FILES if kind in shard}
    for key in ("faiss", "superseded"):
        if header.get(key):
            names.add(header[key]["file"])
    return names


def index_file_name(name: str) -> bool:
    """A name only an index folder holds (its files, temporaries of its atomic writes, the lock)."""
    return bool(
        name in (HEADER_NAME, OWNER_MARKER, ".lock")
        or SHARD_FILE_RE.match(name)
        or FAISS_FILE_RE.match(name)
        or SUPERSEDED_FILE_RE.match(name)
        or (name.startswith(".") and name.endswith(".tmp"))
    )


def is_index_folder(folder: str | Path) -> bool:
    """Whether ``folder`` is, by its whole content, an index this tool wrote (for indexes made
    before the owner marker): a fully valid header, every file it lists present, and nothing but
    index files. Raises InputError when the header is not an index header."""
    folder = Path(folder)
    header = read_header(folder)
    listed = listed_files(header)
    for name in listed:
        if not is_regular_file(folder / name):
            return False
    for child in folder.iterdir():
        if not index_file_name(child.name) or child.is_symlink() or not child.is_file():
            return False
    return True


def is_regular_file(path: Path) -> bool:
    """A regular file (links followed); False when it cannot be stat-ed."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def _header_error(path: Path, message: str, hint: str | None = None) -> InputError:
    return InputError(f"{path}: {message}", hint=hint)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is not a finite number")
    return value


def parse_json(text: str) -> Any:
    """JSON as this tool writes it: no NaN/Infinity, no overflowing floats (huge integers and deep
    nesting raise ValueError/RecursionError for the caller to report)."""
    return json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)


def short_reason(exc: BaseException) -> str:
    """An exception's text, cut to fit in one message line."""
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


_REQUIRED = ("dim", "count", "shards", "model_fingerprint", "image_root")
#: Keys under the header's ``model`` that hold paths (absolute; relative forms under ``relative``).
MODEL_PATH_KEYS = ("run", "weights", "images", "data")
#: The keys the header's ``relative`` object may hold: the header fields whose relative form it is.
RELATIVE_KEYS = ("image_root", *(f"model.{key}" for key in MODEL_PATH_KEYS))


def _validate_header(folder: Path, path: Path, header: Any) -> dict[str, Any]:
    """Every field of the header has the type and range this tool writes."""
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        found = header.get("format") if isinstance(header, dict) else type(header).__name__
        raise _header_error(
            path, f"unknown index format {found!r:.80} (expected {FORMAT_NAME!r})",
            hint="not a personsearch index; pass the folder `personsearch export` wrote",
        )

    def bad(detail: str) -> InputError:
        return damaged(folder, f"{path.name} {detail}")

    version = header.get("format_version")
    if not is_integer(version, 1):
        raise bad(f"has an invalid format_version {version!r:.60}")
    if version > FORMAT_VERSION:
        raise _header_error(
            path,
            f"this index needs personsearch format version {version}; this personsearch reads up to "
            f"version {FORMAT_VERSION}",
            hint="upgrade personsearch",
        )
    missing = [key for key in _REQUIRED if key not in header]
    if missing:
        raise bad(f"is missing {', '.join(missing)}")
    dim, count, shards = header["dim"], header["count"], header["shards"]
    if not is_integer(dim, 1, _MAX_DIM):
        raise bad(f"has dim {dim!r:.60}, not an integer from 1 to {_MAX_DIM}")
    if not is_integer(count, 0):
        raise bad(f"has count {count!r:.60}, not a non-negative 64-bit integer")
    if header.get("dtype", "float16") != "float16":
        raise bad(f"has dtype {header.get('dtype')!r:.60}, not 'float16'")
    fingerprint = header["model_fingerprint"]
    if not isinstance(fingerprint, str) or not fingerprint or len(fingerprint) > 1000 or "\x00" in fingerprint:
        raise bad(f"has model_fingerprint {fingerprint!r:.80}, not a short text")
    root = header["image_root"]
    if not isinstance(root, str) or not os.path.isabs(root) or "\x00" in root or len(root) > 4096:
        raise bad(f"has image_root {root!r:.200}, not an absolute folder path")
    relative = header.get(RELATIVE)
    if relative is not None:
        if not isinstance(relative, dict) or set(relative) - set(RELATIVE_KEYS):
            raise bad(f"has {RELATIVE} {relative!r:.200}, not an object of {', '.join(RELATIVE_KEYS)}")
        for key, value in relative.items():
            fault = relative_fault(value)
            if fault:
                raise bad(f"has {RELATIVE}[{key!r}] {value!r:.200}, which {fault}")
    if "shard_size" in header and not is_integer(header["shard_size"], 1):
        raise bad(f"has shard_size {header['shard_size']!r:.60}, not a positive integer")
    for key in ("created", "updated"):
        if header.get(key) is not None and not isinstance(header[key], str):
            raise bad(f"has {key} {header[key]!r:.60}, not a time stamp")
    if header.get("model") is not None and not isinstance(header["model"], dict):
        raise bad(f"has model {header['model']!r:.60}, not an object")
    if not isinstance(shards, list):
        raise bad(f"has shards {shards!r:.60}, not a list")
    names: set[str] = set()
    total = 0
    kinds = list(SHARD_FILES) if version >= 2 else ["embeddings", "metadata"]
    for number, shard in enumerate(shards):
        where = f"shard entry {number}"
        if not isinstance(shard, dict):
            raise bad(f"{where} is {shard!r:.60}, not an object")
        for key in kinds:
            suffix = SHARD_FILES[key]
            name = shard.get(key)
            match = SHARD_FILE_RE.match(name) if isinstance(name, str) else None
            if match is None or match.group(2) != suffix:
                raise bad(f"{where} names {key} file {name!r:.200}, not a shard-NNNNN.{suffix} file in the index")
            if name in names:
                raise bad(f"{where} lists {name} a second time")
            names.add(name)
            if not is_integer(shard.get(f"{key}_bytes"), 0):
                raise bad(f"{where} has {key}_bytes {shard.get(f'{key}_bytes')!r:.60}, not a non-negative "
                          "64-bit integer")
            value = shard.get(f"{key}_sha256")
            if not isinstance(value, str) or not _SHA256_RE.match(value):
                raise bad(f"{where} has {key}_sha256 {value!r:.80}, not a sha256 hex digest")
        if not is_integer(shard.get("rows"), 0):
            raise bad(f"{where} has rows {shard.get('rows')!r:.60}, not a non-negative 64-bit integer")
        total += shard["rows"]
    if total != count:
        raise bad(f"records count {count} which does not equal the sum of the shard row counts ({total})")
    if version >= 2:
        if "superseded" not in header:
            raise bad("is missing superseded")
        _validate_superseded(header["superseded"], count, bad)
    faiss = header.get("faiss")
    if faiss is not None:
        if not isinstance(faiss, dict):
            raise bad(f"has faiss {faiss!r:.60}, not an object")
        name = faiss.get("file")
        if not isinstance(name, str) or not FAISS_FILE_RE.match(name):
            raise bad(f"names FAISS file {name!r:.200}, not a faiss-NNNNN.index file in the index")
        if not isinstance(faiss.get("sha256"), str) or not _SHA256_RE.match(faiss["sha256"]):
            raise bad(f"has FAISS sha256 {faiss.get('sha256')!r:.80}, not a sha256 hex digest")
        if "rows" in faiss and not is_integer(faiss["rows"], 0):
            raise bad(f"has FAISS rows {faiss['rows']!r:.60}, not a non-negative integer")
        if "nprobe" in faiss and not is_integer(faiss["nprobe"], 1, 1 << 30):
            raise bad(f"has FAISS nprobe {faiss['nprobe']!r:.60}, not a positive integer")
        if "factory" in faiss and not isinstance(faiss["factory"], str):
            raise bad(f"has FAISS factory {faiss['factory']!r:.60}, not text")
    return header


def _validate_superseded(entry: Any, count: int, bad: Any) -> None:
    """The header's ``superseded`` entry: null, or the file of 1..count superseded rows."""
    if entry is None:
        return
    if not isinstance(entry, dict):
        raise bad(f"has superseded {entry!r:.60}, not an object")
    name = entry.get("file")
    if not isinstance(name, str) or not SUPERSEDED_FILE_RE.match(name):
        raise bad(f"names superseded file {name!r:.200}, not a superseded-NNNNN.npy file in the index")
    if not is_integer(entry.get("rows"), 1, max(1, count)) or count == 0:
        raise bad(f"has superseded rows {entry.get('rows')!r:.60}, not an integer from 1 to the count {count}")
    if not is_integer(entry.get("bytes"), 0):
        raise bad(f"has superseded bytes {entry.get('bytes')!r:.60}, not a non-negative integer")
    if not isinstance(entry.get("sha256"), str) or not _SHA256_RE.match(entry["sha256"]):
        raise bad(f"has superseded sha256 {entry.get('sha256')!r:.80}, not a sha256 hex digest")


def read_header(folder: Path) -> dict[str, Any]:
    """The checked header of the index at ``folder`` (InputError naming what is wrong otherwise)."""
    folder = Path(folder)
    try:
        folder_stat = os.stat(folder)
    except FileNotFoundError:
        raise InputError(f"index {folder} does not exist", hint="create it with `personsearch export`") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot open index {folder}: {getattr(exc, 'strerror', None) or exc}") from None
    if not stat.S_ISDIR(folder_stat.st_mode):
        raise InputError(f"{folder} is not an index folder", hint="pass the folder `personsearch export` wrote")
    path = folder / HEADER_NAME
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise InputError(
            f"{folder} has no {HEADER_NAME}: not a personsearch index, or an incomplete copy",
            hint="pass the folder `personsearch export` wrote",
        ) from None
    except OSError as exc:
        raise damaged(folder, f"{path} cannot be read ({exc.strerror or exc})") from None
    if not stat.S_ISREG(info.st_mode):
        raise damaged(folder, f"{path} is not a regular file")
    if info.st_size > _MAX_HEADER_BYTES:
        raise damaged(folder, f"{path} is {info.st_size} bytes, far larger than any index header")
    try:
        with open(path, "rb") as handle:
            raw = handle.read(_MAX_HEADER_BYTES + 1)
        header = parse_json(raw.decode("utf-8"))
    except OSError as exc:
        raise damaged(folder, f"{path} cannot be read ({exc.strerror or exc})") from None
    except (ValueError, RecursionError) as exc:
        raise damaged(folder, f"{path} is a corrupt header ({short_reason(exc)})") from None
    return _validate_header(folder, path, header)
