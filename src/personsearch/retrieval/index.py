"""The on-disk gallery index: float16 embedding shards, per-row metadata and a header.

Layout of an index folder::

    header.json          format, version, dimension, model fingerprint, image root, counts,
                         one entry per shard (row count, byte sizes, sha256 of both files),
                         created/updated times, free-form ``model`` info, optional ``faiss``
    shard-00000.npy      float16 [rows, dim], L2-normalised, memory-mappable (``mmap_mode="r"``)
    shard-00000.jsonl    one JSON object per row: {"path", "pid", "size", "mtime_ns"}
    faiss-00000.index    optional approximate index (see ``personsearch.retrieval.ann``)

``header.json`` is the commit point. A new index is built in a temporary folder and renamed into
place whole; an append writes its new shard first and replaces the header last, so readers only
ever see shards the header lists and an interrupted append leaves the old index valid. Files the
header does not list (left by a killed append) are ignored by readers and removed by the next
append.

Verification: ``GalleryIndex.open`` always checks that every listed file exists with the byte
size and ``.npy`` shape the header records (cheap, catches missing and truncated shards);
``verify=True`` (the default) also hashes every file with sha256, which reads the whole index
once (~0.1 s per 100,000 x 512 rows). Pass ``verify=False`` on a hot path after a first check.

Trust: every index folder carries the owner marker ``.personsearch.json`` (kind ``gallery-index``),
and only such a folder (or an older, unmarked one whose whole content is an index's) is ever
replaced. Opening checks every header field's type and range and every metadata row; a path that
is absolute, holds ``..`` or NUL, or resolves (through symbolic links) outside the image root makes
the index "damaged or tampered with". ``GalleryIndex.image_path(row)`` is the one way to turn a
row into a file to read.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import numbers
import os
import re
import stat
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from personsearch.errors import InputError
from personsearch.io import (
    OWNER_MARKER,
    RunLock,
    atomic_directory,
    atomic_open,
    atomic_write_json,
    ensure_replaceable,
    owner_kind,
    write_owner_marker,
)
from personsearch.retrieval import search as exact

log = logging.getLogger(__name__)

FORMAT_NAME = "personsearch-index"
FORMAT_VERSION = 1
HEADER_NAME = "header.json"
DEFAULT_SHARD_SIZE = 65536
_SHARD_RE = re.compile(r"^shard-(\d{5,})\.(npy|jsonl)$")
_FAISS_RE = re.compile(r"^faiss-(\d{5,})\.index$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
#: The owner-marker kind of an index folder.
INDEX_KIND = "gallery-index"
_INT64_MAX = 2**63 - 1
_MAX_DIM = 1 << 16
_MAX_HEADER_BYTES = 64 << 20
_REEXPORT = "re-export it with `personsearch export`"


def path_problem(path: Any) -> str | None:
    """Why ``path`` cannot be a gallery path relative to the image root (None when it can): it must
    be non-empty UTF-8 text, relative, without NUL or ``.``/``..``/empty components."""
    if not isinstance(path, str):
        return f"is {type(path).__name__}, not text"
    if not path:
        return "is empty"
    if "\x00" in path:
        return "contains a NUL character"
    if path.startswith("/"):
        return "is absolute"
    if any(part in ("", ".", "..") for part in path.split("/")):
        return "leaves its folder ('..', '.' or an empty component)"
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8 text"
    return None


def _is_int(value: Any, low: int = -_INT64_MAX - 1, high: int = _INT64_MAX) -> bool:
    """An integer (not a bool) within [low, high]."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and low <= int(value) <= high


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def damaged(folder: Path, detail: str) -> InputError:
    """The one message for an index whose files are not what this tool wrote."""
    return InputError(
        f"index {folder} is damaged or was tampered with: {detail}; {_REEXPORT}",
        hint="nothing was changed; export the gallery again into a new folder or over this index",
    )


@dataclass(frozen=True)
class IndexEntry:
    """One gallery image: its path relative to the image root, identity when known, and the
    size and modification time that tell whether the file changed since it was embedded."""

    path: str
    pid: int | None
    size: int
    mtime_ns: int

    @classmethod
    def for_file(cls, image_root: str | Path, file: str | Path, pid: int | None = None) -> IndexEntry:
        """Describe ``file`` (absolute, or relative to ``image_root``) from its current stat."""
        root = Path(os.path.abspath(image_root))
        file = Path(file)
        full = Path(os.path.abspath(file if file.is_absolute() else root / file))
        try:
            stat = full.stat()
        except OSError as exc:
            raise InputError(f"cannot read {full}: {exc.strerror or exc}") from None
        try:
            rel = full.relative_to(root)
        except ValueError:
            raise InputError(f"{full} is not inside the image root {root}") from None
        return cls(rel.as_posix(), pid, stat.st_size, stat.st_mtime_ns)

    @classmethod
    def from_mapping(cls, value: Mapping[str, Any] | IndexEntry, where: str) -> IndexEntry:
        """An entry from a mapping (or an entry, re-checked): path relative to the image root and
        staying inside it, pid an integer or None, size and mtime_ns integers."""
        if isinstance(value, IndexEntry):
            path, pid, size, mtime = value.path, value.pid, value.size, value.mtime_ns
        else:
            try:
                path, pid, size, mtime = value["path"], value.get("pid"), value["size"], value["mtime_ns"]
            except (KeyError, TypeError, AttributeError) as exc:
                raise InputError(
                    f"{where}: metadata must have path, pid (int or null), size and mtime_ns; got {value!r:.200}",
                    hint=f"missing: {exc}",
                ) from None
            if isinstance(path, os.PathLike):
                path = Path(path).as_posix()
        problem = path_problem(path)
        if problem is not None:
            raise InputError(f"{where}: path {path!r:.300} {problem}", hint="paths are relative to the image root")
        if not (pid is None or _is_int(pid)) or not _is_int(size, 0) or not _is_int(mtime):
            raise InputError(
                f"{where}: pid must be an integer or null, size and mtime_ns integers; "
                f"got pid={pid!r:.40} size={size!r:.40} mtime_ns={mtime!r:.40}"
            )
        if isinstance(value, IndexEntry) and type(pid) in (int, type(None)) and type(size) is int \
                and type(mtime) is int:
            return value
        return cls(path, None if pid is None else int(pid), int(size), int(mtime))


@dataclass(frozen=True)
class SearchResults:
    """Scores [Q, k'] (float32, best first) and gallery rows [Q, k'] (int64) of a search."""

    scores: torch.Tensor
    rows: torch.Tensor

    def __iter__(self) -> Iterator[torch.Tensor]:
        yield self.scores
        yield self.rows


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


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


def _shard_files(number: int) -> tuple[str, str]:
    return f"shard-{number:05d}.npy", f"shard-{number:05d}.jsonl"


def _write_shard(
    folder: Path, number: int, rows: np.ndarray, entries: Sequence[IndexEntry]
) -> dict[str, Any]:
    """Write one shard pair atomically and return its header entry."""
    npy_name, meta_name = _shard_files(number)
    with atomic_open(folder / npy_name, "wb") as handle:
        np.save(handle, np.ascontiguousarray(rows), allow_pickle=False)
    try:
        with atomic_open(folder / meta_name, "w", encoding="utf-8") as handle:
            for entry in entries:
                handle.write(json.dumps(asdict(entry), ensure_ascii=False) + "\n")
    except BaseException:
        (folder / npy_name).unlink(missing_ok=True)  # a shard is both files or neither
        raise
    return {
        "embeddings": npy_name,
        "metadata": meta_name,
        "rows": int(rows.shape[0]),
        "embeddings_bytes": (folder / npy_name).stat().st_size,
        "metadata_bytes": (folder / meta_name).stat().st_size,
        "embeddings_sha256": _sha256(folder / npy_name),
        "metadata_sha256": _sha256(folder / meta_name),
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
        self.files += [self.folder / info["embeddings"], self.folder / info["metadata"]]
        self.shards.append(info)
        self.next_shard += 1
        self.rows_written += self._buffered
        self._rows, self._entries, self._buffered = [], [], 0


def _feed(writer: IndexWriter, embeddings: Any, metadata: Iterable[Mapping[str, Any] | IndexEntry]) -> None:
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
    A folder at ``out`` that is not an index this tool wrote is refused, never replaced.
    """
    if not isinstance(model_fingerprint, str) or not model_fingerprint:
        raise InputError("model_fingerprint must be a non-empty string")
    if isinstance(shard_size, bool) or not isinstance(shard_size, int) or shard_size < 1:
        raise InputError(f"shard_size must be a positive integer, got {shard_size!r}")
    root = os.path.abspath(image_root)
    if "\x00" in root:
        raise InputError(f"image root {root!r} contains a NUL character")
    out = Path(out)
    ensure_replaceable(out, INDEX_KIND, "gallery index", legacy=is_index_folder, written=index_file_name)
    with atomic_directory(out) as tmp:
        writer = IndexWriter(tmp, 0, shard_size, None)
        _feed(writer, embeddings, metadata)
        writer.flush()
        if writer.dim is None:
            raise InputError("no embeddings given: an index needs at least one image")
        now = _now()
        header = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "dim": writer.dim,
            "dtype": "float16",
            "model_fingerprint": model_fingerprint,
            "image_root": root,
            "count": writer.rows_written,
            "shard_size": shard_size,
            "shards": writer.shards,
            "created": now,
            "updated": now,
            "model": dict(extra_header or {}),
            "faiss": None,
        }
        write_owner_marker(tmp, INDEX_KIND)
        atomic_write_json(tmp / HEADER_NAME, header)
    log.info("wrote index %s: %d rows in %d shards", out, writer.rows_written, len(writer.shards))
    return GalleryIndex.open(out, verify=False)


def _listed(header: Mapping[str, Any]) -> set[str]:
    names = {HEADER_NAME}
    for shard in header["shards"]:
        names |= {shard["embeddings"], shard["metadata"]}
    if header.get("faiss"):
        names.add(header["faiss"]["file"])
    return names


def index_file_name(name: str) -> bool:
    """A name only an index folder holds (its files, temporaries of its atomic writes, the lock)."""
    return bool(
        name in (HEADER_NAME, OWNER_MARKER, ".lock")
        or _SHARD_RE.match(name)
        or _FAISS_RE.match(name)
        or (name.startswith(".") and name.endswith(".tmp"))
    )


def is_index_folder(folder: str | Path) -> bool:
    """Whether ``folder`` is, by its whole content, an index this tool wrote (for indexes made
    before the owner marker): a fully valid header, every file it lists present, and nothing but
    index files. Raises InputError when the header is not an index header."""
    folder = Path(folder)
    header = _read_header(folder)
    listed = _listed(header)
    for name in listed:
        if not _regular(folder / name):
            return False
    for child in folder.iterdir():
        if not index_file_name(child.name) or child.is_symlink() or not child.is_file():
            return False
    return True


def _regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def _clean_unlisted(folder: Path, header: Mapping[str, Any]) -> None:
    """Remove files a killed append left behind (never anything the header lists)."""
    listed = _listed(header)
    for child in folder.iterdir():
        name = child.name
        stale = (
            _SHARD_RE.match(name) or _FAISS_RE.match(name) or (name.startswith(".") and name.endswith(".tmp"))
        ) and name not in listed
        if stale and child.is_file() and not child.is_symlink():
            log.info("removing stale %s", child)
            child.unlink(missing_ok=True)


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
    _read_header(folder)  # a clear message (and no lock file) for a folder that is not an index
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
    _clean_unlisted(folder, header)
    numbers = [int(_SHARD_RE.match(s["embeddings"]).group(1)) for s in header["shards"]]  # type: ignore[union-attr]
    writer = IndexWriter(folder, max(numbers, default=-1) + 1, 2**62, header["dim"], header["count"])
    new_files: list[Path] = []
    try:
        _feed(writer, embeddings, metadata)
        writer.flush()
        new_files = list(writer.files)
        if not writer.shards:
            log.info("nothing to append to %s", folder)
            return index
        header["shards"] = header["shards"] + writer.shards
        header["count"] = header["count"] + writer.rows_written
        header["updated"] = _now()
        if header.get("faiss"):
            from personsearch.retrieval import ann

            header["faiss"] = ann.extend_faiss(folder, header, writer.shards)
            new_files.append(folder / header["faiss"]["file"])
        atomic_write_json(folder / HEADER_NAME, header)
    except BaseException:
        for file in writer.files + new_files:
            file.unlink(missing_ok=True)
        raise
    if owner_kind(folder) != INDEX_KIND:
        write_owner_marker(folder, INDEX_KIND)  # an index made before markers: mark it now
    _clean_unlisted(folder, header)
    log.info("appended %d rows to %s as %s", writer.rows_written, folder, writer.shards[0]["embeddings"])
    return GalleryIndex.open(folder, verify=False)


def _header_error(path: Path, message: str, hint: str | None = None) -> InputError:
    return InputError(f"{path}: {message}", hint=hint)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is not a finite number")
    return value


def _parse_json(text: str) -> Any:
    """JSON as this tool writes it: no NaN/Infinity, no overflowing floats (huge integers and deep
    nesting raise ValueError/RecursionError for the caller to report)."""
    return json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 160 else text[:157] + "..."


_REQUIRED = ("dim", "count", "shards", "model_fingerprint", "image_root")
_SHARD_INT_KEYS = ("rows", "embeddings_bytes", "metadata_bytes")


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
    if not _is_int(version, 1):
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
    if not _is_int(dim, 1, _MAX_DIM):
        raise bad(f"has dim {dim!r:.60}, not an integer from 1 to {_MAX_DIM}")
    if not _is_int(count, 0):
        raise bad(f"has count {count!r:.60}, not a non-negative 64-bit integer")
    if header.get("dtype", "float16") != "float16":
        raise bad(f"has dtype {header.get('dtype')!r:.60}, not 'float16'")
    fingerprint = header["model_fingerprint"]
    if not isinstance(fingerprint, str) or not fingerprint or len(fingerprint) > 1000 or "\x00" in fingerprint:
        raise bad(f"has model_fingerprint {fingerprint!r:.80}, not a short text")
    root = header["image_root"]
    if not isinstance(root, str) or not os.path.isabs(root) or "\x00" in root or len(root) > 4096:
        raise bad(f"has image_root {root!r:.200}, not an absolute folder path")
    if "shard_size" in header and not _is_int(header["shard_size"], 1):
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
    for number, shard in enumerate(shards):
        where = f"shard entry {number}"
        if not isinstance(shard, dict):
            raise bad(f"{where} is {shard!r:.60}, not an object")
        for key, suffix in (("embeddings", "npy"), ("metadata", "jsonl")):
            name = shard.get(key)
            match = _SHARD_RE.match(name) if isinstance(name, str) else None
            if match is None or match.group(2) != suffix:
                raise bad(f"{where} names {key} file {name!r:.200}, not a shard-NNNNN.{suffix} file in the index")
            if name in names:
                raise bad(f"{where} lists {name} a second time")
            names.add(name)
        for key in _SHARD_INT_KEYS:
            if not _is_int(shard.get(key), 0):
                raise bad(f"{where} has {key} {shard.get(key)!r:.60}, not a non-negative 64-bit integer")
        for key in ("embeddings_sha256", "metadata_sha256"):
            value = shard.get(key)
            if not isinstance(value, str) or not _SHA256_RE.match(value):
                raise bad(f"{where} has {key} {value!r:.80}, not a sha256 hex digest")
        total += shard["rows"]
    if total != count:
        raise bad(f"records count {count} which does not equal the sum of the shard row counts ({total})")
    faiss = header.get("faiss")
    if faiss is not None:
        if not isinstance(faiss, dict):
            raise bad(f"has faiss {faiss!r:.60}, not an object")
        name = faiss.get("file")
        if not isinstance(name, str) or not _FAISS_RE.match(name):
            raise bad(f"names FAISS file {name!r:.200}, not a faiss-NNNNN.index file in the index")
        if not isinstance(faiss.get("sha256"), str) or not _SHA256_RE.match(faiss["sha256"]):
            raise bad(f"has FAISS sha256 {faiss.get('sha256')!r:.80}, not a sha256 hex digest")
        if "rows" in faiss and not _is_int(faiss["rows"], 0):
            raise bad(f"has FAISS rows {faiss['rows']!r:.60}, not a non-negative integer")
        if "nprobe" in faiss and not _is_int(faiss["nprobe"], 1, 1 << 30):
            raise bad(f"has FAISS nprobe {faiss['nprobe']!r:.60}, not a positive integer")
        if "factory" in faiss and not isinstance(faiss["factory"], str):
            raise bad(f"has FAISS factory {faiss['factory']!r:.60}, not text")
    return header


def _read_header(folder: Path) -> dict[str, Any]:
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
        header = _parse_json(raw.decode("utf-8"))
    except OSError as exc:
        raise damaged(folder, f"{path} cannot be read ({exc.strerror or exc})") from None
    except (ValueError, RecursionError) as exc:
        raise damaged(folder, f"{path} is a corrupt header ({_short(exc)})") from None
    return _validate_header(folder, path, header)


class GalleryIndex:
    """A read-only view of an index folder: memory-mapped shards and their checked metadata."""

    def __init__(self, path: Path, header: dict[str, Any], shards: list[np.ndarray]) -> None:
        self.path = path
        self.header = header
        self._arrays = shards
        self._tensors = [torch.from_numpy(a) for a in shards] if shards else []
        self._offsets = np.cumsum([0] + [a.shape[0] for a in shards])
        self._metadata: dict[int, list[IndexEntry]] = {}
        self._superseded: list[torch.Tensor | None] | None = None
        self._faiss: Any = None

    @classmethod
    def open(cls, path: str | Path, verify: bool = True) -> GalleryIndex:
        """Open and check an index (see the module docstring for what ``verify`` adds).

        Always: the header's fields, each shard's size and shape, every metadata row (a path that
        leaves the image root, also through a symbolic link, refuses the whole index).
        """
        folder = Path(path)
        header = _read_header(folder)
        arrays: list[np.ndarray] = []
        for shard in header["shards"]:
            arrays.append(cls._check_shard(folder, header, shard, verify))
        if header.get("faiss"):
            file = folder / header["faiss"]["file"]
            if not _regular(file):
                raise damaged(folder, f"FAISS file {file} is listed in the header but missing")
            if verify and _sha256(file) != header["faiss"]["sha256"]:
                raise damaged(folder, f"FAISS file {file} is corrupt (checksum mismatch)")
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # read-only mmap; the tensors are never written
            index = cls(folder, header, arrays)
        for s in range(len(arrays)):
            index._shard_metadata(s)
        index._check_links()
        return index

    @staticmethod
    def _check_shard(
        folder: Path, header: Mapping[str, Any], shard: Mapping[str, Any], verify: bool
    ) -> np.ndarray:
        for kind in ("embeddings", "metadata"):
            file = folder / shard[kind]
            try:
                info = os.stat(file)
            except FileNotFoundError:
                raise damaged(folder, f"shard file {file} is missing") from None
            except OSError as exc:
                raise damaged(folder, f"shard file {file} cannot be read ({exc.strerror or exc})") from None
            if not stat.S_ISREG(info.st_mode):
                raise damaged(folder, f"shard file {file} is not a regular file")
            size, recorded = info.st_size, shard[f"{kind}_bytes"]
            if size != recorded:
                what = "truncated" if size < recorded else "changed"
                raise damaged(folder, f"shard file {file} is {what}: {size} bytes, the header records {recorded}")
            if verify and _sha256(file) != shard[f"{kind}_sha256"]:
                raise damaged(folder, f"shard file {file} is corrupt (sha256 checksum mismatch)")
        file = folder / shard["embeddings"]
        try:
            array = np.load(file, mmap_mode="r", allow_pickle=False)
        except Exception as exc:  # noqa: BLE001 - numpy's header parser raises many kinds (even TokenError)
            raise damaged(folder, f"shard file {file} is not a readable .npy array ({_short(exc)})") from None
        expected = (int(shard["rows"]), int(header["dim"]))
        if (not isinstance(array, np.ndarray) or array.dtype != np.float16 or array.shape != expected
                or not array.flags.c_contiguous):
            raise damaged(
                folder,
                f"shard file {file} holds {getattr(array, 'dtype', '?')} {list(getattr(array, 'shape', ()))}, "
                f"the header records float16 {list(expected)}",
            )
        return array

    # -- facts -----------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return int(self.header["dim"])

    @property
    def model_fingerprint(self) -> str:
        return str(self.header["model_fingerprint"])

    @property
    def image_root(self) -> Path:
        return Path(self.header["image_root"])

    @property
    def model_info(self) -> dict[str, Any]:
        return dict(self.header.get("model") or {})

    def __len__(self) -> int:
        return int(self.header["count"])

    def embeddings(self, shard: int) -> np.ndarray:
        """The read-only memory map of one shard (float16 [rows, dim])."""
        return self._arrays[shard]

    def iter_embeddings(self, chunk_rows: int = exact.CHUNK_ROWS) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, float32 chunk) over the whole gallery, one bounded chunk at a time."""
        for s, array in enumerate(self._arrays):
            for start in range(0, array.shape[0], chunk_rows):
                yield (
                    int(self._offsets[s]) + start,
                    np.asarray(array[start : start + chunk_rows], dtype=np.float32),
                )

    # -- metadata --------------------------------------------------------------------------
    def _shard_metadata(self, s: int) -> list[IndexEntry]:
        if s not in self._metadata:
            shard = self.header["shards"][s]
            file = self.path / shard["metadata"]
            try:
                with open(file, "rb") as handle:
                    raw = handle.read(int(shard["metadata_bytes"]) + 1)
            except OSError as exc:
                raise damaged(self.path, f"{file} cannot be read ({exc.strerror or exc})") from None
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                line_no = raw[: exc.start].count(b"\n") + 1
                raise damaged(self.path, f"{file} line {line_no} is not UTF-8 text") from None
            lines = text.split("\n")
            if lines and lines[-1] == "":
                lines.pop()
            if len(lines) != shard["rows"]:
                raise damaged(
                    self.path, f"{file} has {len(lines)} metadata rows but the header records {shard['rows']}"
                )
            entries: list[IndexEntry] = []
            for line_no, line in enumerate(lines, 1):
                try:
                    value = _parse_json(line)
                except (ValueError, RecursionError) as exc:
                    raise damaged(self.path, f"{file} line {line_no} is not valid JSON ({_short(exc)})") from None
                if not isinstance(value, dict):
                    raise damaged(self.path, f"{file} line {line_no} is not a metadata row: {value!r:.200}")
                try:
                    entries.append(IndexEntry.from_mapping(value, f"{file} line {line_no}"))
                except InputError as exc:
                    raise damaged(self.path, exc.message) from None
            self._metadata[s] = entries
        return self._metadata[s]

    def _escape(self, row: int, entry: IndexEntry, target: str) -> InputError:
        return damaged(
            self.path,
            f"row {row} ({entry.path!r:.300}) resolves to {target!r:.300}, outside the image root "
            f"{str(self.image_root)!r:.300}",
        )

    def _check_links(self) -> None:
        """Refuse rows that leave the image root through a symbolic link (one lstat per row, one
        realpath per folder). Skipped when the image root is absent here (nothing can be read)."""
        root = os.path.realpath(self.image_root)
        if not os.path.isdir(root):
            return
        parents: dict[str, str] = {"": root}
        for row, entry in enumerate(self.entries()):
            parent, _, name = entry.path.rpartition("/")
            real_parent = parents.get(parent)
            if real_parent is None:
                real_parent = parents[parent] = os.path.realpath(os.path.join(root, parent))
            if not _inside(real_parent, root):
                raise self._escape(row, entry, os.path.join(real_parent, name))
            full = os.path.join(real_parent, name)
            if os.path.islink(full):
                target = os.path.realpath(full)
                if not _inside(target, root):
                    raise self._escape(row, entry, target)

    def image_path(self, row: int) -> Path:
        """The absolute, resolved path of ``row``'s image, guaranteed inside the image root.

        The one way to turn a row into a file to read (contact sheets, a server's image by row):
        a row whose path leaves the root, also through a symbolic link made after the export,
        raises the damaged-or-tampered InputError. A row outside the index raises IndexError.
        """
        if isinstance(row, bool) or not isinstance(row, (int, np.integer)):
            raise TypeError(f"row must be an integer, got {row!r:.60}")
        entry = self.entry(int(row))
        problem = path_problem(entry.path)
        if problem is not None:
            raise damaged(self.path, f"row {row} path {entry.path!r:.300} {problem}")
        root = os.path.realpath(self.image_root)
        full = os.path.realpath(os.path.join(root, entry.path))
        if not _inside(full, root):
            raise self._escape(int(row), entry, full)
        return Path(full)

    def entry(self, row: int) -> IndexEntry:
        if not 0 <= row < len(self):
            raise IndexError(f"row {row} is outside the index (0..{len(self) - 1})")
        s = int(np.searchsorted(self._offsets, row, side="right")) - 1
        return self._shard_metadata(s)[row - int(self._offsets[s])]

    def metadata(self, rows: Any) -> Any:
        """Entries for ``rows``: an int gives one ``IndexEntry``; 1-D a list; 2-D a list of lists."""
        if isinstance(rows, (int, np.integer)):
            return self.entry(int(rows))
        values = rows.tolist() if hasattr(rows, "tolist") else list(rows)
        if values and isinstance(values[0], list):
            return [[self.entry(int(r)) for r in line] for line in values]
        return [self.entry(int(r)) for r in values]

    def entries(self) -> Iterator[IndexEntry]:
        """Every entry in row order."""
        for s in range(len(self._arrays)):
            yield from self._shard_metadata(s)

    def _superseded_rows(self) -> list[torch.Tensor | None]:
        """Rows whose path was indexed again later (the file changed and was appended anew)."""
        if self._superseded is None:
            last: dict[str, int] = {}
            for row, e in enumerate(self.entries()):
                last[e.path] = row
            live = np.zeros(len(self), dtype=bool)
            live[list(last.values())] = True
            self._superseded = []
            for s in range(len(self._arrays)):
                dead = np.flatnonzero(~live[self._offsets[s] : self._offsets[s + 1]])
                self._superseded.append(torch.from_numpy(dead) if dead.size else None)
        return self._superseded

    # -- search ----------------------------------------------------------------------------
    def search(
        self, queries: Any, k: int, backend: str = "exact", nprobe: int | None = None
    ) -> SearchResults:
        """Top-``k`` gallery rows for each query embedding [Q, D] (or [D]), best first.

        Queries are L2-normalised here; scores are cosine similarities. k larger than the gallery
        returns every row (k' = min(k, searchable rows)); ties rank the lower row first. When a
        file was re-embedded by an append, only its newest row is searchable. ``backend="faiss"``
        uses the index built by ``build_faiss`` (approximate; ``nprobe`` lists probed).
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise InputError(f"k must be a positive integer, got {k!r}")
        try:
            q = exact.prepare_queries(queries, self.dim)
        except ValueError as exc:
            raise InputError(str(exc)) from None
        if backend == "exact":
            dead = self._superseded_rows()
            exclude = dead if any(d is not None for d in dead) else None
            scores, rows = exact.search_shards(self._tensors, q, int(k), exclude)
            return SearchResults(scores, rows)
        if backend == "faiss":
            from personsearch.retrieval import ann

            scores, rows = ann.search_faiss(self, q, int(k), nprobe)
            return SearchResults(scores, rows)
        raise InputError(f"unknown search backend {backend!r}", hint="use 'exact' or 'faiss'")


def files_to_embed(index: GalleryIndex | str | Path, candidate_files: Iterable[str | Path]) -> list[Path]:
    """The candidates (absolute, or relative to the index's image root) not yet indexed as they
    are now: new files and files whose size or modification time changed. Returned absolute, in
    the given order; a missing candidate raises InputError."""
    if not isinstance(index, GalleryIndex):
        index = GalleryIndex.open(index, verify=False)
    known = {(e.path, e.size, e.mtime_ns) for e in index.entries()}
    root = index.image_root
    todo: list[Path] = []
    for file in candidate_files:
        entry = IndexEntry.for_file(root, file)
        if (entry.path, entry.size, entry.mtime_ns) not in known:
            todo.append(root / entry.path)
    return todo


def sha256_of(path: str | Path) -> str:
    """sha256 hex digest of a file, read in blocks (also used for model fingerprints)."""
    return _sha256(Path(path))


__all__ = [
    "DEFAULT_SHARD_SIZE",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "GalleryIndex",
    "IndexEntry",
    "IndexWriter",
    "SearchResults",
    "INDEX_KIND",
    "append_locked",
    "append_to_index",
    "damaged",
    "files_to_embed",
    "is_index_folder",
    "normalise_rows",
    "path_problem",
    "sha256_of",
    "write_index",
]
