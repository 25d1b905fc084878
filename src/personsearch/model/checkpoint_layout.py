"""Where CLIP's tensors sit inside a checkpoint, and which tensors are IRRA's heads instead.

IRRA saves ``{"model": ...}`` with its CLIP under ``base_model.`` and its heads (classifier,
cross-modal branch) beside it; forks save a bare CLIP; DataParallel adds ``module.`` to every key;
Lightning-style files wrap everything in ``{"state_dict": ...}``. Whatever the wrapping, the result
is the CLIP under OpenAI's names, the heads under IRRA's, and the keys that are neither, listed.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from torch import Tensor

from personsearch.errors import InputError

__all__ = ["IRRA_HEADS", "CheckpointParts", "is_text_key", "split_heads", "unwrap_state_dict"]

#: Top-level modules of IRRA's model beside ``base_model`` (its heads, our optional attribute head, and RDE's
#: token-selection heads under RDE's spellings; not part of CLIP).
IRRA_HEADS = ("classifier", "cross_attn", "cross_modal_transformer", "ln_pre_t", "ln_pre_i", "ln_post", "mlm_head",
              "attr_head", "visul_emb_layer", "texual_emb_layer")


#: CLIP's text encoder under OpenAI's names (a prefix ending in "." or a whole name) and Hugging Face's.
_TEXT_PREFIXES = ("transformer.", "token_embedding.", "ln_final.", "text_model.", "text_projection.")
_TEXT_NAMES = ("positional_embedding", "text_projection", "logit_scale")
#: Prefixes a key may carry before its CLIP name, in this order (DataParallel's, then IRRA's and our runs').
_WRAPPERS = ("module.", "base_model.")


def is_text_key(key: str) -> bool:
    """Whether a checkpoint key, wrapped in any layout this module reads, belongs to CLIP's text
    encoder or RDE's text token-selection head (what encoding a caption needs): never an
    image-encoder tensor or another head."""
    for wrapper in _WRAPPERS:
        if key.startswith(wrapper):
            key = key[len(wrapper):]
    return key in _TEXT_NAMES or key.startswith(_TEXT_PREFIXES) or key.startswith("texual_emb_layer.")


@dataclasses.dataclass
class CheckpointParts:
    """A checkpoint split into CLIP weights (OpenAI names), IRRA heads, and keys that are neither."""

    clip: dict[str, Tensor]
    heads: dict[str, Tensor] = dataclasses.field(default_factory=dict)
    unknown: list[str] = dataclasses.field(default_factory=list)


def unwrap_state_dict(obj: Any, origin: Path) -> dict[str, Tensor]:
    """Find the tensor dict inside IRRA's ``{"model": ...}`` or a ``{"state_dict": ...}`` wrapper."""
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not any(isinstance(v, Tensor) for v in obj.values()):
        raise InputError(
            f"{origin} does not hold a state dict (found {type(obj).__name__})",
            hint="expected CLIP weights: a state dict, an IRRA checkpoint or an OpenAI .pt archive",
        )
    return {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}


def split_heads(state_dict: dict[str, Tensor]) -> CheckpointParts:
    """Drop DataParallel's ``module.``; with ``base_model.`` (IRRA, our runs) the CLIP is under it and
    IRRA's heads beside it; without it (a fork's bare CLIP) every other key is taken as CLIP's."""
    if state_dict and all(key.startswith("module.") for key in state_dict):
        state_dict = {key[len("module.") :]: value for key, value in state_dict.items()}
    nested = any(key.startswith("base_model.") for key in state_dict)
    parts = CheckpointParts({})
    for key, value in state_dict.items():
        if key.split(".", 1)[0] in IRRA_HEADS:
            parts.heads[key] = value
        elif not nested:
            parts.clip[key] = value
        elif key.startswith("base_model."):
            parts.clip[key[len("base_model.") :]] = value
        else:
            parts.unknown.append(key)
    return parts
