"""Embed a folder of images (or a prepared split) with a trained model into a gallery index.

Files are found recursively (jpg, jpeg, png, webp, bmp, any case), sorted by relative path so two
exports of the same folder give the same rows. Decoding runs in DataLoader workers; a file that
cannot be decoded is listed in the report and skipped, never fatal. Each file is described (path,
size, modification time) before it is read, so a file that changes during the export is embedded
again by the next ``append``.

Writing goes through ``personsearch.retrieval.index``: a new index is built in a temporary folder
and swapped in whole; an append adds one shard and commits it with the header. Either way an
interrupted export leaves the index exactly as it was.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from personsearch.accel import autocast, check_precision
from personsearch.errors import InputError
from personsearch.io import RunLock
from personsearch.retrieval.index import HEADER_NAME, GalleryIndex, IndexEntry, append_to_index, write_index

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})

#: Called with the number of files finished (embedded or skipped) after each batch.
Progress = Callable[[int], None]


@dataclass
class ExportReport:
    """What an export did. ``indexed``: images embedded by this call; ``total``: rows in the index
    afterwards; ``unchanged``: files an append found already indexed; ``skipped``: (path relative
    to the image root, reason) for every file left out."""

    index: Path
    image_root: Path
    indexed: int
    total: int
    skipped: list[tuple[str, str]]
    appended: bool
    unchanged: int
    seconds: float
    fingerprint: str
    faiss: dict[str, Any] | None = None
    shards: int = 0

    @property
    def images_per_s(self) -> float:
        return self.indexed / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "index": str(self.index),
            "image_root": str(self.image_root),
            "indexed": self.indexed,
            "total": self.total,
            "unchanged": self.unchanged,
            "appended": self.appended,
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
            "seconds": round(self.seconds, 3),
            "images_per_s": round(self.images_per_s, 2),
            "model_fingerprint": self.fingerprint,
            "shards": self.shards,
            "faiss": self.faiss,
        }


@dataclass
class _Gallery:
    """The files to consider: absolute paths under ``root`` with identities when known."""

    root: Path
    files: list[Path]
    pids: list[int | None]
    skipped: list[tuple[str, str]] = field(default_factory=list)
    source: dict[str, Any] = field(default_factory=dict)


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def discover_images(root: str | Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """Image files under ``root`` (recursive, sorted by relative path) and the entries left out.

    Symbolic links (to files or folders) are followed only while they stay inside ``root``; a
    link pointing outside, a broken link and a folder loop are reported as skipped.
    """
    root = Path(os.path.abspath(root))
    if not root.is_dir():
        raise InputError(f"image folder not found: {root}", hint="pass --images DIR, a folder of images")
    real_root = os.path.realpath(root)
    found: list[tuple[str, Path]] = []
    skipped: list[tuple[str, str]] = []
    seen_dirs = {real_root}

    def walk_error(exc: OSError) -> None:
        where = Path(exc.filename).relative_to(root).as_posix() if exc.filename else "?"
        skipped.append((where, f"cannot list folder: {exc.strerror or exc}"))

    for folder, dirs, files in os.walk(root, followlinks=True, onerror=walk_error):
        base = Path(folder)
        keep = []
        for name in sorted(dirs):
            full = base / name
            rel = full.relative_to(root).as_posix()
            real = os.path.realpath(full)
            if not _inside(real, real_root):
                skipped.append((rel + "/", "symbolic link points outside the image folder"))
            elif real in seen_dirs:
                skipped.append((rel + "/", "folder already visited (symbolic link loop or duplicate)"))
            else:
                seen_dirs.add(real)
                keep.append(name)
        dirs[:] = keep
        for name in files:
            if Path(name).suffix.lower() not in IMAGE_SUFFIXES:
                continue
            full = base / name
            rel = full.relative_to(root).as_posix()
            if full.is_symlink():
                real = os.path.realpath(full)
                if not os.path.exists(real):
                    skipped.append((rel, "broken symbolic link"))
                    continue
                if not _inside(real, real_root):
                    skipped.append((rel, "symbolic link points outside the image folder"))
                    continue
            found.append((rel, full))
    found.sort(key=lambda item: item[0])
    skipped.sort()
    return [full for _, full in found], skipped


def _gallery_from_folder(images: str | Path) -> _Gallery:
    root = Path(os.path.abspath(images))
    files, skipped = discover_images(root)
    return _Gallery(root, files, [None] * len(files), skipped, {"images": str(root)})


def _gallery_from_prepared(prepared: Any, split: str) -> _Gallery:
    from personsearch.data.prepared import PreparedDataset

    if not isinstance(prepared, PreparedDataset):
        prepared = PreparedDataset.load(prepared)
    root = Path(os.path.abspath(prepared.raw_root))
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
    return _Gallery(root, files, pids, [], source)


class _ImageFiles(Dataset):
    """Decoded, transformed images by position; an unreadable file yields its reason instead."""

    def __init__(self, files: Sequence[Path], transform: Callable[[Any], torch.Tensor]) -> None:
        self.files = list(files)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str | None]:
        from personsearch.data.transforms import ImageLoadError, load_rgb

        try:
            return i, self.transform(load_rgb(self.files[i])), None
        except ImageLoadError as exc:
            reason = str(exc)
            prefix = f"{self.files[i]}: "
            return i, None, reason[len(prefix) :] if reason.startswith(prefix) else reason
        except (OSError, ValueError, RuntimeError) as exc:
            return i, None, f"cannot be converted ({exc})"


def _collate(items: list[tuple[int, torch.Tensor | None, str | None]]) -> dict[str, Any]:
    good = [(i, image) for i, image, _ in items if image is not None]
    return {
        "index": [i for i, _ in good],
        "images": torch.stack([image for _, image in good]) if good else None,
        "failed": [(i, reason) for i, image, reason in items if image is None],
    }


class _EntryQueue:
    """Metadata handed to the index writer in step with the embedding batches: each batch's
    entries are queued before the batch is yielded, and the writer takes exactly that many."""

    def __init__(self) -> None:
        self._items: deque[IndexEntry] = deque()

    def put(self, entries: Sequence[IndexEntry]) -> None:
        self._items.extend(entries)

    def __iter__(self) -> _EntryQueue:
        return self

    def __next__(self) -> IndexEntry:
        if not self._items:
            raise StopIteration
        return self._items.popleft()


@dataclass
class _Counts:
    indexed: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)


@torch.no_grad()
def _embed_batches(
    clip: torch.nn.Module,
    files: list[Path],
    entries: list[IndexEntry],
    transform: Callable[[Any], torch.Tensor],
    queue: _EntryQueue,
    counts: _Counts,
    batch_size: int,
    workers: int,
    device: torch.device,
    precision: str,
    progress: Progress | None,
) -> Iterator[torch.Tensor]:
    loader = DataLoader(
        _ImageFiles(files, transform),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    for batch in loader:
        for i, reason in batch["failed"]:
            counts.skipped.append((entries[i].path, reason))
            log.warning("skipping %s: %s", entries[i].path, reason)
        if batch["images"] is not None:
            with autocast(precision, device):
                feats = clip.encode_image(batch["images"].to(device, non_blocking=True))
            queue.put([entries[i] for i in batch["index"]])
            counts.indexed += len(batch["index"])
            yield feats.float().cpu()
        if progress is not None:
            progress(len(batch["index"]) + len(batch["failed"]))


def _describe(gallery: _Gallery) -> tuple[list[Path], list[IndexEntry]]:
    """Stat every file now (before it is read); files that vanished are skipped."""
    files: list[Path] = []
    entries: list[IndexEntry] = []
    for file, pid in zip(gallery.files, gallery.pids, strict=True):
        try:
            stat = file.stat()
        except OSError as exc:
            rel = os.path.relpath(file, gallery.root)
            gallery.skipped.append((Path(rel).as_posix(), f"cannot read: {exc.strerror or exc}"))
            continue
        rel = file.relative_to(gallery.root).as_posix()
        files.append(file)
        entries.append(IndexEntry(rel, pid, stat.st_size, stat.st_mtime_ns))
    return files, entries


def _is_index(path: Path) -> bool:
    return (path / HEADER_NAME).is_file()


def _check_out(out: Path, append: bool) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file, not an index folder", hint="choose a new folder name")
    if out.is_dir() and not _is_index(out) and any(out.iterdir()):
        raise InputError(
            f"--out {out} exists and is not a personsearch index; it is left untouched",
            hint="choose a new or empty folder",
        )


def export_images(
    model: Any,
    out: str | Path,
    images: str | Path | None = None,
    prepared: Any = None,
    split: str | None = None,
    append: bool = False,
    batch_size: int | None = None,
    precision: str = "fp32",
    device: torch.device | str = "cpu",
    workers: int = 0,
    faiss: str | None = None,
    nprobe: int = 16,
    progress: Progress | None = None,
    on_total: Callable[[int], None] | None = None,
) -> ExportReport:
    """Embed ``images`` (a folder) or the ``split`` of ``prepared`` (a PreparedDataset or its
    folder; identities recorded) with ``model`` (a ``TrainedModel``) into the index ``out``.

    Without ``append`` a new index replaces ``out`` atomically (an existing folder that is not an
    index is refused). With ``append`` only files not yet indexed as they are now (path, size,
    mtime) are embedded, into one new shard. ``faiss``: a FAISS factory string to build an
    approximate index afterwards. ``on_total`` receives the number of files to embed before the
    first batch; ``progress`` the number finished after each batch.
    """
    from personsearch.data.transforms import build_transform

    started = time.monotonic()
    if (images is None) == (prepared is None):
        raise InputError("give either an image folder or a prepared dataset with a split")
    if prepared is not None and not split:
        raise InputError("a prepared dataset needs a split (train, val or test)")
    out = Path(os.path.abspath(out))
    device = torch.device(device)
    check_precision(precision, device)
    settings = model.settings
    batch_size = batch_size or settings.index.batch_size
    if batch_size < 1:
        raise InputError(f"batch size must be at least 1, got {batch_size}")
    if workers < 0:
        raise InputError(f"workers must be 0 or more, got {workers}")
    _check_out(out, append)
    if faiss is not None:
        from personsearch.retrieval.ann import _faiss

        _faiss()  # a missing package is reported before any embedding

    gallery = (
        _gallery_from_folder(images) if images is not None else _gallery_from_prepared(prepared, split or "")
    )
    appending = append and _is_index(out)
    existing: GalleryIndex | None = None
    unchanged = 0
    if appending:
        existing = GalleryIndex.open(out, verify=True)
        if existing.model_fingerprint != model.fingerprint:
            raise InputError(
                f"{out} was made by model {existing.model_fingerprint} "
                f"({existing.model_info.get('run', 'unknown run')}), "
                f"not by {model.source} ({model.fingerprint})",
                hint="append with the model that made the index, or export a new index without --append",
            )
        if os.path.abspath(existing.image_root) != str(gallery.root):
            raise InputError(
                f"{out} indexes images under {existing.image_root}, not {gallery.root}",
                hint="append from the same image folder, or export a new index",
            )
    files, entries = _describe(gallery)
    if existing is not None:
        known = {(e.path, e.size, e.mtime_ns) for e in existing.entries()}
        todo = [i for i, e in enumerate(entries) if (e.path, e.size, e.mtime_ns) not in known]
        unchanged = len(entries) - len(todo)
        files, entries = [files[i] for i in todo], [entries[i] for i in todo]
    elif not files:
        what = gallery.source.get("images") or f"{gallery.source.get('data')} split {split!r}"
        raise InputError(
            f"no images found in {what}",
            hint=f"images are files ending in {', '.join(sorted(IMAGE_SUFFIXES))} (any case), "
            "searched recursively",
        )
    if on_total is not None:
        on_total(len(files))

    clip = model.clip
    was_training = clip.training
    clip.eval().to(device)
    transform = build_transform(settings.model.image_size, train=False)
    queue = _EntryQueue()
    counts = _Counts(skipped=list(gallery.skipped))
    batches = _embed_batches(
        clip, files, entries, transform, queue, counts, batch_size, workers, device, precision, progress
    )
    header_model = {
        "run": str(Path(os.path.abspath(model.source))),
        "weights": str(Path(os.path.abspath(model.weights))),
        "kind": model.kind,
        "image_size": list(settings.model.image_size),
        "stride": settings.model.stride,
        "text_length": settings.model.text_length,
        "precision": precision,
        **gallery.source,
    }
    try:
        if existing is not None:
            if files:
                index = append_to_index(out, batches, queue, model_fingerprint=model.fingerprint)
            else:
                index = existing
        else:
            lock = RunLock(out) if _is_index(out) else None  # a second writer of the same index is refused
            if lock is not None:
                lock.acquire()
            try:
                index = write_index(
                    out,
                    batches,
                    queue,
                    model.fingerprint,
                    gallery.root,
                    shard_size=settings.index.shard_size,
                    extra_header=header_model,
                )
            except InputError as exc:
                if counts.indexed == 0 and "no embeddings given" in exc.message:
                    raise InputError(
                        f"none of the {len(files)} images could be read (first: {counts.skipped[0][0]}: "
                        f"{counts.skipped[0][1]})"
                        if counts.skipped
                        else "no images could be read",
                        hint="check the files; the index was not written",
                    ) from None
                raise
            finally:
                if lock is not None:
                    lock.release()
    finally:
        clip.train(was_training)

    faiss_entry = index.header.get("faiss")
    if faiss is not None and (existing is None or not faiss_entry):
        from personsearch.retrieval.ann import build_faiss

        faiss_entry = build_faiss(out, factory=faiss, nprobe=nprobe)
        index = GalleryIndex.open(out, verify=False)
    seconds = time.monotonic() - started
    report = ExportReport(
        index=out,
        image_root=gallery.root,
        indexed=counts.indexed,
        total=len(index),
        skipped=counts.skipped,
        appended=existing is not None,
        unchanged=unchanged,
        seconds=seconds,
        fingerprint=model.fingerprint,
        faiss=faiss_entry,
        shards=len(index.header["shards"]),
    )
    log.info(
        "exported %d images to %s in %.1f s (%d skipped)", report.indexed, out, seconds, len(report.skipped)
    )
    return report


__all__ = ["IMAGE_SUFFIXES", "ExportReport", "discover_images", "export_images"]
