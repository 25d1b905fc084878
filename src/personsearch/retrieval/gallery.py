"""Reading an index: ``GalleryIndex``, a verified, read-only view of an index folder, and its search.

Opening runs every check of the on-disk format (``index_format``: header, shard files, FAISS file;
``index_entry``: every metadata row) and then refuses a row whose path resolves, through symbolic
links, outside the image root. ``GalleryIndex.image_path(row)`` is the one way to turn a row into
a file to read. The image root and the model's paths are also recorded relative to the index
folder (``index_format``); ``image_root`` and ``model_info`` give them resolved, the relative form
first where it exists (an index moved or copied together with its images and run).

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
from typing import Any

import numpy as np
import torch

from personsearch.errors import InputError
from personsearch.io.recorded import RELATIVE, describe_recorded, recorded_path
from personsearch.retrieval import faiss_backend
from personsearch.retrieval import search as exact
from personsearch.retrieval.index_entry import IndexEntry, path_problem, read_shard_entries
from personsearch.retrieval.index_format import MODEL_PATH_KEYS, check_faiss_file, damaged, open_shard, read_header

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
        """Open and check an index (see ``index_format`` for what ``verify`` adds).

        Always: the header's fields, each shard's size and shape, every metadata row (a path that
        leaves the image root, also through a symbolic link, refuses the whole index).
        """
        folder = Path(path)
        header = read_header(folder)
        arrays: list[np.ndarray] = []
        for shard in header["shards"]:
            arrays.append(open_shard(folder, header, shard, verify))
        if header.get("faiss"):
            check_faiss_file(folder, header["faiss"], verify)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # read-only mmap; the tensors are never written
            index = cls(folder, header, arrays)
        for s in range(len(arrays)):
            index._shard_metadata(s)
        index._check_links()
        return index

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
    def _shard_metadata(self, s: int) -> list[IndexEntry]:
        if s not in self._metadata:
            self._metadata[s] = read_shard_entries(self.path, self.header["shards"][s])
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

    def superseded_rows(self) -> list[torch.Tensor | None]:
        """Rows whose path was indexed again later (the file changed and was appended anew), per
        shard as shard-local row numbers (None for a shard without any). Search never returns them."""
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

    def _superseded_row_set(self) -> set[int]:
        dead: set[int] = set()
        for s, rows in enumerate(self.superseded_rows()):
            if rows is not None:
                dead.update((rows + int(self._offsets[s])).tolist())
        return dead

    def _faiss_index(self) -> Any:
        """The FAISS index the header lists, read once and kept."""
        if self._faiss is None:
            entry = self.header.get("faiss")
            if not entry:
                raise InputError(
                    f"{self.path} has no FAISS index",
                    hint="export the gallery again with --faiss FACTORY (e.g. --faiss 'IVF1024,Flat'), "
                    "or search it exactly (without --faiss)",
                )
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
                self._faiss_index(), q, int(k), nprobe, self.header["faiss"], len(self), self._superseded_row_set()
            )
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
    real_root = os.path.realpath(root)
    todo: list[Path] = []
    for file in candidate_files:
        path = Path(file)
        if path.is_absolute() and not path.is_relative_to(root):  # the root reached through other links?
            real_parent = os.path.realpath(path.parent)  # (a relative form is read back with links resolved)
            if _inside(real_parent, real_root):
                path = Path(os.path.relpath(os.path.join(real_parent, path.name), real_root))
        entry = IndexEntry.for_file(root, path)
        if (entry.path, entry.size, entry.mtime_ns) not in known:
            todo.append(root / entry.path)
    return todo

