"""torch Datasets over a prepared dataset: one training sample per caption, gallery images and
query captions for evaluation.

A training image that cannot be decoded yields ``None`` (with a warning); ``collate_skipping``
drops such items and reports how many, so an epoch never dies on one bad file.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from personsearch.data.prepared import Entry, PreparedDataset
from personsearch.data.transforms import ImageLoadError, load_rgb
from personsearch.errors import RunFailure

log = logging.getLogger(__name__)

Transform = Callable[[Any], torch.Tensor]


class TrainCaptions(Dataset):
    """Items ``{"images", "caption_ids", "pids", "image_ids"}``, one per training caption.

    ``pids`` are the remapped identities 0..N-1 (``prepared.num_train_ids`` classes); ``image_ids``
    number the training images, for SDM's image-id soft labels.
    """

    def __init__(self, prepared: PreparedDataset, transform: Transform, split: str = "train") -> None:
        self.prepared = prepared
        self.transform = transform
        entries = prepared.entries(split)
        self.entries: list[Entry] = entries
        owner = np.repeat(np.arange(len(entries)), [len(entry.captions) for entry in entries])
        self.caption_entry = owner
        self.caption_rows = np.asarray([row for entry in entries for row in entry.rows], dtype=np.int64)
        self.pids = [entries[index].pid for index in owner.tolist()]

    def __len__(self) -> int:
        return len(self.caption_rows)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        entry = self.entries[int(self.caption_entry[index])]
        path = self.prepared.image_path(entry)
        try:
            image = load_rgb(path)
        except ImageLoadError as exc:
            log.warning("skipping training image (entry %d): %s", entry.entry, exc)
            return None
        return {
            "images": self.transform(image),
            "caption_ids": torch.from_numpy(self.prepared.tokens[self.caption_rows[index]].astype(np.int64)),
            "pids": entry.pid,
            "image_ids": entry.image_id,
        }


def collate_skipping(batch: Sequence[dict[str, Any] | None]) -> dict[str, Any]:
    """Default collation of the items that loaded; ``batch["skipped"]`` counts the rest. A batch
    in which nothing loaded holds only ``skipped``."""
    kept = [item for item in batch if item is not None]
    skipped = len(batch) - len(kept)
    if not kept:
        return {"skipped": skipped}
    collated = default_collate(kept)
    collated["skipped"] = skipped
    return collated


class GalleryImages(Dataset):
    """Items ``{"images", "pids", "index"}`` for the images of an evaluation split (file ids)."""

    def __init__(self, prepared: PreparedDataset, split: str, transform: Transform) -> None:
        self.prepared = prepared
        self.entries = prepared.entries(split)
        self.transform = transform
        self.pids = torch.tensor([entry.pid for entry in self.entries], dtype=torch.long)

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
