"""Random (IRRA) and attention-guided masking: what may be masked, how many, and the proportions."""

from __future__ import annotations

import math

import pytest
import torch

from personsearch.settings import MaskingSettings
from personsearch.text.masking import (
    attention_masking,
    candidate_importance,
    candidate_mask,
    mask_captions,
    random_masking,
)
from personsearch.text.tokenizer import EOT_TOKEN_ID, MASK_TOKEN_ID, SOT_TOKEN_ID


def _captions(batch: int, length: int = 40, seed: int = 0) -> torch.Tensor:
    """SOT + words + EOT + zero padding, with caption lengths varying from 1 to 30 words."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(batch, length, dtype=torch.long)
    for row in range(batch):
        words = 1 + row % 30
        ids[row, 0] = SOT_TOKEN_ID
        ids[row, 1 : words + 1] = torch.randint(1, 49405, (words,), generator=g)
        ids[row, words + 1] = EOT_TOKEN_ID
    return ids


def _binomial_bound(n: int, p: float, sigmas: float = 5.0) -> float:
    return sigmas * math.sqrt(n * p * (1 - p))


def test_candidates_exclude_specials_and_padding():
    ids = torch.tensor(
        [[SOT_TOKEN_ID, 320, 1929, EOT_TOKEN_ID, 0, 0], [SOT_TOKEN_ID, MASK_TOKEN_ID, 7, 9, 11, EOT_TOKEN_ID]]
    )
    assert candidate_mask(ids).tolist() == [
        [False, True, True, False, False, False],
        [False, False, True, True, True, False],
    ]


def test_random_masking_rate_and_80_10_10():
    ids = _captions(4000)
    masked, labels = random_masking(ids, generator=torch.Generator().manual_seed(1))
    candidates = candidate_mask(ids)
    chosen = labels != 0
    assert not (chosen & ~candidates).any()
    assert torch.equal(labels[chosen], ids[chosen])
    assert torch.equal(masked[~chosen], ids[~chosen])
    assert chosen.any(dim=1).all()  # at least one per caption
    # Expected count per caption: 0.15 n plus the forced token when the draw is empty (0.85^n).
    n = candidates.sum(dim=1).double()
    expected = float((0.15 * n + 0.85**n).sum())
    std = math.sqrt(float((n * 0.15 * 0.85).sum()))
    assert abs(int(chosen.sum()) - expected) < 5 * std


def test_random_masking_replacement_proportions():
    # ratio 1: every word is chosen, so no forced mask skews the 80/10/10 split.
    ids = _captions(3000)
    masked, labels = random_masking(ids, ratio=1.0, generator=torch.Generator().manual_seed(2))
    chosen = labels != 0
    assert torch.equal(chosen, candidate_mask(ids))
    total = int(chosen.sum())
    as_mask = int((masked[chosen] == MASK_TOKEN_ID).sum())
    kept = int((masked[chosen] == ids[chosen]).sum())
    other = total - as_mask - kept
    assert abs(as_mask - 0.8 * total) < _binomial_bound(total, 0.8)
    # A random replacement may hit the original id (1 in 49404): negligible against the bound.
    assert abs(kept - 0.1 * total) < _binomial_bound(total, 0.1) + 2
    assert abs(other - 0.1 * total) < _binomial_bound(total, 0.1) + 2
    # Random replacements are real BPE tokens, never specials or padding.
    replaced = masked[chosen & (masked != ids) & (masked != MASK_TOKEN_ID)]
    assert ((replaced >= 1) & (replaced < MASK_TOKEN_ID)).all()


def test_random_masking_forces_one_mask_on_empty_draw():
    ids = torch.tensor([[SOT_TOKEN_ID, 500, 600, EOT_TOKEN_ID, 0]])
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        masked, labels = random_masking(ids, ratio=1e-9, generator=g)
        assert labels.tolist() == [[0, 500, 0, 0, 0]]
        assert masked.tolist() == [[SOT_TOKEN_ID, MASK_TOKEN_ID, 600, EOT_TOKEN_ID, 0]]


def test_random_masking_is_reproducible_and_leaves_input():
    ids = _captions(64)
    before = ids.clone()
    a = random_masking(ids, generator=torch.Generator().manual_seed(5))
    b = random_masking(ids, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert torch.equal(ids, before)


def test_attention_masking_never_touches_specials_and_counts_follow_ratio():
    ids = _captions(600)
    importance = torch.rand(ids.shape, generator=torch.Generator().manual_seed(2))
    importance[:, 0] = 100.0  # SOT usually draws most attention; must still never be chosen
    importance[ids == EOT_TOKEN_ID] = 50.0
    importance[ids == 0] = 80.0
    for ratio in (0.15, 0.3, 0.5):
        masked, labels = attention_masking(
            ids, importance, ratio=ratio, temperature=1.0, generator=torch.Generator().manual_seed(3)
        )
        chosen = labels != 0
        candidates = candidate_mask(ids)
        assert not (chosen & ~candidates).any()
        assert torch.equal(masked[~candidates], ids[~candidates])
        n = candidates.sum(dim=1)
        want = [max(1, round(ratio * int(c))) for c in n]
        assert chosen.sum(dim=1).tolist() == want


@pytest.mark.parametrize("temperature", [0.0, 1e-4])
def test_attention_masking_low_temperature_is_top_k(temperature):
    ids = _captions(200)
    g = torch.Generator().manual_seed(7)
    # Distinct weights: log-ratios >= log(41/40), so at τ = 1e-4 they dwarf the Gumbel noise.
    importance = torch.stack([torch.randperm(ids.shape[1], generator=g) + 1.0 for _ in range(ids.shape[0])])
    _, labels = attention_masking(
        ids, importance, ratio=0.3, temperature=temperature, mask_prob=1.0, random_prob=0.0, generator=g
    )
    candidates = candidate_mask(ids)
    for row in range(ids.shape[0]):
        positions = candidates[row].nonzero().flatten().tolist()
        k = max(1, round(0.3 * len(positions)))
        top = sorted(positions, key=lambda p: -float(importance[row, p]))[:k]
        assert sorted((labels[row] != 0).nonzero().flatten().tolist()) == sorted(top)


def test_attention_masking_draw_frequencies_follow_tempered_importance():
    # One caption, 4 candidates, k = 1: P(choose j) = w_j^(1/τ) / Σ w^(1/τ).
    ids = torch.tensor([[SOT_TOKEN_ID, 11, 12, 13, 14, EOT_TOKEN_ID]]).repeat(20000, 1)
    weights = torch.tensor([0.0, 0.1, 0.2, 0.3, 0.4, 0.0])
    importance = weights.expand_as(ids).clone()
    for temperature in (1.0, 0.5, 1e3):
        _, labels = attention_masking(
            ids, importance, ratio=0.25, temperature=temperature, generator=torch.Generator().manual_seed(11)
        )
        counts = (labels != 0).sum(dim=0)[1:5].double()
        tempered = weights[1:5].double() ** (1 / temperature)
        probs = tempered / tempered.sum()
        for c, p in zip(counts.tolist(), probs.tolist(), strict=True):
            assert abs(c - 20000 * p) < _binomial_bound(20000, p) + 1


def test_attention_masking_replacement_proportions():
    ids = _captions(3000)
    importance = torch.rand(ids.shape, generator=torch.Generator().manual_seed(4))
    masked, labels = attention_masking(ids, importance, ratio=0.5, generator=torch.Generator().manual_seed(8))
    chosen = labels != 0
    total = int(chosen.sum())
    as_mask = int((masked[chosen] == MASK_TOKEN_ID).sum())
    kept = int((masked[chosen] == ids[chosen]).sum())
    assert abs(as_mask - 0.8 * total) < _binomial_bound(total, 0.8)
    assert abs(kept - 0.1 * total) < _binomial_bound(total, 0.1) + 2


def test_attention_masking_mix_falls_back_to_random():
    ids = _captions(3000, seed=3)
    importance = torch.zeros(ids.shape)
    importance[:, 1] = 1.0  # AGM at τ = 0 with k = 1 always picks the first word
    ids = ids[:, :8]  # captions of at most 6 words keep k = 1 ...
    importance = importance[:, :8]
    ids[ids[:, 7] != 0, 7] = EOT_TOKEN_ID  # ... and every row keeps its EOT
    n = candidate_mask(ids).sum(dim=1)
    _, agm = attention_masking(ids, importance, ratio=0.15, temperature=0.0, mask_prob=1.0, random_prob=0.0)
    assert ((agm != 0).nonzero()[:, 1] == 1).all() and ((agm != 0).sum(dim=1) == 1).all()
    _, mixed = attention_masking(
        ids,
        importance,
        ratio=0.15,
        temperature=0.0,
        mix=0.5,
        mask_prob=1.0,
        random_prob=0.0,
        generator=torch.Generator().manual_seed(9),
    )
    differs = ((mixed != 0) != (agm != 0)).any(dim=1).double()
    # A fallback row matches AGM only when random masking picks exactly the first word
    # (drawn alone, or forced after an empty draw): 0.15 * 0.85^(n-1) + 0.85^n.
    n = n.double()
    p_differ = 0.5 * (1 - (0.15 * 0.85 ** (n - 1) + 0.85**n))
    expected = float(p_differ.sum())
    std = math.sqrt(float((p_differ * (1 - p_differ)).sum()))
    assert abs(float(differs.sum()) - expected) < 5 * std


def test_candidate_importance_sums_to_one_over_candidates():
    ids = _captions(10)
    importance = torch.rand(ids.shape)
    norm = candidate_importance(ids, importance)
    assert torch.allclose(norm.sum(dim=1), torch.ones(10))
    assert (norm[~candidate_mask(ids)] == 0).all()


def test_mask_captions_dispatches_on_strategy():
    ids = _captions(8)
    importance = torch.rand(ids.shape)
    settings = MaskingSettings(strategy="attention", temperature=0.5)
    masked, labels = mask_captions(ids, settings, importance, torch.Generator().manual_seed(0))
    assert masked.shape == ids.shape and (labels != 0).any(dim=1).all()
    with pytest.raises(ValueError, match="importance"):
        mask_captions(ids, settings, None)
    masked, labels = mask_captions(ids, MaskingSettings(), None, torch.Generator().manual_seed(0))
    assert (labels != 0).any(dim=1).all()


def test_attention_masking_rejects_mismatched_importance():
    ids = _captions(4)
    with pytest.raises(ValueError, match="shape"):
        attention_masking(ids, torch.rand(4, 3))
    bad = torch.rand(ids.shape)
    bad[0, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        attention_masking(ids, bad)
