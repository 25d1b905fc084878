"""RDE's triplet alignment loss against a plain float64 formulation written here, loop by loop."""

from __future__ import annotations

import math

import pytest
import torch

from personsearch.losses import TAL_SUM_CAP, tal


def plain_tal(scores: list[list[float]], pids: list[int], tau: float, margin: float) -> list[float]:
    """Per pair: for text i over images and for image i over texts, relu(margin - softmax-weighted
    positive similarity + tau * log(min(sum over other identities of exp(s / tau), 1e36)))."""
    n = len(pids)

    def side(matrix: list[list[float]]) -> list[float]:
        out = []
        for i in range(n):
            positives = [j for j in range(n) if pids[j] == pids[i]]
            negatives = [j for j in range(n) if pids[j] != pids[i]]
            weights = [math.exp(matrix[i][j] / tau) for j in positives]
            positive = sum(w * matrix[i][j] for w, j in zip(weights, positives, strict=True)) / sum(weights)
            total = min(sum(math.exp(matrix[i][j] / tau) for j in negatives), TAL_SUM_CAP)
            negative = tau * math.log(total) if total > 0 else -math.inf
            out.append(max(0.0, margin - positive + negative))
        return out

    transposed = [[scores[j][i] for j in range(n)] for i in range(n)]
    return [a + b for a, b in zip(side(scores), side(transposed), strict=True)]


def _scores(seed: int, n: int = 8, dim: int = 16) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    text = torch.nn.functional.normalize(torch.randn(n, dim, generator=generator, dtype=torch.float64), dim=1)
    image = torch.nn.functional.normalize(torch.randn(n, dim, generator=generator, dtype=torch.float64), dim=1)
    return text @ image.t()


@pytest.mark.parametrize("pids", [[0, 1, 2, 3, 4, 5, 6, 7], [0, 0, 1, 1, 2, 2, 3, 3], [5, 5, 5, 1, 1, 9, 9, 9]])
@pytest.mark.parametrize("tau, margin", [(0.015, 0.1), (0.02, 0.2), (0.5, 0.0)])
def test_tal_matches_the_plain_formulation(pids, tau, margin):
    for seed in range(3):
        scores = _scores(seed)
        got = tal(scores, torch.tensor(pids), tau=tau, margin=margin)
        want = plain_tal(scores.tolist(), pids, tau, margin)
        assert got.shape == (len(pids),)
        assert got.tolist() == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_tal_defaults_are_rdes():
    scores, pids = _scores(1), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    assert torch.equal(tal(scores, pids), tal(scores, pids, tau=0.015, margin=0.1))


def test_a_batch_of_one_identity_costs_nothing_and_has_finite_gradients():
    scores = _scores(2).float().requires_grad_()
    loss = tal(scores, torch.zeros(8, dtype=torch.long))
    assert torch.equal(loss, torch.zeros(8))
    loss.sum().backward()
    assert torch.isfinite(scores.grad).all()


def test_the_positive_weights_carry_no_gradient():
    """RDE detaches the softmax weights: the gradient reaches the positives only as the weights."""
    scores = _scores(3).float().requires_grad_()
    pids = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    tal(scores, pids, margin=10.0).sum().backward()  # every term active
    same = pids[:, None] == pids[None, :]
    s = scores.detach()
    weights_rows = torch.softmax((s / 0.015).masked_fill(~same, float("-inf")), dim=1)
    weights_cols = torch.softmax((s.t() / 0.015).masked_fill(~same, float("-inf")), dim=1)
    expected_positive_grad = -(weights_rows + weights_cols.t())
    assert torch.allclose(scores.grad[same], expected_positive_grad[same], atol=1e-5)


def test_huge_similarity_sums_are_capped_as_rde_caps_them():
    scores = torch.full((4, 4), 0.99, dtype=torch.float64)
    scores.fill_diagonal_(0.2)
    loss = tal(scores, torch.arange(4), tau=0.001, margin=1.0)  # exp(990) overflows: the sum is capped
    cap = 0.001 * math.log(TAL_SUM_CAP)
    assert loss.tolist() == pytest.approx([2 * (1.0 - 0.2 + cap)] * 4, rel=1e-6)
