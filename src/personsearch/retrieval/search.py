"""Exact top-k cosine search over float16 gallery shards, chunked so memory stays bounded.

Scores are float32 dot products of the stored float16 rows with the L2-normalised float32
queries. Two kernels compute them, chosen by the number of queries:

- few queries (``<= HALF_PATH_MAX_QUERIES``): one float16 matrix-vector pass over the whole
  memory-mapped shard (memory-bandwidth bound, no conversion copy), which only *nominates*
  candidates; the candidates are then re-scored exactly in float32. The nomination is proven
  complete: every row left out scored at most the last candidate's approximate score, so if that
  plus ``HALF_ERROR_MARGIN`` (far above the float16 kernel's error, measured <= 1e-4 for unit
  vectors) is still below the k-th exact score, no left-out row can belong to the top k. When the
  proof fails (heavy near-ties, duplicates) the query falls back to the float32 kernel.
- many queries: the shard is converted to float32 in cache-sized chunks, multiplied by all
  queries at once, and each chunk's top k is merged into a running top k.

Ties are broken by row order (the lower row ranks first), as the evaluation metrics do.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

HALF_PATH_MAX_QUERIES = 8
HALF_ERROR_MARGIN = 2e-3
HALF_EXTRA_CANDIDATES = 64
CHUNK_ROWS = 8192


def stable_topk(scores: torch.Tensor, rows: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top ``k`` of each line of ``scores`` [Q, M], best first; among equal scores the smaller row.

    ``rows`` [Q, M] (or [M], shared by every query) must be ascending along each line.
    """
    q, m = scores.shape
    k = min(k, m)
    if rows.dim() == 1:
        rows = rows.unsqueeze(0).expand(q, m)
    if k == 0:
        return scores[:, :0], rows[:, :0]
    if k < m:
        # One top-(k+1) pass; only lines whose k-th and (k+1)-th scores tie need the slower
        # pass that picks, among the tied entries, those with the lowest rows.
        values, positions = torch.topk(scores, k + 1, dim=1, sorted=True)
        positions = torch.sort(positions[:, :k], dim=1).values
        tied = (values[:, k] == values[:, k - 1]).nonzero()[:, 0]
        if tied.numel():
            sub = scores[tied]
            kth = values[tied, k - 1 : k]
            above = sub > kth
            at = sub == kth
            keep = above | (at & (torch.cumsum(at, dim=1) <= k - above.sum(dim=1, keepdim=True)))
            positions[tied] = keep.nonzero()[:, 1].view(tied.numel(), k)
        # Positions are ascending (= row order), so the stable sort below breaks ties by row.
        scores = scores.gather(1, positions)
        rows = rows.gather(1, positions)
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    return scores.gather(1, order), rows.gather(1, order)


def merge_topk(
    best: tuple[torch.Tensor, torch.Tensor] | None, new: tuple[torch.Tensor, torch.Tensor], k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge two top-k lists (scores, rows) into one, ties by row order."""
    if best is None:
        return new
    scores = torch.cat([best[0], new[0]], dim=1)
    rows = torch.cat([best[1], new[1]], dim=1)
    order = torch.sort(rows, dim=1, stable=True).indices
    return stable_topk(scores.gather(1, order), rows.gather(1, order), k)


def _exact_shard_topk(
    shard: torch.Tensor, queries: torch.Tensor, k: int, offset: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 kernel: convert ``CHUNK_ROWS`` rows at a time, score all queries, keep the top k."""
    best = None
    for start in range(0, shard.shape[0], CHUNK_ROWS):
        chunk = shard[start : start + CHUNK_ROWS].float()
        scores = queries @ chunk.T
        rows = torch.arange(offset + start, offset + start + chunk.shape[0], dtype=torch.int64)
        best = merge_topk(best, stable_topk(scores, rows, k), k)
    assert best is not None
    return best


def _half_shard_topk(
    shard: torch.Tensor, queries: torch.Tensor, k: int, offset: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Float16 nomination + exact float32 re-scoring, falling back per query when not provable."""
    n = shard.shape[0]
    approx = (queries.half() @ shard.T).float()
    n_cand = min(n, k + HALF_EXTRA_CANDIDATES)
    cand_scores, cand = torch.topk(approx, n_cand, dim=1, sorted=True)
    out_scores, out_rows = [], []
    for i in range(queries.shape[0]):
        idx = torch.sort(cand[i]).values
        exact = shard[idx].float() @ queries[i]
        scores, local = stable_topk(exact.unsqueeze(0), idx.unsqueeze(0), k)
        if n_cand < n and not float(cand_scores[i, -1]) + HALF_ERROR_MARGIN < float(scores[0, -1]):
            scores, local = _exact_shard_topk(shard, queries[i : i + 1], k, 0)
        out_scores.append(scores)
        out_rows.append(local + offset)
    return torch.cat(out_scores), torch.cat(out_rows)


def prepare_queries(queries: torch.Tensor | np.ndarray, dim: int) -> torch.Tensor:
    """Validate and L2-normalise queries to float32 [Q, D]; raises ValueError with the reason."""
    q = torch.as_tensor(np.asarray(queries) if not isinstance(queries, torch.Tensor) else queries)
    q = q.detach().to("cpu", torch.float32)
    if q.dim() == 1:
        q = q.unsqueeze(0)
    if q.dim() != 2:
        raise ValueError(f"queries must have shape [Q, {dim}], got {list(q.shape)}")
    if q.shape[1] != dim:
        raise ValueError(f"query embeddings have dimension {q.shape[1]} but the index holds dimension {dim}")
    if not torch.isfinite(q).all():
        bad = int((~torch.isfinite(q).all(dim=1)).nonzero()[0, 0])
        raise ValueError(f"query {bad} contains NaN or infinite values")
    norms = q.norm(dim=1, keepdim=True)
    if (norms == 0).any():
        bad = int((norms[:, 0] == 0).nonzero()[0, 0])
        raise ValueError(f"query {bad} is the zero vector and has no direction to search")
    return q / norms


def search_shards(
    shards: Sequence[torch.Tensor],
    queries: torch.Tensor,
    k: int,
    exclude: Sequence[torch.Tensor | None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k over float16 ``shards`` (consecutive row ranges) for normalised float32 queries.

    ``exclude[i]``, when given, lists shard-local rows of shard ``i`` that must never be returned
    (superseded entries); the returned count is then min(k, number of searchable rows).
    Returns (scores [Q, k'] float32, rows [Q, k'] int64), best first.
    """
    best = None
    offset = 0
    for i, shard in enumerate(shards):
        n = shard.shape[0]
        skip = exclude[i] if exclude is not None else None
        if n == 0 or (skip is not None and skip.numel() == n):
            offset += n
            continue
        if skip is not None and skip.numel():
            keep = torch.ones(n, dtype=torch.bool)
            keep[skip] = False
            kept = keep.nonzero()[:, 0]
            part_scores, part_local = _exact_shard_topk(shard[kept], queries, k, 0)
            part = (part_scores, kept[part_local] + offset)
        elif queries.shape[0] <= HALF_PATH_MAX_QUERIES:
            part = _half_shard_topk(shard, queries, k, offset)
        else:
            part = _exact_shard_topk(shard, queries, k, offset)
        best = merge_topk(best, part, k)
        offset += n
    if best is None:
        empty = torch.empty(queries.shape[0], 0)
        return empty, empty.to(torch.int64)
    return best
