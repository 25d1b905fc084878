"""Fit CLIP weights to the model they are loaded into: the position grid resized, the text context
cut, and the state dict checked complete and shape for shape before anything is copied.

The visual position table is resized the way IRRA does (bilinear, ``align_corners=False``), so a
224x224 checkpoint serves a 384x128 person crop. A model built without its image encoder
(``towers=("text",)``) takes only the text encoder's tensors; the image encoder's are set aside
(they may be shape-only ``meta`` tensors, never read).
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from personsearch.errors import InputError
from personsearch.model.clip import CLIP

__all__ = ["adapt_state_dict", "resize_pos_embed"]

logger = logging.getLogger(__name__)

#: Optional on load: IRRA's CLIP has no learned temperature (the model's comes from settings).
_OPTIONAL_KEYS = ("logit_scale",)


def resize_pos_embed(posemb: Tensor, grid: tuple[int, int]) -> Tensor:
    """Class token + square grid [1 + n*n, C] -> class token + (rows x cols) grid, bilinear like IRRA."""
    positions = posemb.shape[0] - 1
    if positions == grid[0] * grid[1]:
        return posemb
    side = math.isqrt(positions)
    if side * side != positions:
        raise InputError(
            f"visual.positional_embedding has {positions} patch positions: neither a square grid nor the "
            f"model's {grid[0]}x{grid[1]} grid",
            hint="load it with the image size and stride it was trained with",
        )
    token, table = posemb[:1], posemb[1:]
    table = table.reshape(1, side, side, -1).permute(0, 3, 1, 2)
    table = F.interpolate(table, size=grid, mode="bilinear", align_corners=False)
    table = table.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1)
    return torch.cat([token, table], dim=0)


def adapt_state_dict(state_dict: dict[str, Tensor], model: CLIP, extra: list[str] | None = None) -> dict[str, Tensor]:
    """``state_dict`` made to fit ``model`` exactly (its keys, in its order), or InputError saying why
    it cannot; ``extra`` (keys already set aside as neither CLIP nor IRRA heads) joins the one
    warning about ignored keys."""
    state_dict = dict(state_dict)
    if model.visual is None:  # text encoder only: the image encoder's tensors are not used
        state_dict = {key: value for key, value in state_dict.items() if not key.startswith("visual.")}
    else:
        state_dict["visual.positional_embedding"] = resize_pos_embed(
            state_dict["visual.positional_embedding"], model.grid
        )
    context = model.config.context_length
    if state_dict["positional_embedding"].shape[0] > context:
        state_dict["positional_embedding"] = state_dict["positional_embedding"][:context]
    expected = model.state_dict()
    for key in _OPTIONAL_KEYS:
        if key not in state_dict and key in expected:
            logger.info("the checkpoint has no %s (as IRRA's CLIP); the model's temperature comes from settings", key)
            state_dict[key] = expected[key]
    missing = [key for key in expected if key not in state_dict]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise InputError(f"not a complete CLIP checkpoint: missing {shown}")
    unexpected = list(extra or []) + [key for key in state_dict if key not in expected]
    if unexpected:
        shown = ", ".join(unexpected[:8]) + (f" and {len(unexpected) - 8} more" if len(unexpected) > 8 else "")
        logger.warning("ignored %d keys that are neither CLIP parameters nor IRRA heads: %s", len(unexpected), shown)
    for key, target in expected.items():
        if tuple(state_dict[key].shape) != tuple(target.shape):
            raise InputError(
                f"checkpoint tensor {key} has shape {tuple(state_dict[key].shape)}, "
                f"the model expects {tuple(target.shape)}",
                hint="the checkpoint does not match this architecture",
            )
    return {key: state_dict[key] for key in expected}
