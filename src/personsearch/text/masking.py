"""Caption masking for the MLM branch: IRRA's random masking and attention-guided masking (AGM).

Both work on a whole batch of token ids at once and return ``(masked_ids, labels)`` where
``labels`` holds the original id at every chosen position and 0 elsewhere (0 = ignored by the
MLM loss). A chosen token becomes ``<|mask|>`` with ``mask_prob``, a random BPE token with
``random_prob``, and stays unchanged otherwise. Pass a ``torch.Generator`` for reproducible draws.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from personsearch.text.tokenizer import EOT_TOKEN_ID, MASK_TOKEN_ID, PAD_TOKEN_ID, SOT_TOKEN_ID

if TYPE_CHECKING:
    from personsearch.settings import MaskingSettings

__all__ = [
    "RANDOM_TOKEN_RANGE",
    "attention_masking",
    "candidate_importance",
    "candidate_mask",
    "mask_captions",
    "random_masking",
]

# Random replacements come from the BPE vocabulary without the specials: IRRA's range 1..49404.
RANDOM_TOKEN_RANGE = (1, MASK_TOKEN_ID)
_SPECIALS = (MASK_TOKEN_ID, SOT_TOKEN_ID, EOT_TOKEN_ID)


def _uniform(shape: Sequence[int], generator: torch.Generator | None, device: torch.device) -> Tensor:
    """U[0, 1) drawn on the generator's device (so a CPU generator works for CUDA ids)."""
    where = generator.device if generator is not None else device
    return torch.rand(tuple(shape), generator=generator, device=where).to(device)


def _randint(
    low: int, high: int, shape: Sequence[int], generator: torch.Generator | None, device: torch.device
) -> Tensor:
    where = generator.device if generator is not None else device
    return torch.randint(low, high, tuple(shape), generator=generator, device=where).to(device)


def _check_ids(ids: Tensor) -> None:
    if ids.dim() != 2:
        raise ValueError(f"token ids must be [batch, length], got shape {tuple(ids.shape)}")
    if ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"token ids must be integer, got {ids.dtype}")


def candidate_mask(ids: Tensor, special_ids: Sequence[int] = _SPECIALS, pad_id: int = PAD_TOKEN_ID) -> Tensor:
    """[B, T] bool: positions that may be masked (not SOT, EOT, ``<|mask|>`` or padding)."""
    _check_ids(ids)
    specials = torch.tensor(list(special_ids), dtype=ids.dtype, device=ids.device)
    return (ids != pad_id) & ~torch.isin(ids, specials)


def candidate_importance(
    ids: Tensor, importance: Tensor, special_ids: Sequence[int] = _SPECIALS, pad_id: int = PAD_TOKEN_ID
) -> Tensor:
    """Importance restricted to the candidates and normalised to sum 1 per caption (specials 0).

    A caption without candidates gets all zeros.
    """
    _check_importance(ids, importance)
    candidates = candidate_mask(ids, special_ids, pad_id)
    weights = torch.where(candidates, importance.float().clamp_min(0), torch.zeros((), device=ids.device))
    total = weights.sum(dim=1, keepdim=True)
    uniform = candidates.float() / candidates.sum(dim=1, keepdim=True).clamp_min(1)
    # All-zero attention on the candidates (possible only in degenerate models): fall back to uniform.
    return torch.where(total > 0, weights / total.clamp_min(torch.finfo(weights.dtype).tiny), uniform)


def _check_importance(ids: Tensor, importance: Tensor) -> None:
    _check_ids(ids)
    if importance.shape != ids.shape:
        raise ValueError(
            f"importance shape {tuple(importance.shape)} must equal ids shape {tuple(ids.shape)}"
        )
    if not bool(torch.isfinite(importance).all()):
        raise ValueError("importance contains NaN or infinite values")


def _replace(
    ids: Tensor,
    chosen: Tensor,
    mask_prob: float,
    random_prob: float,
    generator: torch.Generator | None,
    mask_token_id: int,
    random_range: tuple[int, int],
) -> tuple[Tensor, Tensor]:
    """Apply 80/10/10 replacement at ``chosen``; labels = original ids there, 0 elsewhere."""
    if mask_prob < 0 or random_prob < 0 or mask_prob + random_prob > 1 + 1e-9:
        raise ValueError(
            f"need 0 <= mask_prob, random_prob and their sum <= 1, got {mask_prob}, {random_prob}"
        )
    u = _uniform(ids.shape, generator, ids.device)
    to_mask = chosen & (u < mask_prob)
    to_random = chosen & (u >= mask_prob) & (u < mask_prob + random_prob)
    random_ids = _randint(random_range[0], random_range[1], ids.shape, generator, ids.device).to(ids.dtype)
    masked = torch.where(to_mask, torch.full_like(ids, mask_token_id), ids)
    masked = torch.where(to_random, random_ids, masked)
    labels = torch.where(chosen, ids, torch.zeros_like(ids))
    return masked, labels


def _random_choice(
    ids: Tensor, candidates: Tensor, ratio: float, generator: torch.Generator | None
) -> tuple[Tensor, Tensor]:
    """IRRA's draw: each candidate with probability ``ratio``. Returns (chosen, forced) where
    ``forced`` marks the first candidate of captions that drew nothing (IRRA masks one token)."""
    chosen = candidates & (_uniform(ids.shape, generator, ids.device) < ratio)
    empty = ~chosen.any(dim=1) & candidates.any(dim=1)
    first = candidates & (candidates.long().cumsum(dim=1) == 1)
    forced = first & empty[:, None]
    return chosen | forced, forced


def random_masking(
    ids: Tensor,
    ratio: float = 0.15,
    mask_prob: float = 0.8,
    random_prob: float = 0.1,
    generator: torch.Generator | None = None,
    *,
    mask_token_id: int = MASK_TOKEN_ID,
    special_ids: Sequence[int] = _SPECIALS,
    random_range: tuple[int, int] = RANDOM_TOKEN_RANGE,
) -> tuple[Tensor, Tensor]:
    """IRRA's masking: each non-special token chosen with probability ``ratio``, then 80/10/10.

    As in IRRA, a caption that drew no token gets its first word token replaced by ``<|mask|>``
    (always the mask token, not 80/10/10). A caption with no word tokens (``[SOT, EOT]``) is left as
    it is: IRRA masks its EOT instead (label EOT), a deliberate difference listed in the README.
    """
    if not 0 < ratio <= 1:
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")
    candidates = candidate_mask(ids, special_ids)
    chosen, forced = _random_choice(ids, candidates, ratio, generator)
    masked, labels = _replace(ids, chosen, mask_prob, random_prob, generator, mask_token_id, random_range)
    masked = torch.where(forced, torch.full_like(ids, mask_token_id), masked)
    return masked, labels


def _attention_choice(
    ids: Tensor,
    importance: Tensor,
    candidates: Tensor,
    ratio: float,
    temperature: float,
    generator: torch.Generator | None,
) -> Tensor:
    """k = max(1, round(ratio * n)) candidates per caption without replacement, P ∝ importance^(1/τ).

    Gumbel-top-k: the k largest of log(importance)/τ + Gumbel noise are a draw without replacement
    from the tempered distribution; per-caption k is applied as ``rank < k`` after one sort.
    ``temperature == 0`` is the limit: the top-k exactly (ties broken by position).
    """
    count = candidates.sum(dim=1)
    k = torch.round(count.double() * ratio).long().clamp_min(1).minimum(count)
    log_importance = importance.double().clamp_min(1e-30).log()
    if temperature > 0:
        u = _uniform(ids.shape, generator, ids.device).double()
        gumbel = -torch.log(-torch.log(u.clamp(1e-20, 1 - 1e-12)))
        keys = log_importance / temperature + gumbel
    else:
        keys = log_importance
    keys = torch.where(candidates, keys, torch.full_like(keys, float("-inf")))
    order = torch.sort(keys, dim=1, descending=True, stable=True).indices
    positions = torch.arange(ids.shape[1], device=ids.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(1, order, positions)
    return candidates & (rank < k[:, None])


def attention_masking(
    ids: Tensor,
    importance: Tensor,
    ratio: float = 0.15,
    temperature: float = 1.0,
    mix: float = 0.0,
    mask_prob: float = 0.8,
    random_prob: float = 0.1,
    generator: torch.Generator | None = None,
    *,
    mask_token_id: int = MASK_TOKEN_ID,
    special_ids: Sequence[int] = _SPECIALS,
    random_range: tuple[int, int] = RANDOM_TOKEN_RANGE,
) -> tuple[Tensor, Tensor]:
    """Attention-guided masking: mask the tokens the text encoder attends to from EOT.

    ``importance`` is [B, T] (e.g. the EOT attention row; only candidates matter, any scale). Each
    caption masks k = max(1, round(ratio * n)) of its n candidates, drawn without replacement with
    probability ∝ importance^(1/temperature); with probability ``mix`` a caption instead falls back to
    :func:`random_masking`. Chosen tokens are then replaced 80/10/10.
    """
    _check_importance(ids, importance)
    if not 0 < ratio <= 1:
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0 <= mix <= 1:
        raise ValueError(f"mix must be in [0, 1], got {mix}")
    candidates = candidate_mask(ids, special_ids)
    chosen = _attention_choice(ids, importance, candidates, ratio, temperature, generator)
    forced = torch.zeros_like(candidates)
    if mix > 0:
        fallback = _uniform((ids.shape[0],), generator, ids.device) < mix
        random_chosen, random_forced = _random_choice(ids, candidates, ratio, generator)
        chosen = torch.where(fallback[:, None], random_chosen, chosen)
        forced = random_forced & fallback[:, None]
    masked, labels = _replace(ids, chosen, mask_prob, random_prob, generator, mask_token_id, random_range)
    masked = torch.where(forced, torch.full_like(ids, mask_token_id), masked)
    return masked, labels


def mask_captions(
    ids: Tensor,
    settings: MaskingSettings,
    importance: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Mask a batch as ``settings.strategy`` says (``importance`` is needed for "attention")."""
    if settings.strategy == "attention":
        if importance is None:
            raise ValueError("attention masking needs the EOT attention importance of each token")
        return attention_masking(
            ids,
            importance,
            ratio=settings.ratio,
            temperature=settings.temperature,
            mix=settings.mix,
            mask_prob=settings.mask_prob,
            random_prob=settings.random_prob,
            generator=generator,
        )
    return random_masking(
        ids,
        ratio=settings.ratio,
        mask_prob=settings.mask_prob,
        random_prob=settings.random_prob,
        generator=generator,
    )
