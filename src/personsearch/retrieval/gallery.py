"""Reading an index: ``GalleryIndex``, a verified, read-only view of an index folder, and its search.

Opening runs the checks of the on-disk format (``index_format``: header, listed files, their sizes,
shapes and, with ``verify``, the hashes of what is read whole; ``index_files``) and reads no
metadata row: a row is read by offset when asked for (``entry``, ``metadata``), through its
shard's line table (read once), checked against its line digest and its path rule
(``index_rows``), and kept. So opening a 1M-row index and answering a query reads the header, the
superseded list and the line tables of the hits' shards, not a million rows. A small index
(and one written before the row tables) is checked whole on open, as ``verify="full"`` checks any:
every row, and every row's path for a symbolic link out of the image root.
``GalleryIndex.image_path(row)`` is the one way to turn a row into a file to read: it refuses a
row whose path resolves, through symbolic links, outside the image root.

The image root and the model's paths are also recorded relative to the index folder
(``index_format``); ``image_root`` and ``model_info`` give them resolved, the relative form first
where it exists (an index moved or copied together with its images and run).

Search is exact by default (``personsearch.retrieval.search``); ``backend="faiss"`` uses the
FAISS file the header lists (``personsearch.retrieval.faiss_backend``).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from personsearch.errors import InputError
from personsearch.io.recorded import RELATIVE, describe_recorded, recorded_path
from personsearch.retrieval import faiss_backend
from personsearch.retrieval import search as exact
from personsearch.retrieval.index_entry import IndexEntry, path_problem
from personsearch.retrieval.index_files import check_faiss_file, open_shard, read_superseded, read_table
from personsearch.retrieval.index_format import CHECK_ALL_ROWS, MODEL_PATH_KEYS, damaged, read_header
from personsearch.retrieval.index_rows import entry_keys, lines_table, read_rows, read_shard
from personsearch.retrieval.index_supersede import superseded_by_path

log = logging.getLogger(__name__)


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


@dataclass(frozen=True)
class SearchResults:
    """Scores [Q, k'] (float32, best first) and gallery rows [Q, k'] (int64) of a search."""

    scores: torch.Tensor
    rows: torch.Tensor

    def __iter__(self) -> Iterator[torch.Tensor]:
        yield self.scores
        yield self.rows


Verify = bool | Literal["full"]


class GalleryIndex:
    """A read-only view of an index folder: memory-mapped shards, metadata rows read as needed."""

    def __init__(self, path: Path, header: dict[str, Any], shards: list[np.ndarray],
                 superseded: np.ndarray | None = None, verify: Verify = True) -> None:
        self.path = path
        self.header = header
        self._arrays = shards
        self._tensors = [torch.from_numpy(a) for a in shards] if shards else []
        self._offsets = np.cumsum([0] + [a.shape[0] for a in shards])
        self._tables = header["format_version"] >= 2  # version 1 has no row tables: its metadata is parsed whole
        self._lines: dict[int, np.ndarray] = {}
        self._metadata: dict[int, list[IndexEntry]] = {}  # shards parsed whole
        self._rows: dict[int, IndexEntry] = {}  # rows read one by one
        self._keys: dict[int, np.ndarray] = {}
        self._dead = superseded  # sorted global rows; None until derived (version 1)
        self._superseded: list[torch.Tensor | None] | None = None
        self._verify = verify
        self._faiss_checked = False
        self._faiss: Any = None

    @classmethod
    def open(cls, path: str | Path, verify: Verify = True) -> GalleryIndex:
        """Open and check an index; ``verify`` as ``index_format``'s docstring says (True: the
        small files' hashes; "full": every file's hash and every row; False: no hashing).

        Always: the header's fields, every listed file's size and each array's shape. An index of
        at most ``CHECK_ALL_ROWS`` rows, a version-1 index and ``verify="full"`` also check every
        metadata row now (a row that is not what this tool wrote, or whose path leaves the image
        root, also through a symbolic link, refuses the whole index); otherwise rows are checked
        as they are read.
        """
        if verify not in (True, False, "full"):
            raise InputError(f"verify must be True, False or 'full', got {verify!r:.60}")
        folder = Path(path)
        header = read_header(folder)
        tables = header["format_version"] >= 2
        whole = verify == "full" or not tables or header["count"] <= CHECK_ALL_ROWS
        hash_all = bool(verify) and whole
        arrays = [open_shard(folder, header, shard, hash_all) for shard in header["shards"]]
        dead = read_superseded(folder, header, bool(verify)) if tables else None
        if header.get("faiss"):
            check_faiss_file(folder, header["faiss"], hash_all)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # read-only mmap; the tensors are never written
            index = cls(folder, header, arrays, dead, verify)
        index._faiss_checked = hash_all or not verify
        if whole:
            index._check_whole(hash_all)
        return index

    def _check_whole(self, verify: bool) -> None:
        """Parse and check every metadata row now, against the row tables and the superseded list
        where the index has them, and check every row's path for a link out of the image root."""
        for s, shard in enumerate(self.header["shards"]):
            self._metadata[s] = self._read_shard(s, verify)
            if self._tables:
                keys = read_table(self.path, shard, "keys", verify)
                if not np.array_equal(keys, entry_keys(self._metadata[s])):
                    raise damaged(self.path, f"row table {shard['keys']} does not match {shard['metadata']}")
                self._keys[s] = keys
        derived = superseded_by_path(e.path for e in self.entries())
        if self._dead is not None and not np.array_equal(self._dead, derived):
            raise damaged(self.path, "the superseded-rows file does not match the rows' paths")
        self._dead = derived
        self._check_links()

    # -- facts -----------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return int(self.header["dim"])

    @property
    def model_fingerprint(self) -> str:
        return str(self.header["model_fingerprint"])

    @property
    def image_root(self) -> Path:
        """The image folder: its form relative to the index folder where that exists, else the
        absolute one (``personsearch.io.recorded``)."""
        return recorded_path(self.header["image_root"], self._relative("image_root"), self.path)

    @property
    def model_info(self) -> dict[str, Any]:
        """The header's ``model`` object; its paths (``MODEL_PATH_KEYS``) resolved like ``image_root``."""
        info = dict(self.header.get("model") or {})
        for key in MODEL_PATH_KEYS:
            value, relative = info.get(key), self._relative(f"model.{key}")
            if relative and isinstance(value, str) and "\x00" not in value:
                info[key] = str(recorded_path(value, relative, self.path))
        return info

    def _relative(self, key: str) -> str | None:
        return (self.header.get(RELATIVE) or {}).get(key)

    def __len__(self) -> int:
        return int(self.header["count"])

    @property
    def shard_count(self) -> int:
        return len(self._arrays)

    @property
    def row_offsets(self) -> np.ndarray:
        """The first gallery row of each shard, then the row count ([shards + 1], int)."""
        return self._offsets

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
    def _read_shard(self, s: int, verify: bool) -> list[IndexEntry]:
        shard = self.header["shards"][s]
        entries, raw = read_shard(self.path, shard, verify)
        if self._tables and not np.array_equal(lines_table(raw), self._lines_of(s)):
            raise damaged(self.path, f"shard file {self.path / shard['metadata']} does not match its line table "
                                     f"{shard['lines']}")
        return entries

    def _lines_of(self, s: int) -> np.ndarray:
        """Shard ``s``'s lines table, read (and hashed, with ``verify``) when a row of it is first read."""
        if s not in self._lines:
            self._lines[s] = read_table(self.path, self.header["shards"][s], "lines", bool(self._verify))
        return self._lines[s]

    def _shard_metadata(self, s: int) -> list[IndexEntry]:
        if s not in self._metadata:
            self._metadata[s] = self._read_shard(s, False)
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
            log.warning("the images of index %s are not where it records them: %s is not there (moved?); results "
                        "name paths under it, and their images cannot be shown", self.path,
                        describe_recorded(self.header["image_root"], self._relative("image_root"), self.path))
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
        """The checked metadata of one row (read from its shard's file the first time)."""
        return self._entries([row])[0]

    def _entries(self, rows: list[int]) -> list[IndexEntry]:
        """Entries of ``rows``, reading the rows not yet read with one open file per shard."""
        n = len(self)
        for row in rows:
            if not 0 <= row < n:
                raise IndexError(f"row {row} is outside the index (0..{n - 1})")
        shards = np.searchsorted(self._offsets, rows, side="right") - 1
        wanted: dict[int, list[int]] = {}
        for row, s in zip(rows, shards.tolist(), strict=True):
            if s not in self._metadata and row not in self._rows:
                wanted.setdefault(s, []).append(row)
        for s, todo in wanted.items():
            if not self._tables:
                self._shard_metadata(s)
                continue
            first = int(self._offsets[s])
            todo = sorted(set(todo))
            read = read_rows(self.path, self.header["shards"][s], self._lines_of(s), [r - first for r in todo])
            self._rows.update(zip(todo, read, strict=True))
        out = []
        for row, s in zip(rows, shards.tolist(), strict=True):
            parsed = self._metadata.get(s)
            out.append(parsed[row - int(self._offsets[s])] if parsed is not None else self._rows[row])
        return out

    def metadata(self, rows: Any) -> Any:
        """Entries for ``rows``: an int gives one ``IndexEntry``; 1-D a list; 2-D a list of lists."""
        if isinstance(rows, (int, np.integer)):
            return self.entry(int(rows))
        values = rows.tolist() if hasattr(rows, "tolist") else list(rows)
        if values and isinstance(values[0], list):
            flat = self._entries([int(r) for line in values for r in line])
            it = iter(flat)
            return [[next(it) for _ in line] for line in values]
        return self._entries([int(r) for r in values])

    def entries(self) -> Iterator[IndexEntry]:
        """Every entry in row order."""
        for s in range(len(self._arrays)):
            yield from self._shard_metadata(s)

    def dead_rows(self) -> np.ndarray:
        """The superseded rows (sorted int64 gallery rows): rows whose path was indexed again later
        (the file changed and was appended anew). Search never returns them."""
        if self._dead is None:
            self._dead = superseded_by_path(e.path for e in self.entries())
        return self._dead

    def superseded_rows(self) -> list[torch.Tensor | None]:
        """``dead_rows`` per shard as shard-local row numbers (None for a shard without any)."""
        if self._superseded is None:
            dead = self.dead_rows()
            bounds = np.searchsorted(dead, self._offsets)
            self._superseded = []
            for s in range(len(self._arrays)):
                local = dead[bounds[s] : bounds[s + 1]] - self._offsets[s]
                self._superseded.append(torch.from_numpy(local.astype(np.int64)) if local.size else None)
        return self._superseded

    def row_keys(self, shard: int) -> np.ndarray:
        """The keys table (uint64 [rows, 2]: path key, file key; ``index_rows``) of one shard, read
        (and hashed, with ``verify``) once; derived from the metadata in a version-1 index."""
        if shard not in self._keys:
            if not self._tables:
                self._keys[shard] = entry_keys(self._shard_metadata(shard))
            else:
                self._keys[shard] = read_table(self.path, self.header["shards"][shard], "keys", bool(self._verify))
        return self._keys[shard]

    def all_keys(self) -> np.ndarray:
        """Every row's keys, in row order (uint64 [rows, 2])."""
        parts = [self.row_keys(s) for s in range(self.shard_count)]
        return np.concatenate(parts) if parts else np.zeros((0, 2), dtype=np.uint64)

    def indexed(self, entries: list[IndexEntry]) -> np.ndarray:
        """For each entry, whether a searchable row holds that file as it is now (same path, size
        and modification time), decided on the row keys: no metadata row is read."""
        if not entries or not len(self):
            return np.zeros(len(entries), dtype=bool)
        live = np.delete(self.all_keys(), self.dead_rows(), axis=0)
        if not live.shape[0]:
            return np.zeros(len(entries), dtype=bool)
        order = np.argsort(live[:, 1])
        wanted = entry_keys(entries)
        asked = np.argsort(wanted[:, 1])  # looked up in order: one sweep through the sorted keys
        at = np.empty(len(entries), dtype=np.int64)
        at[asked] = np.searchsorted(live[order, 1], wanted[asked, 1])
        found = live[order[np.minimum(at, order.size - 1)]]
        # Both keys must match; should two live rows share a file key (a collision), a file may be
        # embedded again, never skipped.
        return (found[:, 1] == wanted[:, 1]) & (found[:, 0] == wanted[:, 0])

    def _faiss_index(self) -> Any:
        """The FAISS index the header lists, read once and kept (hashed first with ``verify``)."""
        if self._faiss is None:
            entry = self.header.get("faiss")
            if not entry:
                raise InputError(
                    f"{self.path} has no FAISS index",
                    hint="export the gallery again with --faiss FACTORY (e.g. --faiss 'IVF1024,Flat'), "
                    "or search it exactly (without --faiss)",
                )
            if not self._faiss_checked:
                check_faiss_file(self.path, entry, True)
                self._faiss_checked = True
            try:
                self._faiss = faiss_backend.read_index(self.path / entry["file"])
            except faiss_backend.UnreadableFaissFile as exc:
                raise damaged(self.path, f"FAISS file {entry['file']} cannot be read ({exc})") from None
        return self._faiss

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
            dead = self.superseded_rows()
            exclude = dead if any(d is not None for d in dead) else None
            scores, rows = exact.search_shards(self._tensors, q, int(k), exclude)
            return SearchResults(scores, rows)
        if backend == "faiss":
            scores, rows = faiss_backend.search_index(
                self._faiss_index(), q, int(k), nprobe, self.header["faiss"], len(self), set(self.dead_rows().tolist())
            )
            return SearchResults(scores, rows)
        raise InputError(f"unknown search backend {backend!r}", hint="use 'exact' or 'faiss'")


def files_to_embed(index: GalleryIndex | str | Path, candidate_files: Iterable[str | Path]) -> list[Path]:
    """The candidates (absolute, or relative to the index's image root) not yet indexed as they
    are now: new files and files whose size or modification time changed. Returned absolute, in
    the given order; a missing candidate raises InputError."""
    if not isinstance(index, GalleryIndex):
        index = GalleryIndex.open(index, verify=False)
    root = index.image_root
    real_root = os.path.realpath(root)
    entries: list[IndexEntry] = []
    for file in candidate_files:
        path = Path(file)
        if path.is_absolute() and not path.is_relative_to(root):  # the root reached through other links?
            real_parent = os.path.realpath(path.parent)  # (a relative form is read back with links resolved)
            if _inside(real_parent, real_root):
                path = Path(os.path.relpath(os.path.join(real_parent, path.name), real_root))
        entries.append(IndexEntry.for_file(root, path))
    known = index.indexed(entries)
    return [root / entry.path for entry, done in zip(entries, known.tolist(), strict=True) if not done]

