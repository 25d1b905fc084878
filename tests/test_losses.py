"""Each loss against a plain float64 loop implementation of DESIGN.md's formula."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from personsearch.losses import cmpm_loss, id_loss, itc_loss, mlm_loss, sdm_loss


def _unit(v: np.ndarray) -> np.ndarray:
    return v / math.sqrt(float((v * v).sum()))


def _softmax(row: list[float]) -> list[float]:
    top = max(row)
    exps = [math.exp(x - top) for x in row]
    total = sum(exps)
    return [e / total for e in exps]


def _kl_rows(logits: list[list[float]], target: list[list[float]], eps: float) -> float:
    total = 0.0
    for row, q in zip(logits, target, strict=True):
        p = _softmax(row)
        total += sum(pj * (math.log(pj) - math.log(qj + eps)) for pj, qj in zip(p, q, strict=True))
    return total / len(logits)


def _reference_sdm(img, txt, pids, scale, image_ids=None, factor=0.3, eps=1e-8) -> float:
    n = len(pids)
    y = [[1.0 if pids[i] == pids[j] else 0.0 for j in range(n)] for i in range(n)]
    if image_ids is not None:
        for i in range(n):
            for j in range(n):
                m = 1.0 if image_ids[i] == image_ids[j] else 0.0
                y[i][j] = (y[i][j] - m) * factor + m
    q = [[y[i][j] / sum(y[i]) for j in range(n)] for i in range(n)]
    v = [_unit(x) for x in img]
    t = [_unit(x) for x in txt]
    i2t = [[scale * float(v[i] @ t[j]) for j in range(n)] for i in range(n)]
    t2i = [[scale * float(t[i] @ v[j]) for j in range(n)] for i in range(n)]
    return _kl_rows(i2t, q, eps) + _kl_rows(t2i, q, eps)


def _reference_cmpm(img, txt, pids, eps=1e-8) -> float:
    n = len(pids)
    y = [[1.0 if pids[i] == pids[j] else 0.0 for j in range(n)] for i in range(n)]
    q = [[y[i][j] / math.sqrt(sum(x * x for x in y[i])) for j in range(n)] for i in range(n)]
    i2t = [[float(img[i] @ _unit(txt[j])) for j in range(n)] for i in range(n)]
    t2i = [[float(txt[i] @ _unit(img[j])) for j in range(n)] for i in range(n)]
    return _kl_rows(i2t, q, eps) + _kl_rows(t2i, q, eps)


def _cross_entropy(row: list[float], target: int) -> float:
    return -math.log(_softmax(row)[target])


@pytest.fixture
def batch():
    rng = np.random.default_rng(3)
    img = rng.normal(size=(8, 16))
    txt = img * 0.5 + rng.normal(size=(8, 16))
    pids = [4, 4, 1, 7, 1, 4, 9, 7]  # repeated identities: ties in the label matrix
    image_ids = [0, 0, 1, 2, 3, 4, 5, 6]  # captions 0 and 1 describe the same image
    return img, txt, pids, image_ids


def _t(x) -> torch.Tensor:
    return torch.tensor(np.asarray(x), dtype=torch.float32)


def test_sdm_matches_reference(batch):
    img, txt, pids, _ = batch
    got = sdm_loss(_t(img), _t(txt), torch.tensor(pids), 50.0)
    assert got.item() == pytest.approx(_reference_sdm(img, txt, pids, 50.0), rel=1e-4, abs=1e-5)


def test_sdm_with_image_ids_normalises_rows(batch):
    img, txt, pids, image_ids = batch
    got = sdm_loss(_t(img), _t(txt), torch.tensor(pids), 50.0, image_ids=torch.tensor(image_ids), factor=0.3)
    want = _reference_sdm(img, txt, pids, 50.0, image_ids=image_ids, factor=0.3)
    assert got.item() == pytest.approx(want, rel=1e-4, abs=1e-5)
    # Rows and columns differ here: the column-normalised variant gives a different value.
    plain = _reference_sdm(img, txt, pids, 50.0)
    assert abs(want - plain) > 1e-3


def test_sdm_with_unique_image_ids_equals_plain(batch):
    img, txt, pids, _ = batch
    unique = torch.arange(len(pids))
    a = sdm_loss(_t(img), _t(txt), torch.tensor(pids), 50.0, image_ids=unique, factor=1.0)
    b = sdm_loss(_t(img), _t(txt), torch.tensor(pids), 50.0)
    assert a.item() == pytest.approx(b.item(), rel=1e-6)


def test_sdm_is_near_zero_for_perfect_alignment():
    feats = torch.eye(6)
    loss = sdm_loss(feats, feats, torch.arange(6), 50.0)
    assert abs(loss.item()) < 1e-6


def test_itc_matches_reference(batch):
    img, txt, _, _ = batch
    n = len(img)
    v = [_unit(x) for x in img]
    t = [_unit(x) for x in txt]
    logits = [[50.0 * float(v[i] @ t[j]) for j in range(n)] for i in range(n)]
    i_loss = sum(_cross_entropy(logits[i], i) for i in range(n)) / n
    t_loss = sum(_cross_entropy([logits[j][i] for j in range(n)], i) for i in range(n)) / n
    got = itc_loss(_t(img), _t(txt), 50.0)
    assert got.item() == pytest.approx((i_loss + t_loss) / 2, rel=1e-4)


def test_id_matches_reference():
    rng = np.random.default_rng(0)
    img_logits = rng.normal(size=(5, 11))
    txt_logits = rng.normal(size=(5, 11))
    pids = [3, 0, 10, 3, 7]
    want = (
        sum(
            _cross_entropy(list(img_logits[i]), pids[i]) + _cross_entropy(list(txt_logits[i]), pids[i])
            for i in range(5)
        )
        / 5
        / 2
    )
    got = id_loss(_t(img_logits), _t(txt_logits), torch.tensor(pids))
    assert got.item() == pytest.approx(want, rel=1e-5)


def test_mlm_ignores_unmasked_positions():
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(2, 6, 20))
    labels = np.zeros((2, 6), dtype=np.int64)
    labels[0, 2] = 5
    labels[1, 1] = 17
    labels[1, 4] = 3
    terms = [
        _cross_entropy(list(scores[b, t]), int(labels[b, t]))
        for b in range(2)
        for t in range(6)
        if labels[b, t] != 0
    ]
    got = mlm_loss(_t(scores), torch.tensor(labels))
    assert got.item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)


def test_mlm_without_masked_positions_is_zero_with_gradient():
    scores = torch.randn(2, 4, 10, requires_grad=True)
    loss = mlm_loss(scores, torch.zeros(2, 4, dtype=torch.long))
    assert loss.item() == 0.0
    loss.backward()
    assert scores.grad is not None and torch.all(scores.grad == 0)


def test_cmpm_matches_reference(batch):
    img, txt, pids, _ = batch
    got = cmpm_loss(_t(img) * 0.3, _t(txt) * 0.3, torch.tensor(pids))
    assert got.item() == pytest.approx(_reference_cmpm(img * 0.3, txt * 0.3, pids), rel=1e-4, abs=1e-5)


def test_losses_backpropagate(batch):
    img, txt, pids, image_ids = batch
    a = _t(img).requires_grad_()
    b = _t(txt).requires_grad_()
    total = (
        sdm_loss(a, b, torch.tensor(pids), 50.0, image_ids=torch.tensor(image_ids))
        + itc_loss(a, b, 50.0)
        + cmpm_loss(a, b, torch.tensor(pids))
    )
    total.backward()
    assert torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0
    assert torch.isfinite(b.grad).all() and b.grad.abs().sum() > 0
