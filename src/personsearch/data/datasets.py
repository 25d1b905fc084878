"""torch Datasets: image files by path, and over a prepared dataset one training sample per
caption, gallery images and query captions for evaluation.

Images that may be skipped are read by ``ImageFiles`` (training, evaluation and export alike): a
file that cannot be read yields ``Unreadable`` (a training caption: ``None``, with a warning)
instead of raising, and ``collate_skipping`` drops such items and counts them, so neither an
epoch, an evaluation nor an export dies on one bad file. ``GalleryImages`` read item by item is
strict: an unreadable image there is a ``RunFailure``.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from personsearch.data.images import NOT_REGULAR
from personsearch.data.prepared import Entry, PreparedDataset
from personsearch.data.transforms import ImageLoadError, load_rgb
from personsearch.errors import RunFailure
from personsearch.io import NotRegularFile, open_regular

log = logging.getLogger(__name__)

Transform = Callable[[Any], torch.Tensor]


@dataclass(frozen=True)
class Unreadable:
    """Stands in for the item of an image that could not be read: which one and why. Yielded,
    never raised, so one bad file costs one item (``collate_skipping`` drops and counts it)."""

    index: int
    reason: str


class ImageFiles(Dataset):
    """Items ``{"images", "index"}``: the files decoded and transformed, by position; a file that
    cannot be read yields ``Unreadable(index, reason)`` instead.

    A file is opened only if it is a regular file, without blocking: a FIFO or device swapped in
    after the files were listed is refused, never waited on.
    """

    def __init__(self, files: Sequence[Path], transform: Transform) -> None:
        self.files = list(files)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any] | Unreadable:
        try:
            handle = open_regular(self.files[index])
        except NotRegularFile:
            return Unreadable(index, NOT_REGULAR)
        except OSError as exc:
            reason = "symbolic link loop" if exc.errno == errno.ELOOP else exc.strerror or str(exc)
            return Unreadable(index, f"cannot be opened: {reason}")
        except ValueError as exc:
            return Unreadable(index, f"cannot be opened: {exc}")
        with handle:
            try:
                return {"images": self.transform(load_rgb(handle)), "index": index}  # type: ignore[arg-type]
            except ImageLoadError as exc:
                reason = str(exc)
                prefix = f"{handle}: "  # load_rgb names the file it was given: here the open handle
                return Unreadable(index, reason[len(prefix) :] if reason.startswith(prefix) else reason)
            except (OSError, ValueError, RuntimeError) as exc:
                return Unreadable(index, f"cannot be converted ({exc})")


class TrainCaptions(Dataset):
    """Items ``{"images", "caption_ids", "pids", "image_ids"}``, one per training caption, and
    ``"attributes"`` (float ``[A]``, the image's multi-hot labels) when ``attribute_targets`` is given.

    ``pids`` are the remapped identities 0..N-1 (``prepared.num_train_ids`` classes); ``image_ids``
    number the training images, for SDM's image-id soft labels; ``attribute_targets`` ``[entries, A]``
    (``data.attribute_labels``) is indexed by the split's entries.
    """

    def __init__(self, prepared: PreparedDataset, transform: Transform, split: str = "train",
                 attribute_targets: np.ndarray | None = None) -> None:
        self.prepared = prepared
        self.transform = transform
        entries = prepared.entries(split)
        self.entries: list[Entry] = entries
        if attribute_targets is not None and len(attribute_targets) != len(entries):
            raise ValueError(f"{len(attribute_targets)} rows of attribute targets for {len(entries)} images")
        self.attribute_targets = attribute_targets
        self.images = ImageFiles([prepared.image_path(entry) for entry in entries], transform)
        owner = np.repeat(np.arange(len(entries)), [len(entry.captions) for entry in entries])
        self.caption_entry = owner
        self.caption_rows = np.asarray([row for entry in entries for row in entry.rows], dtype=np.int64)
        self.pids = [entries[index].pid for index in owner.tolist()]

    def __len__(self) -> int:
        return len(self.caption_rows)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        position = int(self.caption_entry[index])
        entry = self.entries[position]
        item = self.images[position]
        if isinstance(item, Unreadable):
            log.warning("skipping training image (entry %d): %s: %s", entry.entry, self.images.files[position],
                        item.reason)
            return None
        sample = {
            "images": item["images"],
            "caption_ids": torch.from_numpy(self.prepared.tokens[self.caption_rows[index]].astype(np.int64)),
            "pids": entry.pid,
            "image_ids": entry.image_id,
            "index": index,  # the pair: what a clean/noisy division (train.ccd) weighs
        }
        if self.attribute_targets is not None:
            sample["attributes"] = torch.from_numpy(self.attribute_targets[position])
        return sample


def collate_skipping(batch: Sequence[dict[str, Any] | Unreadable | None]) -> dict[str, Any]:
    """Default collation of the items that loaded; ``batch["skipped"]`` counts the rest (``None``
    and ``Unreadable``), and ``batch["unreadable"]`` lists the ``Unreadable`` ones, in batch order,
    when there are any. A batch in which nothing loaded holds only those two keys."""
    kept = [item for item in batch if item is not None and not isinstance(item, Unreadable)]
    unreadable = [item for item in batch if isinstance(item, Unreadable)]
    collated = default_collate(kept) if kept else {}
    collated["skipped"] = len(batch) - len(kept)
    if unreadable:
        collated["unreadable"] = unreadable
    return collated


class GalleryImages(Dataset):
    """Items ``{"images", "pids", "index"}`` for the images of an evaluation split (file ids)."""

    def __init__(self, prepared: PreparedDataset, split: str, transform: Transform) -> None:
        self.prepared = prepared
        self.entries = prepared.entries(split)
        self.transform = transform
        self.pids = torch.tensor([entry.pid for entry in self.entries], dtype=torch.long)
        #: The same images, read leniently: an unreadable one is an ``Unreadable`` item, not an error.
        self.images = ImageFiles([prepared.image_path(entry) for entry in self.entries], transform)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> dict[str, Any]:
        entry = self.entries[index]
        try:
            image = load_rgb(self.prepared.image_path(entry))
        except ImageLoadError as exc:
            raise RunFailure(
                f"gallery image of entry {entry.entry} is unreadable: {exc}",
                hint="re-run `personsearch prepare --verify` to find and skip broken images",
            ) from None
        return {"images": self.transform(image), "pids": entry.pid, "index": index}


class QueryCaptions(Dataset):
    """The captions of an evaluation split as queries: ``caption_ids`` ``LongTensor[Q, L]`` and
    ``pids`` ``LongTensor[Q]`` (file ids), also readable item by item."""

    def __init__(self, prepared: PreparedDataset, split: str) -> None:
        entries = prepared.entries(split)
        self.caption_ids = torch.from_numpy(prepared.caption_tokens(split).astype(np.int64))
        self.pids = torch.tensor([entry.pid for entry in entries for _ in entry.captions], dtype=torch.long)
        self.captions = [caption for entry in entries for caption in entry.captions]

    def __len__(self) -> int:
        return len(self.pids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"caption_ids": self.caption_ids[index], "pids": int(self.pids[index]), "index": index}
