"""The files a gallery export considers: an image folder's (found recursively) or a prepared
split's (with identities), each described (path, size, mtime) before it is read."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from personsearch.data.images import check_image_root, discover_images, inspect_image, printable_path
from personsearch.retrieval.index_entry import IndexEntry, path_problem


@dataclass
class GalleryFiles:
    """The files to consider: absolute paths under ``root`` with identities when known."""

    root: Path
    files: list[Path]
    pids: list[int | None]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    source: dict[str, Any] = field(default_factory=dict)


def gallery_from_folder(images: str | Path) -> GalleryFiles:
    root = Path(os.path.abspath(images))
    files, skipped = discover_images(root)
    return GalleryFiles(root, files, [None] * len(files), skipped, {"images": str(root)})


def gallery_from_prepared(prepared: Any, split: str) -> GalleryFiles:
    from personsearch.data.prepared import PreparedDataset

    if not isinstance(prepared, PreparedDataset):
        prepared = PreparedDataset.load(prepared)
    root = Path(os.path.abspath(prepared.raw_root))
    check_image_root(root, of=prepared.path)
    seen: set[str] = set()
    files: list[Path] = []
    pids: list[int | None] = []
    for entry in prepared.entries(split):
        if entry.path in seen:
            continue
        seen.add(entry.path)
        files.append(root / entry.path)
        pids.append(int(entry.pid))
    source = {"data": str(prepared.path), "split": split, "data_fingerprint": prepared.fingerprint}
    return GalleryFiles(root, files, pids, [], source)


def describe_files(gallery: GalleryFiles) -> tuple[list[Path], list[IndexEntry]]:
    """Stat every file now (before it is read); files that vanished, special files and paths that
    leave the image root (a prepared dataset's entry with '..', a link pointing out) are skipped."""
    files: list[Path] = []
    entries: list[IndexEntry] = []
    real_root = os.path.realpath(gallery.root)
    for file, pid in zip(gallery.files, gallery.pids, strict=True):
        rel = Path(os.path.relpath(file, gallery.root)).as_posix()
        problem = path_problem(rel)
        if problem is not None:
            gallery.skipped.append((printable_path(rel), f"path {problem}: outside the image folder"))
            continue
        info, reason = inspect_image(file, real_root, parents_inside=False)
        if info is None:
            gallery.skipped.append((rel, reason or "cannot read"))
            continue
        files.append(file)
        entries.append(IndexEntry(rel, pid, info.st_size, info.st_mtime_ns))
    return files, entries
