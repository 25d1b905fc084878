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

import errno
import logging
import os
import stat
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
from personsearch.io import RunLock, ensure_replaceable, ensure_writable
from personsearch.retrieval.index import (
    INDEX_KIND,
    GalleryIndex,
    IndexEntry,
    append_locked,
    index_file_name,
    is_index_folder,
    path_problem,
    write_index,
)

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})

#: Called with the number of files finished (embedded or skipped) after each batch.
Progress = Callable[[int], None]

_NOT_REGULAR = "not a regular file (a FIFO, socket, device or folder); left unread"
_NOT_UTF8 = "name is not valid UTF-8 text; rename it to index it"


def shown(path: str) -> str:
    """``path`` as valid text for reports and JSON: an undecodable byte becomes U+FFFD."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_out(out: str | Path, append: bool = False, inputs: Sequence[str | Path | None] = ()) -> bool:
    """Check ``--out`` before any long work: refuse (exit 2) a folder that is not an index this
    tool wrote (also with ``append``), a path that cannot be created, a name that is not UTF-8
    text, or a place inside (or around) an input folder (``inputs``: the gallery folder, the
    prepared dataset, its raw images). Returns True when there is an index there to replace or append to."""
    out = Path(os.path.abspath(out))
    if not _utf8(str(out)):
        raise InputError(f"--out {shown(str(out))} is not valid UTF-8 text", hint="choose a path with a UTF-8 name")
    target = out.resolve()
    for folder in inputs:
        if folder is None:
            continue
        given = Path(folder).resolve()
        if target == given or target.is_relative_to(given) or given.is_relative_to(target):
            raise InputError(
                f"--out {shown(str(out))} is inside (or holds) the input folder {shown(str(folder))}",
                hint="write the index to its own folder: inputs are never written into",
            )
    existing = ensure_replaceable(out, INDEX_KIND, "gallery index", legacy=is_index_folder,
                                  written=index_file_name)
    ensure_writable(out, "--out", folder=True)
    return existing


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
    link pointing outside, a broken link and a link or folder loop are reported as skipped. So are
    special files named like images (a FIFO, socket, device: never opened, so they cannot hang the
    export) and names that are not UTF-8 text (the index and its JSON hold text only).
    """
    root = Path(os.path.abspath(root))
    if not root.is_dir():
        raise InputError(f"image folder not found: {shown(str(root))}", hint="pass --images DIR, a folder of images")
    if not _utf8(str(root)):
        raise InputError(
            f"image folder {shown(str(root))} has a name that is not valid UTF-8 text",
            hint="rename it (the index records the image folder as text)",
        )
    real_root = os.path.realpath(root)
    found: list[tuple[str, Path]] = []
    skipped: list[tuple[str, str]] = []
    seen_dirs = {real_root}

    def walk_error(exc: OSError) -> None:
        where = os.path.relpath(exc.filename, root) if exc.filename else "?"
        skipped.append((shown(Path(where).as_posix()), f"cannot list folder: {exc.strerror or exc}"))

    for folder, dirs, files in os.walk(root, followlinks=True, onerror=walk_error):
        base = Path(folder)
        keep = []
        for name in sorted(dirs):
            full = base / name
            rel = full.relative_to(root).as_posix()
            if not _utf8(name):
                skipped.append((shown(rel) + "/", f"folder {_NOT_UTF8}"))
                continue
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
            if not _utf8(name):
                skipped.append((shown(rel), f"file {_NOT_UTF8}"))
                continue
            _, reason = _inspect(full, real_root, parents_inside=True)
            if reason is not None:
                skipped.append((rel, reason))
                continue
            found.append((rel, full))
    found.sort(key=lambda item: item[0])
    skipped.sort()
    return [full for _, full in found], skipped


def _inspect(full: Path, real_root: str, parents_inside: bool) -> tuple[os.stat_result | None, str | None]:
    """The stat of ``full`` when it is a regular file inside the root, else why it cannot be
    indexed. Looked up with stat only, never opened. ``parents_inside``: its folder is known to lie
    inside the root (the walk checked it), so only a link at the file itself is resolved."""
    try:
        link = full.is_symlink()
        info = os.stat(full)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return None, "symbolic link loop"
        if exc.errno in (errno.ENOENT, errno.ENOTDIR) and full.is_symlink():
            return None, "broken symbolic link"
        return None, f"cannot read: {exc.strerror or exc}"
    except ValueError:
        return None, "cannot read: invalid file name"
    if (link or not parents_inside) and not _inside(os.path.realpath(full), real_root):
        return None, "symbolic link points outside the image folder"
    if not stat.S_ISREG(info.st_mode):
        return None, _NOT_REGULAR
    return info, None


def _gallery_from_folder(images: str | Path) -> _Gallery:
    root = Path(os.path.abspath(images))
    files, skipped = discover_images(root)
    return _Gallery(root, files, [None] * len(files), skipped, {"images": str(root)})


def _gallery_from_prepared(prepared: Any, split: str) -> _Gallery:
    from personsearch.data.prepared import PreparedDataset

    if not isinstance(prepared, PreparedDataset):
        prepared = PreparedDataset.load(prepared)
    root = Path(os.path.abspath(prepared.raw_root))
    if not _utf8(str(root)):
        raise InputError(
            f"the image folder {shown(str(root))} of {prepared.path} has a name that is not valid UTF-8 text",
            hint="rename it (the index records the image folder as text)",
        )
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
        from personsearch.io import NotRegularFile, open_regular

        try:
            handle = open_regular(self.files[i])  # never blocks: a FIFO swapped in is refused
        except NotRegularFile:
            return i, None, _NOT_REGULAR
        except OSError as exc:
            reason = "symbolic link loop" if exc.errno == errno.ELOOP else exc.strerror or str(exc)
            return i, None, f"cannot be opened: {reason}"
        except ValueError as exc:
            return i, None, f"cannot be opened: {exc}"
        with handle:
            try:
                return i, self.transform(load_rgb(handle)), None  # type: ignore[arg-type]
            except ImageLoadError as exc:
                reason = str(exc)
                prefix = f"{handle}: "
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
    """Stat every file now (before it is read); files that vanished, special files and paths that
    leave the image root (a prepared dataset's entry with '..', a link pointing out) are skipped."""
    files: list[Path] = []
    entries: list[IndexEntry] = []
    real_root = os.path.realpath(gallery.root)
    for file, pid in zip(gallery.files, gallery.pids, strict=True):
        rel = Path(os.path.relpath(file, gallery.root)).as_posix()
        problem = path_problem(rel)
        if problem is not None:
            gallery.skipped.append((shown(rel), f"path {problem}: outside the image folder"))
            continue
        info, reason = _inspect(file, real_root, parents_inside=False)
        if info is None:
            gallery.skipped.append((rel, reason or "cannot read"))
            continue
        files.append(file)
        entries.append(IndexEntry(rel, pid, info.st_size, info.st_mtime_ns))
    return files, entries


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

    Without ``append`` a new index replaces ``out`` atomically; a folder there that is not an
    index this tool wrote is refused and left as it is. With ``append`` only files not yet indexed
    as they are now (path, size, mtime) are embedded, into one new shard; an absent or empty
    ``out`` gets a new index. Writing to an existing index holds its lock from reading its header
    to committing the new one, so two writers never both add the same files. ``faiss``: a FAISS
    factory string to build an approximate index afterwards. ``on_total`` receives the number of
    files to embed before the first batch; ``progress`` the number finished after each batch.
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
    if prepared is not None:
        from personsearch.data.prepared import PreparedDataset

        if not isinstance(prepared, PreparedDataset):
            prepared = PreparedDataset.load(prepared)
    inputs = [images] if images is not None else [prepared.path, prepared.raw_root]
    existing_output = check_out(out, append, inputs)
    if faiss is not None:
        from personsearch.retrieval.ann import _faiss

        _faiss()  # a missing package is reported before any embedding

    gallery = (
        _gallery_from_folder(images) if images is not None else _gallery_from_prepared(prepared, split or "")
    )
    appending = append and existing_output
    files, entries = _describe(gallery)
    if not appending and not files:
        what = gallery.source.get("images") or f"{gallery.source.get('data')} split {split!r}"
        first = f" ({len(gallery.skipped)} left out, first: {gallery.skipped[0][0]}: {gallery.skipped[0][1]})" \
            if gallery.skipped else ""
        raise InputError(
            f"no images found in {shown(str(what))}{first}",
            hint=f"images are regular files ending in {', '.join(sorted(IMAGE_SUFFIXES))} (any case), "
            "searched recursively",
        )

    clip = model.clip
    transform = build_transform(settings.model.image_size, train=False)
    queue = _EntryQueue()
    counts = _Counts(skipped=list(gallery.skipped))
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
    unchanged = 0
    # A second writer of the same index is refused while this one holds the lock.
    lock = RunLock(out).acquire() if existing_output else None
    was_training = clip.training
    try:
        existing: GalleryIndex | None = None
        if appending:
            existing = GalleryIndex.open(out, verify=True)  # read under the lock: what is new is decided now
            _check_same_source(existing, model, gallery.root, out)
            known = {(e.path, e.size, e.mtime_ns) for e in existing.entries()}
            todo = [i for i, e in enumerate(entries) if (e.path, e.size, e.mtime_ns) not in known]
            unchanged = len(entries) - len(todo)
            files, entries = [files[i] for i in todo], [entries[i] for i in todo]
        if on_total is not None:
            on_total(len(files))
        clip.eval().to(device)
        batches = _embed_batches(
            clip, files, entries, transform, queue, counts, batch_size, workers, device, precision, progress
        )
        if existing is not None:
            index = append_locked(existing, batches, queue) if files else existing
        else:
            index = _write_new(out, batches, queue, model, gallery, settings, header_model, counts, len(files))
    finally:
        clip.train(was_training)
        if lock is not None:
            lock.release()

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


def _check_same_source(existing: GalleryIndex, model: Any, root: Path, out: Path) -> None:
    if existing.model_fingerprint != model.fingerprint:
        raise InputError(
            f"{out} was made by model {existing.model_fingerprint} "
            f"({existing.model_info.get('run', 'unknown run')}), "
            f"not by {model.source} ({model.fingerprint})",
            hint="append with the model that made the index, or export a new index without --append",
        )
    if os.path.abspath(existing.image_root) != str(root):
        raise InputError(
            f"{out} indexes images under {existing.image_root}, not {root}",
            hint="append from the same image folder, or export a new index",
        )


def _write_new(
    out: Path, batches: Any, queue: _EntryQueue, model: Any, gallery: _Gallery, settings: Any,
    header_model: dict[str, Any], counts: _Counts, wanted: int,
) -> GalleryIndex:
    try:
        return write_index(
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
                f"none of the {wanted} images could be read (first: {counts.skipped[0][0]}: "
                f"{counts.skipped[0][1]})"
                if counts.skipped
                else "no images could be read",
                hint="check the files; the index was not written",
            ) from None
        raise


__all__ = ["IMAGE_SUFFIXES", "ExportReport", "check_out", "discover_images", "export_images", "shown"]
