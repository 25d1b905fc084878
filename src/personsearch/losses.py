"""The matching and auxiliary objectives of IRRA: SDM, ITC, ID, MLM and CMPM; RDE's TAL; and the
optional multi-label attribute loss for datasets that record per-image attributes.

Each follows DESIGN.md's formulas; feature vectors are L2-normalised inside a loss unless the
formula says otherwise. All functions take batched tensors and return a scalar tensor, except RDE's
``tal``, which returns one loss per pair (RDE weights each pair by its clean/noisy division).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["TAL_SUM_CAP", "attr_loss", "cmpm_loss", "id_loss", "itc_loss", "mlm_loss", "sdm_loss", "tal"]


def _same(values: Tensor) -> Tensor:
    """[B, B] float matrix of 1 where values_i == values_j."""
    flat = values.reshape(-1)
    return (flat[:, None] == flat[None, :]).float()


def _distribution_matching(logits: Tensor, target: Tensor, eps: float) -> Tensor:
    """mean_i sum_j p_ij (log p_ij - log(q_ij + eps)) with p = softmax over rows of ``logits``."""
    log_p = F.log_softmax(logits, dim=1)
    return (log_p.exp() * (log_p - torch.log(target + eps))).sum(dim=1).mean()


def sdm_loss(
    image_feats: Tensor,
    text_feats: Tensor,
    pids: Tensor,
    logit_scale: float | Tensor,
    image_ids: Tensor | None = None,
    factor: float = 0.3,
    eps: float = 1e-8,
) -> Tensor:
    """Similarity distribution matching: KL from the identity-match distribution, both directions.

    With ``image_ids`` the soft labels are ``(y - m) * factor + m`` (m: same image) and each row is
    normalised by its own sum (IRRA divides by column sums, identical only without image ids).
    """
    labels = _same(pids)
    if image_ids is not None:
        same_image = _same(image_ids)
        labels = (labels - same_image) * factor + same_image
    target = labels / labels.sum(dim=1, keepdim=True)
    image_norm = F.normalize(image_feats.float(), dim=1)
    text_norm = F.normalize(text_feats.float(), dim=1)
    i2t = logit_scale * image_norm @ text_norm.t()
    return _distribution_matching(i2t, target, eps) + _distribution_matching(i2t.t(), target, eps)


def itc_loss(image_feats: Tensor, text_feats: Tensor, logit_scale: float | Tensor) -> Tensor:
    """Symmetric InfoNCE with the matching pair on the diagonal, averaged over both directions."""
    image_norm = F.normalize(image_feats.float(), dim=1)
    text_norm = F.normalize(text_feats.float(), dim=1)
    logits = logit_scale * image_norm @ text_norm.t()
    targets = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets)) / 2


def id_loss(image_logits: Tensor, text_logits: Tensor, pids: Tensor) -> Tensor:
    """Identity classification of both modalities through one shared classifier, averaged."""
    pids = pids.reshape(-1).long()
    return (F.cross_entropy(image_logits.float(), pids) + F.cross_entropy(text_logits.float(), pids)) / 2


def attr_loss(image_logits: Tensor, text_logits: Tensor, targets: Tensor) -> Tensor:
    """Multi-label attribute classification of both modalities through one shared head: binary
    cross-entropy against the image's multi-hot ``targets`` [B, A], averaged over labels and
    samples, then over the two sides."""
    targets = targets.float()
    image = F.binary_cross_entropy_with_logits(image_logits.float(), targets)
    text = F.binary_cross_entropy_with_logits(text_logits.float(), targets)
    return (image + text) / 2


def mlm_loss(scores: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy over the vocabulary at masked positions (label 0 = not masked, ignored).

    ``scores`` is [..., V] and ``labels`` the matching [...]. With no masked position at all the
    loss is an exact zero that still carries a gradient path (instead of NaN).
    """
    flat_scores = scores.reshape(-1, scores.shape[-1]).float()
    flat_labels = labels.reshape(-1).long()
    if not bool((flat_labels != 0).any()):
        return flat_scores.sum() * 0.0
    return F.cross_entropy(flat_scores, flat_labels, ignore_index=0)


def cmpm_loss(image_feats: Tensor, text_feats: Tensor, pids: Tensor, eps: float = 1e-8) -> Tensor:
    """Cross-modal projection matching: raw features projected on the other side's unit vectors,
    matched to q_i = y_i / ||y_i||_2 in both directions."""
    labels = _same(pids)
    target = labels / labels.norm(dim=1, keepdim=True)
    image_feats = image_feats.float()
    text_feats = text_feats.float()
    image_proj_text = image_feats @ F.normalize(text_feats, dim=1).t()
    text_proj_image = text_feats @ F.normalize(image_feats, dim=1).t()
    return _distribution_matching(image_proj_text, target, eps) + _distribution_matching(
        text_proj_image, target, eps
    )


#: The largest sum of negative exponentials TAL takes the log of (RDE clamps it there).
TAL_SUM_CAP = 1e36


def tal(scores: Tensor, pids: Tensor, tau: float = 0.015, margin: float = 0.1) -> Tensor:
    """RDE's triplet alignment loss per pair [B], both directions summed (RDE, CVPR 2024).

    ``scores[i, j]``: cosine similarity of text i and image j. For each anchor, the positive term
    is the similarity to its own identity's candidates weighted by a softmax over them at
    temperature ``tau`` (weights held constant), the negative term ``tau * log sum exp(s / tau)``
    over the other identities (a smooth hardest negative; the sum capped at ``TAL_SUM_CAP``):
    ``relu(margin - positive + negative)``. An anchor without negatives costs 0.
    """
    scores = scores.float()
    same = pids.reshape(-1, 1) == pids.reshape(1, -1)
    cap = tau * torch.log(torch.tensor(TAL_SUM_CAP, dtype=scores.dtype, device=scores.device))

    def one_side(s: Tensor) -> Tensor:
        scaled = s / tau
        weights = torch.softmax(scaled.masked_fill(~same, float("-inf")), dim=1).detach()
        positive = (weights * s).sum(dim=1)
        # A row without negatives is filled with zeros for the log-sum-exp and then dropped, so its
        # gradient stays 0 instead of the NaN of log(0).
        has_negative = (~same).any(dim=1)
        negatives = scaled.masked_fill(same, float("-inf")).masked_fill(~has_negative[:, None], 0.0)
        negative = torch.minimum(tau * torch.logsumexp(negatives, dim=1), cap)
        loss = (margin - positive + negative).clamp(min=0)
        return torch.where(has_negative, loss, torch.zeros_like(loss))

    return one_side(scores) + one_side(scores.t())
