"""The embedding stream of an export: images decoded by DataLoader workers, encoded in batches,
and their metadata handed to the index writer in step with each batch (``EntryQueue``); a file that
cannot be decoded is counted and skipped (``Counts``), never fatal."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from personsearch.accel import autocast
from personsearch.data.datasets import ImageFiles, collate_skipping
from personsearch.retrieval.index_entry import IndexEntry

log = logging.getLogger(__name__)

#: Called with the number of files finished (embedded or skipped) after each batch.
Progress = Callable[[int], None]


class EntryQueue:
    """Metadata handed to the index writer in step with the embedding batches: each batch's
    entries are queued before the batch is yielded, and the writer takes exactly that many."""

    def __init__(self) -> None:
        self._items: deque[IndexEntry] = deque()

    def put(self, entries: Sequence[IndexEntry]) -> None:
        self._items.extend(entries)

    def __iter__(self) -> EntryQueue:
        return self

    def __next__(self) -> IndexEntry:
        if not self._items:
            raise StopIteration
        return self._items.popleft()


@dataclass
class Counts:
    indexed: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)


@torch.no_grad()
def embed_batches(
    clip: torch.nn.Module,
    files: list[Path],
    entries: list[IndexEntry],
    transform: Callable[[Any], torch.Tensor],
    queue: EntryQueue,
    counts: Counts,
    batch_size: int,
    workers: int,
    device: torch.device,
    precision: str,
    progress: Progress | None,
) -> Iterator[torch.Tensor]:
    loader = DataLoader(
        ImageFiles(files, transform),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate_skipping,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    for batch in loader:
        for lost in batch.get("unreadable", ()):
            counts.skipped.append((entries[lost.index].path, lost.reason))
            log.warning("skipping %s: %s", entries[lost.index].path, lost.reason)
        done = batch["skipped"]
        if "images" in batch:
            rows = batch["index"].tolist()
            with autocast(precision, device):
                feats = clip.encode_image(batch["images"].to(device, non_blocking=True))
            queue.put([entries[i] for i in rows])
            counts.indexed += len(rows)
            done += len(rows)
            yield feats.float().cpu()
        if progress is not None:
            progress(done)
