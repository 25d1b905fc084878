"""What attention-guided masking sees in one caption: the view behind ``personsearch explain-mask``.

It lives on the model side because it runs the text encoder; the masking itself stays a text tool
(:mod:`personsearch.text.masking`) that only ever receives the importance as a tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from personsearch.errors import InputError
from personsearch.model.clip import CLIP
from personsearch.settings import MaskingSettings
from personsearch.text.masking import attention_masking, candidate_importance, candidate_mask
from personsearch.text.tokenizer import ClipTokenizer, default_tokenizer

__all__ = ["MaskExplanation", "explain_caption"]


@dataclass(frozen=True)
class MaskExplanation:
    """One caption seen by AGM: its tokens (SOT and EOT included), each token's share of the EOT
    attention over the candidates (sums to 1; specials 0), and which tokens AGM chose to mask."""

    tokens: list[str]
    ids: list[int]
    importance: list[float]
    masked: list[bool]
    masked_ids: list[int]

    def to_json(self) -> dict[str, list]:
        return {"tokens": self.tokens, "importance": self.importance, "masked": self.masked}


def explain_caption(
    model: CLIP,
    caption: str,
    settings: MaskingSettings | None = None,
    generator: torch.Generator | None = None,
    tokenizer: ClipTokenizer | None = None,
) -> MaskExplanation:
    """Run AGM on one caption with ``model``'s text encoder and report what it sees and masks.

    Uses ``settings`` ratio, temperature, layers and 80/10/10 probabilities; ``mix`` is ignored
    (this shows the attention-guided choice itself).
    """
    settings = settings or MaskingSettings(strategy="attention")
    tokenizer = tokenizer or default_tokenizer()
    ids = tokenizer.tokenize(caption, context_length=model.config.context_length)
    if not bool(candidate_mask(ids).any()):
        raise InputError(f"caption {caption!r} has no words to mask", hint="give a non-empty caption")
    length = int(ids.argmax(dim=-1).max()) + 1
    device = model.token_embedding.weight.device
    ids = ids[:, :length].to(device)
    with torch.no_grad():
        _, attention = model.encode_text_tokens(ids, attention_layers=settings.layers)
    if attention is None:  # attention_layers >= 1 always returns the row
        raise RuntimeError("the text encoder returned no EOT attention row")
    importance = candidate_importance(ids, attention)
    masked_ids, labels = attention_masking(
        ids,
        attention,
        ratio=settings.ratio,
        temperature=settings.temperature,
        mix=0.0,
        mask_prob=settings.mask_prob,
        random_prob=settings.random_prob,
        generator=generator,
    )
    row = ids[0].tolist()
    return MaskExplanation(
        tokens=[tokenizer.decode([token], skip_special_tokens=False) for token in row],
        ids=row,
        importance=[float(v) for v in importance[0].tolist()],
        masked=[bool(v) for v in (labels[0] != 0).tolist()],
        masked_ids=[int(v) for v in masked_ids[0].tolist()],
    )
