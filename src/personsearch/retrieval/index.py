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
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from personsearch.errors import InputError
from personsearch.io import RunLock, atomic_directory, atomic_open, atomic_write_json
from personsearch.retrieval import search as exact

log = logging.getLogger(__name__)

FORMAT_NAME = "personsearch-index"
FORMAT_VERSION = 1
HEADER_NAME = "header.json"
DEFAULT_SHARD_SIZE = 65536
_SHARD_RE = re.compile(r"^shard-(\d{5,})\.(npy|jsonl)$")


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
        if isinstance(value, IndexEntry):
            entry = value
        else:
            try:
                pid = value.get("pid")
                entry = cls(
                    str(value["path"]),
                    None if pid is None else int(pid),
                    int(value["size"]),
                    int(value["mtime_ns"]),
                )
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise InputError(
                    f"{where}: metadata must have path, pid (int or null), size and mtime_ns; got {value!r}",
                    hint=f"problem: {exc}",
                ) from None
        if not entry.path or entry.path.startswith("/") or Path(entry.path).is_absolute():
            raise InputError(f"{where}: path {entry.path!r} must be relative to the image root")
        return entry


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
    """Write a new index at ``out`` (replacing any index there, atomically) and open it.

    ``embeddings``: an array/tensor [N, D] or an iterable of [B, D] batches (streamed, one shard
    in memory at a time). ``metadata``: N ``IndexEntry`` objects or mappings with path (relative
    to ``image_root``), pid (int or None), size and mtime_ns, in row order. ``model_fingerprint``
    identifies weights + preprocessing; ``extra_header`` lands in the header under ``model``.
    """
    if not model_fingerprint:
        raise InputError("model_fingerprint must be a non-empty string")
    out = Path(out)
    if out.exists() and not (out / HEADER_NAME).is_file() and any(out.iterdir()):
        raise InputError(
            f"{out} exists and is not a personsearch index", hint="choose an empty or new folder"
        )
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
            "image_root": os.path.abspath(image_root),
            "count": writer.rows_written,
            "shard_size": shard_size,
            "shards": writer.shards,
            "created": now,
            "updated": now,
            "model": dict(extra_header or {}),
            "faiss": None,
        }
        atomic_write_json(tmp / HEADER_NAME, header)
    log.info("wrote index %s: %d rows in %d shards", out, writer.rows_written, len(writer.shards))
    return GalleryIndex.open(out, verify=False)


def _clean_unlisted(folder: Path, header: Mapping[str, Any]) -> None:
    """Remove files a killed append left behind (never anything the header lists)."""
    listed = {HEADER_NAME}
    for shard in header["shards"]:
        listed |= {shard["embeddings"], shard["metadata"]}
    if header.get("faiss"):
        listed.add(header["faiss"]["file"])
    for child in folder.iterdir():
        name = child.name
        stale = (
            _SHARD_RE.match(name) or name.startswith("faiss-") or name.endswith(".tmp")
        ) and name not in listed
        if stale and child.is_file():
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
    shards are never rewritten. The header is replaced last: until then readers see the old index,
    and an error (or Ctrl-C) removes the new files again. A FAISS index, when present, gets the new
    rows added under a new file name committed by the same header write.
    """
    index = GalleryIndex.open(index_dir, verify=True)
    if model_fingerprint is not None and model_fingerprint != index.model_fingerprint:
        raise InputError(
            f"{index.path} was made by model {index.model_fingerprint}, not {model_fingerprint}",
            hint="append with the same run, or export a new index",
        )
    folder = index.path
    with RunLock(folder):
        header = json.loads((folder / HEADER_NAME).read_text(encoding="utf-8"))
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
            header = dict(header)
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
        _clean_unlisted(folder, header)
    log.info("appended %d rows to %s as %s", writer.rows_written, folder, writer.shards[0]["embeddings"])
    return GalleryIndex.open(folder, verify=False)


def _header_error(path: Path, message: str, hint: str | None = None) -> InputError:
    return InputError(f"{path}: {message}", hint=hint)


def _read_header(folder: Path) -> dict[str, Any]:
    if not folder.exists():
        raise InputError(f"index {folder} does not exist", hint="create it with `personsearch export`")
    if not folder.is_dir():
        raise InputError(f"{folder} is not an index folder")
    path = folder / HEADER_NAME
    if not path.is_file():
        raise InputError(f"{folder} has no {HEADER_NAME}: not a personsearch index, or an incomplete copy")
    try:
        header = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise _header_error(path, f"corrupt header ({exc})", hint="re-export the index") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT_NAME:
        found = header.get("format") if isinstance(header, dict) else type(header).__name__
        raise _header_error(path, f"unknown index format {found!r} (expected {FORMAT_NAME!r})")
    version = header.get("format_version")
    if not isinstance(version, int) or version < 1:
        raise _header_error(path, f"invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        raise _header_error(
            path,
            f"this index needs personsearch format version {version}; this personsearch reads up to "
            f"version {FORMAT_VERSION}",
            hint="upgrade personsearch",
        )
    try:
        dim, count, shards = int(header["dim"]), int(header["count"]), header["shards"]
        for shard in shards:
            for key in ("embeddings", "metadata", "rows", "embeddings_bytes", "metadata_bytes"):
                shard[key]  # noqa: B018 - presence check
        str(header["model_fingerprint"])
        str(header["image_root"])
    except (KeyError, TypeError, ValueError) as exc:
        raise _header_error(
            path, f"header is missing or has a malformed field ({exc})", hint="re-export the index"
        ) from None
    if dim < 1 or sum(int(s["rows"]) for s in shards) != count:
        raise _header_error(path, f"count {count} does not equal the sum of the shard row counts")
    return header


class GalleryIndex:
    """A read-only view of an index folder: memory-mapped shards, lazily loaded metadata."""

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
        """Open and check an index (see the module docstring for what ``verify`` adds)."""
        folder = Path(path)
        header = _read_header(folder)
        arrays: list[np.ndarray] = []
        for shard in header["shards"]:
            arrays.append(cls._check_shard(folder, header, shard, verify))
        if header.get("faiss"):
            file = folder / header["faiss"]["file"]
            if not file.is_file():
                raise InputError(
                    f"{file} is listed in the header but missing", hint="rebuild it with build_faiss"
                )
            if verify and _sha256(file) != header["faiss"]["sha256"]:
                raise InputError(f"{file} is corrupt (checksum mismatch)", hint="rebuild it with build_faiss")
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # read-only mmap; the tensors are never written
            return cls(folder, header, arrays)

    @staticmethod
    def _check_shard(
        folder: Path, header: Mapping[str, Any], shard: Mapping[str, Any], verify: bool
    ) -> np.ndarray:
        for kind in ("embeddings", "metadata"):
            file = folder / shard[kind]
            if not file.is_file():
                raise InputError(f"shard file {file} is missing", hint="restore it or re-export the index")
            size = file.stat().st_size
            if size != shard[f"{kind}_bytes"]:
                what = "truncated" if size < shard[f"{kind}_bytes"] else "changed"
                raise InputError(
                    f"shard file {file} is {what}: {size} bytes, the header records {shard[f'{kind}_bytes']}",
                    hint="re-export the index",
                )
            if verify and _sha256(file) != shard.get(f"{kind}_sha256"):
                raise InputError(
                    f"shard file {file} is corrupt (sha256 checksum mismatch)", hint="re-export the index"
                )
        file = folder / shard["embeddings"]
        try:
            array = np.load(file, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise InputError(
                f"shard file {file} is not a readable .npy array ({exc})", hint="re-export the index"
            ) from None
        expected = (int(shard["rows"]), int(header["dim"]))
        if array.dtype != np.float16 or array.shape != expected or not array.flags.c_contiguous:
            raise InputError(
                f"shard file {file} holds {array.dtype} {list(array.shape)}, "
                f"the header records float16 {list(expected)}",
                hint="re-export the index",
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
            entries: list[IndexEntry] = []
            with open(file, encoding="utf-8") as handle:
                for line_no, line in enumerate(handle, 1):
                    try:
                        value = json.loads(line)
                    except json.JSONDecodeError:
                        raise InputError(
                            f"{file} line {line_no} is not valid JSON", hint="re-export the index"
                        ) from None
                    entries.append(IndexEntry.from_mapping(value, f"{file} line {line_no}"))
            if len(entries) != shard["rows"]:
                raise InputError(
                    f"{file} has {len(entries)} metadata rows but the header records {shard['rows']}",
                    hint="re-export the index",
                )
            self._metadata[s] = entries
        return self._metadata[s]

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
        """Every entry in row order (loads the metadata shard by shard)."""
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
    "append_to_index",
    "files_to_embed",
    "normalise_rows",
    "sha256_of",
    "write_index",
]
