"""A CLIP with RDE's token-selection heads, embedding as RDE's evaluator scores ("BGE+TSE").

``encode_image`` / ``encode_text`` return the joint embedding (``tse.joint_embedding``: the global
feature and the TSE feature, each normalised, concatenated and scaled by 1/sqrt(2)), so the dot
product of two is the mean of the two cosine similarities. Everything that embeds through a
model's ``encode_*`` (evaluation, export, query, the server) therefore ranks by RDE's combined
score without knowing about TSE; an index made with such a model stores the joint embeddings.

RDE's checkpoints keep the heads beside ``base_model`` as ``visul_emb_layer.*`` (image) and
``texual_emb_layer.*`` (text), RDE's spellings; ``heads_from_state`` builds them from those tensors.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from personsearch.errors import InputError
from personsearch.model.tse import ImageTokenSelection, TextTokenSelection, joint_embedding

__all__ = ["IMAGE_HEAD", "TEXT_HEAD", "TokenSelectionCLIP", "has_tse_heads", "heads_from_state"]

#: RDE's names of its two heads in a checkpoint (beside ``base_model``).
IMAGE_HEAD, TEXT_HEAD = "visul_emb_layer", "texual_emb_layer"


class TokenSelectionCLIP(nn.Module):
    """``clip`` (a ``personsearch.model.CLIP``) with the TSE heads of the towers it has."""

    def __init__(self, clip: Any, image_head: ImageTokenSelection | None, text_head: TextTokenSelection) -> None:
        super().__init__()
        self.base = clip
        self.image_head = image_head
        self.text_head = text_head

    @property
    def towers(self) -> tuple[str, ...]:
        return tuple(self.base.towers)

    @property
    def embed_dim(self) -> int:
        return int(self.base.embed_dim) + int(self.text_head.mlp.layers[1].out_features)

    @property
    def dtype(self) -> torch.dtype:
        return self.base.dtype

    def encode_image(self, images: Tensor) -> Tensor:
        if self.image_head is None:
            raise InputError("this model was loaded for text queries only: it has no image encoder",
                             hint='load it with both towers (the default), not towers=("text",)')
        tokens, row = self.base.encode_image_tokens_attention(images)
        return joint_embedding(tokens[:, 0], self.image_head(tokens, row))

    def encode_text(self, ids: Tensor) -> Tensor:
        tokens, row = self.base.encode_text_tokens(ids, attention_layers=1, trim=True)
        eot = ids.argmax(dim=-1)
        global_features = tokens[torch.arange(tokens.shape[0], device=tokens.device), eot]
        return joint_embedding(global_features, self.text_head(tokens, ids[:, : tokens.shape[1]], row))

    def forward(self, images: Tensor, ids: Tensor) -> tuple[Tensor, Tensor]:
        return self.encode_image(images), self.encode_text(ids)


def has_tse_heads(heads: dict[str, Tensor]) -> bool:
    """Whether a checkpoint's head tensors include RDE's (either head: a lone one is refused on loading)."""
    return any(key.startswith((f"{TEXT_HEAD}.", f"{IMAGE_HEAD}.")) for key in heads)


def heads_from_state(heads: dict[str, Tensor], in_dim: int, ratio: float, context_length: int,
                     image: bool = True) -> tuple[ImageTokenSelection | None, TextTokenSelection]:
    """The two heads (the image one only with ``image``) loaded from a checkpoint's head tensors;
    their width comes from the tensors, every expected tensor must be there (strict)."""

    def part(prefix: str) -> dict[str, Tensor]:
        found = {key[len(prefix) + 1:]: value.float() if value.is_floating_point() else value
                 for key, value in heads.items() if key.startswith(f"{prefix}.")}
        if not found:
            raise InputError(f"the checkpoint has no {prefix}.* tensors (RDE's token-selection head)",
                             hint="evaluate RDE runs with the checkpoint RDE's train.py saved (best.pth)")
        return found

    text_state = part(TEXT_HEAD)
    width = text_state.get("linear.weight")
    if width is None or width.ndim != 2 or width.shape[1] != in_dim:
        raise InputError(f"{TEXT_HEAD}.linear.weight does not fit a CLIP of embedding size {in_dim}",
                         hint="the checkpoint's heads and its base_model must come from one RDE run")
    embed_dim = int(width.shape[0])
    text_head = TextTokenSelection(in_dim, embed_dim, ratio, context_length)
    _load(text_head, text_state, TEXT_HEAD)
    image_head = None
    if image:
        image_head = ImageTokenSelection(in_dim, embed_dim, ratio)
        _load(image_head, part(IMAGE_HEAD), IMAGE_HEAD)
    return image_head, text_head


def _load(head: nn.Module, state: dict[str, Tensor], prefix: str) -> None:
    try:
        head.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:300]
        raise InputError(f"the checkpoint's {prefix}.* tensors do not form RDE's head ({detail})",
                         hint="the file may be from another model or damaged") from None
    head.eval()
