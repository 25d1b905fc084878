"""Batched embedding of captions and images with any trained model.

Captions are embedded in length order: the text encoder is causal, so each batch is cut to its
longest caption, and sorting makes batches of similar length (most captions are far shorter than
77 tokens). Results come back in the caller's order, float32, not normalised.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from personsearch.accel import autocast

Progress = Callable[[int], None]


@torch.no_grad()
def embed_texts(
    model: torch.nn.Module,
    ids: Tensor,
    batch_size: int = 512,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    progress: Progress | None = None,
) -> Tensor:
    """Global text features [N, D] for token ids [N, L] (``model.encode_text``)."""
    device = torch.device(device)
    if ids.shape[0] == 0:
        return torch.zeros(0, model.embed_dim)
    lengths = ids.argmax(dim=1)
    order = torch.argsort(lengths, stable=True)
    out: Tensor | None = None
    with autocast(precision, device):  # one context: its weight casts are made once, not per batch
        for start in range(0, ids.shape[0], batch_size):
            chunk = order[start:start + batch_size]
            feats = model.encode_text(ids[chunk].to(device, non_blocking=True)).float().cpu()
            if out is None:
                out = torch.empty(ids.shape[0], feats.shape[1])
            out[chunk] = feats
            if progress is not None:
                progress(len(chunk))
    assert out is not None
    return out


@torch.no_grad()
def embed_images(
    model: torch.nn.Module,
    batches: Iterable[Tensor],
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    progress: Progress | None = None,
) -> Tensor:
    """Global image features [N, D] for an iterable of image batches [B, 3, H, W] (``model.encode_image``)."""
    device = torch.device(device)
    parts: list[Tensor] = []
    with autocast(precision, device):  # one context: its weight casts are made once, not per batch
        for images in batches:
            parts.append(model.encode_image(images.to(device, non_blocking=True)).float().cpu())
            if progress is not None:
                progress(images.shape[0])
    if not parts:
        return torch.zeros(0, model.embed_dim)
    return torch.cat(parts)
