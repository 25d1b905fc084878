"""Embed a folder of images (or a prepared split) with a trained model into a gallery index.

The folder's images are found by ``personsearch.data.images`` (recursive, sorted by relative path
so two exports of the same folder give the same rows). Decoding runs in DataLoader workers over
``ImageFiles``; a file that cannot be decoded is listed in the report and skipped, never fatal.
Each file is described (path, size, modification time) before it is read, so a file that changes
during the export is embedded again by the next ``append``.

Writing goes through ``personsearch.retrieval.index``: a new index is built in a temporary folder
and swapped in whole; an append adds one shard and commits it with the header. Either way an
interrupted export leaves the index exactly as it was. Under ``torchrun`` (``export --nproc N``)
each process embeds a share of the files and rank 0 commits the index (``export_ranks``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from personsearch.accel import check_precision, resolve_precision
from personsearch.data.images import (
    IMAGE_SUFFIXES,
    LINK_OUTSIDE,
    describe_left_out,
    discover_images,
    is_utf8,
    printable_path,
)
from personsearch.errors import InputError
from personsearch.io import RunLock, ensure_replaceable, ensure_writable
from personsearch.model.compiled import check_compile_support, compiled_image_encoder
from personsearch.retrieval.export_batches import Counts, EntryQueue, Progress, embed_batches
from personsearch.retrieval.export_ranks import (
    first_shards,
    process_group,
    rank_device,
    shares,
    together,
    write_index_across_ranks,
)
from personsearch.retrieval.gallery_files import (
    GalleryFiles,
    describe_files,
    gallery_from_folder,
    gallery_from_prepared,
)
from personsearch.retrieval.index import (
    INDEX_KIND,
    GalleryIndex,
    IndexEntry,
    append_locked,
    index_file_name,
    is_index_folder,
    write_index,
)

log = logging.getLogger(__name__)



def check_out(out: str | Path, append: bool = False, inputs: Sequence[str | Path | None] = ()) -> bool:
    """Check ``--out`` before any long work: refuse (exit 2) a folder that is not an index this
    tool wrote (also with ``append``), a path that cannot be created, a name that is not UTF-8
    text, or a place inside (or around) an input folder (``inputs``: the gallery folder, the
    prepared dataset, its raw images). Returns True when there is an index there to replace or append to."""
    out = Path(os.path.abspath(out))
    if not is_utf8(str(out)):
        raise InputError(f"--out {printable_path(str(out))} is not valid UTF-8 text",
                         hint="choose a path with a UTF-8 name")
    target = out.resolve()
    for folder in inputs:
        if folder is None:
            continue
        given = Path(folder).resolve()
        if target == given or target.is_relative_to(given) or given.is_relative_to(target):
            raise InputError(
                f"--out {printable_path(str(out))} is inside (or holds) the input folder {printable_path(str(folder))}",
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
    precision: str = "fp32"  # what the embeddings ran at (``auto`` resolved)
    precision_reason: str = "as asked"

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
            "precision": self.precision,
            "precision_reason": self.precision_reason,
        }


def export_images(
    model: Any,
    out: str | Path,
    images: str | Path | None = None,
    prepared: Any = None,
    split: str | None = None,
    append: bool = False,
    batch_size: int | None = None,
    precision: str = "auto",
    device: torch.device | str = "cpu",
    workers: int = 0,
    compile: bool | None = None,
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
    factory string to build an approximate index afterwards. ``precision``: fp32, bf16, fp16 (CUDA) or
    auto (what is fast on this machine; the report says which). ``compile``: run the image encoder
    through ``torch.compile`` (``personsearch.model.compiled``; default: the model's runtime.compile).
    ``on_total`` receives the number of files to embed before the first batch; ``progress`` the
    number finished after each batch.
    """
    from personsearch.data.transforms import build_transform

    started = time.monotonic()
    if (images is None) == (prepared is None):
        raise InputError("give either an image folder or a prepared dataset with a split")
    if prepared is not None and not split:
        raise InputError("a prepared dataset needs a split (train, val or test)")
    out = Path(os.path.abspath(out))
    device = rank_device(torch.device(device))
    rank, world = process_group()
    if world > 1 and append:
        raise InputError("export --append runs in one process", hint="append without --nproc (or torchrun); a "
                         "new index can be written by several processes")
    chosen = together(lambda: resolve_precision(precision, device), on=0)  # one precision for every rank
    precision = chosen.precision
    settings = model.settings
    compile = settings.runtime.compile if compile is None else compile
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
    existing_output = together(lambda: check_out(out, append, inputs), on=0)  # rank 0 alone probes --out
    if faiss is not None:
        from personsearch.retrieval.faiss_backend import require_faiss

        require_faiss()  # a missing package is reported before any embedding

    appending = append and existing_output

    def describe() -> tuple[GalleryFiles, list[Path], list[IndexEntry]]:
        gallery = (
            gallery_from_folder(images) if images is not None else gallery_from_prepared(prepared, split or "")
        )
        files, entries = describe_files(gallery)
        if not appending and not files:
            what = gallery.source.get("images") or f"{gallery.source.get('data')} split {split!r}"
            raise _no_images(printable_path(str(what)), gallery.skipped)
        return gallery, files, entries

    gallery, files, entries = together(describe, on=0)  # one list, cut the same way by every rank
    first_row = first_shard = 0
    if world > 1:
        spans = shares(len(files), world, batch_size)
        first_row, end = spans[rank]
        first_shard = first_shards(spans, settings.index.shard_size)[rank]
        files, entries = files[first_row:end], entries[first_row:end]

    clip = model.clip
    transform = build_transform(settings.model.image_size, train=False)
    queue = EntryQueue()
    counts = Counts(skipped=list(gallery.skipped))
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
    locks: list[RunLock] = []
    together(lambda: locks.append(RunLock(out).acquire()) if existing_output else None, on=0)
    lock = locks[0] if locks else None
    was_training = clip.training
    compiled = contextlib.ExitStack()
    try:
        existing: GalleryIndex | None = None
        if appending:
            existing = GalleryIndex.open(out, verify=True)  # read under the lock: what is new is decided now
            _check_same_source(existing, model, gallery.root, out)
            files, entries, unchanged = _not_yet_indexed(existing, files, entries)
        if on_total is not None:
            on_total(len(files))
        clip.eval().to(device)
        compiled.enter_context(compiled_image_encoder(clip, device, enabled=compile))
        batches = embed_batches(
            clip, files, entries, transform, queue, counts, batch_size, workers, device, precision, progress
        )
        if existing is not None:
            index = append_locked(existing, batches, queue) if files else existing
        elif world == 1:
            index = _write_new(out, batches, queue, model, gallery, settings, header_model, counts, len(files))
        else:
            listed = len(counts.skipped)
            index, counts.indexed, more = write_index_across_ranks(
                out, batches, queue, first_shard, first_row, model.fingerprint, gallery.root,
                settings.index.shard_size, header_model, lambda: (counts.indexed, counts.skipped[listed:]))
            counts.skipped = counts.skipped[:listed] + more
    finally:
        compiled.close()
        clip.train(was_training)
        if lock is not None:
            lock.release()

    faiss_entry = index.header.get("faiss")
    if faiss is not None and (existing is None or not faiss_entry):
        from personsearch.retrieval.ann import build_faiss

        faiss_entry = together(lambda: build_faiss(out, factory=faiss, nprobe=nprobe), on=0)
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
        precision=precision,
        precision_reason=chosen.reason,
    )
    log.info(
        "exported %d images to %s in %.1f s (%d skipped)", report.indexed, out, seconds, len(report.skipped)
    )
    return report


def _no_images(what: str, skipped: list[tuple[str, str]]) -> InputError:
    """Nothing to embed: what was left out and why, and what would fix it."""
    left_out = f": {describe_left_out(skipped)}" if skipped else ""
    links = sum(reason == LINK_OUTSIDE for _, reason in skipped)
    if links:
        return InputError(
            f"no images found in {what}{left_out}",
            hint=f"{links} symbolic link(s) lead outside the folder, and links are followed only inside it (an "
            "index never reads outside its image folder): pass --images the folder they point to, or copy the "
            "files in (cp -rL FOLDER COPY, then --images COPY)",
        )
    return InputError(
        f"no images found in {what}{left_out}",
        hint=f"images are regular files ending in {', '.join(sorted(IMAGE_SUFFIXES))} (any case), searched "
        "recursively",
    )


def _check_same_source(existing: GalleryIndex, model: Any, root: Path, out: Path) -> None:
    if existing.model_fingerprint != model.fingerprint:
        raise InputError(
            f"{out} was made by model {existing.model_fingerprint} "
            f"({existing.model_info.get('run', 'unknown run')}), "
            f"not by {model.source} ({model.fingerprint})",
            hint="append with the model that made the index, or export a new index without --append",
        )
    if os.path.realpath(existing.image_root) != os.path.realpath(root):  # read back via its relative form: real folders
        raise InputError(
            f"{out} indexes images under {existing.image_root}, not {root}",
            hint="append from the same image folder, or export a new index",
        )


def _not_yet_indexed(
    existing: GalleryIndex, files: list[Path], entries: list[IndexEntry]
) -> tuple[list[Path], list[IndexEntry], int]:
    """The described files ``existing`` does not hold as they are now (path under the image root,
    size, mtime: ``GalleryIndex.indexed``, on the row keys, no metadata row read), with their
    entries, and how many it already holds unchanged."""
    todo = np.flatnonzero(~existing.indexed(entries)).tolist()
    return [files[i] for i in todo], [entries[i] for i in todo], len(entries) - len(todo)


def _write_new(
    out: Path, batches: Iterator[torch.Tensor], queue: EntryQueue, model: Any, gallery: GalleryFiles, settings: Any,
    header_model: dict[str, Any], counts: Counts, wanted: int,
) -> GalleryIndex:
    return write_index(
        out,
        _refuse_if_none_read(batches, counts, wanted),
        queue,
        model.fingerprint,
        gallery.root,
        shard_size=settings.index.shard_size,
        extra_header=header_model,
    )


def _refuse_if_none_read(batches: Iterator[torch.Tensor], counts: Counts, wanted: int) -> Iterator[torch.Tensor]:
    """``batches``; then, when not one of the ``wanted`` images could be read, the error that says
    so, raised while the new index is still a temporary folder (so nothing is written)."""
    yield from batches
    if counts.indexed == 0:
        raise InputError(
            f"none of the {wanted} images could be read (first: {counts.skipped[0][0]}: {counts.skipped[0][1]})"
            if counts.skipped
            else "no images could be read",
            hint="check the files; the index was not written",
        ) from None


__all__ = [
    "IMAGE_SUFFIXES", "ExportReport", "check_export", "check_out", "discover_images", "export_images", "printable_path",
]


def check_export(
    run: str | Path | None, out: str | Path, *, images: str | Path | None = None, data: str | Path | None = None,
    split: str | None = None, append: bool = False, weights: str | Path | None = None,
) -> None:
    """The checks ``export_run`` makes before loading anything (a caller starting several
    processes makes them once first): one model, one gallery, and an ``out`` that can be written."""
    if run is not None and weights is not None:
        raise InputError("give either a run or --weights, not both")
    if run is None and weights is None:
        raise InputError("no model given", hint="pass a run folder (personsearch export RUN --out ...) or --weights "
                         "SOURCE for zero-shot search with plain CLIP weights")
    if (images is None) == (data is None):
        raise InputError("pass exactly one of --images DIR or --data PREPARED --split SPLIT")
    if data is not None and split is None:
        raise InputError("--data needs --split (train, val or test)")
    if images is not None and split is not None:
        raise InputError("--split applies to --data only")
    together(lambda: check_out(out, append, [images, data]), on=0)  # a foreign, unwritable or input-overlapping --out


def export_run(
    run: str | Path | None,
    out: str | Path,
    *,
    images: str | Path | None = None,
    data: str | Path | None = None,
    split: str | None = None,
    append: bool = False,
    device: str = "auto",
    workers: int | None = None,
    weights: str | Path | None = None,
    sets: Sequence[str] = (),
    **options: Any,
) -> ExportReport:
    """``personsearch export`` as one call: the trained model of ``run`` (``load_trained``; None:
    the newest run), or plain CLIP ``weights`` for zero-shot search (any source ``load_clip``
    reads; ``sets`` may set model.image_size, model.stride, model.text_length), embeds ``images``
    (a folder) or ``data``'s ``split`` into the index ``out``. Every input, ``out`` included, is
    checked before the model loads. ``options`` are ``export_images``' (batch_size, precision, compile,
    faiss, nprobe, progress, on_total)."""
    from personsearch.accel import resolve_device
    from personsearch.runs import load_trained, load_weights
    from personsearch.settings import resolve_settings

    check_export(run, out, images=images, data=data, split=split, append=append, weights=weights)
    torch_device = resolve_device(device)
    check_precision(options.get("precision", "auto"), torch_device)
    if options.get("compile"):
        check_compile_support(torch_device)
    if weights is not None:
        wanted = resolve_settings(sets=sets).model
        model = load_weights(weights, wanted.image_size, wanted.stride, wanted.text_length)
    else:
        model = load_trained(run)
    workers = workers if workers is not None else model.settings.data.workers
    return export_images(model, out, images=images, prepared=data, split=split, append=append, device=torch_device,
                         workers=workers, **options)
