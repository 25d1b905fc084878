"""Evaluation of a model on a prepared split: embed query captions and gallery images, rank by
cosine similarity, compute R@K / mAP / mINP (text→image, and image→text on request)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from personsearch.data.datasets import GalleryImages, QueryCaptions, collate_skipping
from personsearch.errors import RunFailure
from personsearch.metrics import rank_metrics
from personsearch.retrieval.embed import Progress, embed_images, embed_texts
from personsearch.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    split: str
    t2i: dict[str, float]
    i2t: dict[str, float] = field(default_factory=dict)
    similarity: Tensor | None = None  # [Q, G] text x image cosine
    query_pids: Tensor | None = None
    gallery_pids: Tensor | None = None
    captions: list[str] = field(default_factory=list)
    gallery_paths: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


#: The gallery loader's collate, looked up when the loader is made (a fault test interrupts here).
_collate_readable = collate_skipping


@torch.no_grad()
def evaluate_split(
    clip: torch.nn.Module,
    prepared: Any,
    split: str,
    settings: Settings,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    i2t: bool = False,
    batch_size: int | None = None,
    progress: Progress | None = None,
    keep_similarity: bool = False,
) -> EvalResult:
    """Rank every gallery image of ``split`` for every caption of ``split``."""
    from personsearch.data.transforms import build_transform

    device = torch.device(device)
    batch_size = batch_size or settings.eval.batch_size
    was_training = clip.training
    clip.eval()
    try:
        queries = QueryCaptions(prepared, split)
        gallery = GalleryImages(prepared, split, build_transform(settings.model.image_size, train=False))
        text = embed_texts(clip, queries.caption_ids, batch_size=batch_size, device=device,
                           precision=precision, progress=progress)
        # An image unreadable since prepare is left out of the gallery and counted, never a crash.
        loader = DataLoader(gallery.images, batch_size=batch_size, shuffle=False,
                            num_workers=settings.data.workers, collate_fn=_collate_readable,
                            pin_memory=device.type == "cuda")
        kept: list[int] = []

        def batches() -> Iterator[Tensor]:
            for batch in loader:
                for lost in batch.get("unreadable", ()):
                    entry = gallery.entries[lost.index]
                    log.warning("leaving out gallery image %d: gallery image of entry %d is unreadable: %s: %s",
                                lost.index, entry.entry, gallery.images.files[lost.index], lost.reason)
                if "images" in batch:
                    kept.extend(batch["index"].tolist())
                    yield batch["images"]

        image = embed_images(clip, batches(), device=device, precision=precision, progress=progress)
    finally:
        clip.train(was_training)
    if not kept:
        raise RunFailure(f"no gallery image of the {split!r} split could be read",
                         hint=f"check the image folder {getattr(prepared, 'raw_root', '')}")
    gallery_pids = gallery.pids[torch.tensor(kept, dtype=torch.long)]
    text = torch.nn.functional.normalize(text, dim=-1)
    image = torch.nn.functional.normalize(image, dim=-1)
    similarity = text @ image.t()
    unmatched = settings.eval.unmatched
    t2i = rank_metrics(similarity, queries.pids, gallery_pids, unmatched=unmatched)
    result = EvalResult(split=split, t2i=_percent_only(t2i), info=_info(t2i))
    result.info["unmatched"] = unmatched
    result.info["skipped_images"] = len(gallery) - len(kept)
    if i2t:
        backward = rank_metrics(similarity.t().contiguous(), gallery_pids, queries.pids, unmatched=unmatched)
        result.i2t = _percent_only(backward)
        result.info["i2t_queries_without_match"] = backward["queries_without_match"]
    if keep_similarity:
        result.similarity = similarity
        result.query_pids = queries.pids
        result.gallery_pids = gallery_pids
        result.captions = list(queries.captions)
        result.gallery_paths = [gallery.entries[index].path for index in kept]
    return result


_KEYS = ("R1", "R5", "R10", "mAP", "mINP")


def _percent_only(metrics: dict[str, Any]) -> dict[str, float]:
    return {key: float(metrics[key]) for key in _KEYS if key in metrics}


def _info(metrics: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in metrics.items() if key not in _KEYS}


def sheet_rows(result: EvalResult, image_root: Any, queries: int = 8, seed: int = 0, k: int = 10) -> list:
    """Contact-sheet rows for ``queries`` reproducibly chosen captions: the top-k gallery images
    with scores, framed green for the query's identity and red otherwise, then one true match."""
    from pathlib import Path

    from personsearch.sheet import MATCH, MISMATCH, SheetRow, SheetTile

    if result.similarity is None or result.query_pids is None or result.gallery_pids is None:
        raise ValueError("evaluate_split(..., keep_similarity=True) is needed for a sheet")
    total = result.similarity.shape[0]
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(total, generator=generator)[: min(queries, total)].sort().values.tolist()
    root = Path(image_root)
    rows = []
    for q in chosen:
        scores = result.similarity[q]
        top = torch.topk(scores, min(k, scores.numel()))
        pid = int(result.query_pids[q])
        tiles = [
            SheetTile(root / result.gallery_paths[g], f"{float(s):.3f}",
                      MATCH if int(result.gallery_pids[g]) == pid else MISMATCH)
            for s, g in zip(top.values.tolist(), top.indices.tolist(), strict=True)
        ]
        truth = (result.gallery_pids == pid).nonzero().flatten().tolist()
        if truth:
            g = truth[0]
            rank = int((scores > scores[g]).sum()) + 1
            tiles.append(SheetTile(root / result.gallery_paths[g], f"truth #{rank}", MATCH, gap_before=True))
        rows.append(SheetRow(f"[{q}] {result.captions[q]}", tiles))
    return rows
