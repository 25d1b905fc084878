"""Retrieval metrics: R@K, mAP and mINP, exact and without sorting the gallery.

Every query ranks the whole gallery by similarity, descending, ties broken by gallery order. The
rank of a true match ``j`` of a query is therefore

    1 + #{g : s_g > s_j} + #{g < j : s_g = s_j}

and a query has only a handful of true matches, so counting against each match score is far
cheaper than a full argsort of every row: two comparison passes per true match over the query's
row, in chunks of queries whose rows stay in cache. The equality pass only decides whether the
tie term can be non-zero; the tie term itself is computed for the (rare) rows that need it.
From the ranks: R@K = % of queries whose first match has rank <= K; AP = mean over the matches of
(matches up to it) / (its rank); INP = (number of matches) / (rank of the last match).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import numpy as np

from personsearch.errors import InputError

log = logging.getLogger(__name__)

STANDARD_KS = (1, 5, 10)
_CHUNK_ELEMENTS = 1 << 20  # similarity values per chunk (4 MiB of float32): stays in cache


def rank_metrics(
    similarity: Any,
    query_pids: Any,
    gallery_pids: Any,
    max_rank: int = 10,
    ks: Iterable[int] | None = None,
    chunk_size: int | None = None,
    unmatched: str = "exclude",
) -> dict[str, Any]:
    """R1 R5 R10 mAP mINP (percent) of ranking ``gallery`` for each query row of ``similarity``.

    ``similarity`` is [queries, gallery] (torch tensor or numpy array); pids are 1-D of matching
    lengths. Also returned: ``R<k>`` for every k in ``ks``, ``cmc`` (R@1..R@max_rank as a list),
    ``queries`` (in the denominators) and ``queries_without_match`` (no true match in the gallery).
    ``unmatched`` says what those queries do: ``exclude`` leaves them out (our default), ``miss``
    counts them as misses in R@K and 0 in AP/INP, as IRRA's R@K-only evaluator does.
    ``chunk_size`` (queries per chunk) only trades memory for speed; results do not depend on it.
    """
    sim = _similarity_array(similarity)
    num_queries, num_gallery = sim.shape
    q_pids = _pid_array(query_pids, "query_pids", num_queries)
    g_pids = _pid_array(gallery_pids, "gallery_pids", num_gallery)
    if isinstance(max_rank, bool) or not isinstance(max_rank, int | np.integer) or max_rank < 1:
        raise InputError(f"max_rank must be a positive integer, got {max_rank!r}")
    extra_ks = _check_ks(ks)
    if chunk_size is not None and (not isinstance(chunk_size, int | np.integer) or chunk_size < 1):
        raise InputError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    if unmatched not in ("exclude", "miss"):
        raise InputError(f"unmatched must be 'exclude' or 'miss', got {unmatched!r}")

    first, ap, inp = match_ranks_summary(sim, q_pids, g_pids, chunk_size)
    evaluated = len(first)
    missing = num_queries - evaluated
    if evaluated == 0:
        raise InputError(
            f"none of the {num_queries} queries has a true match among the {num_gallery} gallery items",
            hint="check that query_pids and gallery_pids use the same identity labels",
        )
    if missing:
        log.warning("%d of %d queries have no true match in the gallery; %s", missing, num_queries,
                    "counted as misses" if unmatched == "miss" else "left out")
    counted = num_queries if unmatched == "miss" else evaluated

    result: dict[str, Any] = {}
    for k in sorted(set(STANDARD_KS) | set(extra_ks)):
        result[f"R{k}"] = _percent(np.count_nonzero(first <= k), counted)
    result["mAP"] = float(ap.sum() / counted * 100.0)
    result["mINP"] = float(inp.sum() / counted * 100.0)
    hits = np.bincount(np.minimum(first, max_rank + 1) - 1, minlength=max_rank + 1)[:max_rank]
    result["cmc"] = [_percent(n, counted) for n in np.cumsum(hits)]
    result["queries"] = counted
    result["queries_without_match"] = missing
    return result


def match_ranks_summary(
    sim: np.ndarray, q_pids: np.ndarray, g_pids: np.ndarray, chunk_size: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per evaluated query: rank of the first true match, AP and INP (queries without a match dropped).

    Queries are processed grouped by their number of true matches (most first), so in a chunk
    the rows that have an m-th match form a prefix and each comparison pass is one contiguous slice.
    """
    num_queries, num_gallery = sim.shape
    _, codes = np.unique(np.concatenate([q_pids, g_pids]), return_inverse=True)
    codes = codes.reshape(-1)
    q_codes, g_codes = codes[:num_queries], codes[num_queries:]
    per_code = np.bincount(g_codes, minlength=int(codes.max()) + 1)
    starts = np.concatenate([[0], np.cumsum(per_code)[:-1]])
    gallery_by_code = np.argsort(g_codes, kind="stable")  # gallery order within each identity

    match_count = per_code[q_codes]
    order = np.argsort(-match_count, kind="stable")
    order = order[match_count[order] > 0]
    rows_per_chunk = chunk_size or max(1, _CHUNK_ELEMENTS // max(1, num_gallery))
    count_dtype = np.int16 if num_gallery < np.iinfo(np.int16).max else np.int32

    first = np.empty(len(order), np.int64)
    ap = np.empty(len(order), np.float64)
    inp = np.empty(len(order), np.float64)
    mask = np.empty((min(rows_per_chunk, len(order)), num_gallery), dtype=bool)
    for begin in range(0, len(order), rows_per_chunk):
        queries = order[begin : begin + rows_per_chunk]
        block = sim[queries]
        if np.isnan(block).any():
            row = int(queries[np.isnan(block).any(axis=1)][0])
            raise InputError(f"similarity row {row} contains NaN", hint="check the embeddings for NaN")
        counts = match_count[queries]
        ranks = np.full((len(queries), int(counts[0])), np.iinfo(np.int64).max, dtype=np.int64)
        for slot in range(int(counts[0])):
            n = int(np.count_nonzero(counts > slot))
            cols = gallery_by_code[starts[q_codes[queries[:n]]] + slot]
            rows = block[:n]
            scores = rows[np.arange(n), cols][:, None]
            buf = mask[:n]
            np.greater(rows, scores, out=buf)
            greater = np.add.reduce(buf.view(np.uint8), axis=1, dtype=count_dtype).astype(np.int64)
            np.greater_equal(rows, scores, out=buf)
            at_least = np.add.reduce(buf.view(np.uint8), axis=1, dtype=count_dtype).astype(np.int64)
            rank = greater + 1
            tied = np.flatnonzero(at_least - greater > 1)
            if len(tied):
                before = np.arange(num_gallery)[None, :] < cols[tied][:, None]
                rank[tied] += np.count_nonzero((rows[tied] == scores[tied]) & before, axis=1)
            ranks[:n, slot] = rank
        ranks.sort(axis=1)
        out = slice(begin, begin + len(queries))
        first[out] = ranks[:, 0]
        width = ranks.shape[1]
        position = np.arange(1, width + 1, dtype=np.float64)[None, :]
        valid = position <= counts[:, None]
        precision = np.where(valid, position / np.where(valid, ranks, 1), 0.0)
        ap[out] = precision.sum(axis=1) / counts
        inp[out] = counts / ranks[np.arange(len(queries)), counts - 1]
    return first, ap, inp


def _percent(count: int | np.integer, total: int) -> float:
    return float(count) * 100.0 / total


def _check_ks(ks: Iterable[int] | None) -> list[int]:
    if ks is None:
        return []
    values = list(ks)
    for k in values:
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise InputError(f"ks must hold positive integers, got {k!r}")
    return [int(k) for k in values]


def _to_numpy(value: Any) -> np.ndarray:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency, but metrics need only numpy
        torch = None
    if torch is not None and isinstance(value, torch.Tensor):
        value = value.detach()
        if value.is_floating_point() and value.element_size() < 4:
            value = value.float()
        return value.cpu().numpy()
    return np.asarray(value)


def _similarity_array(similarity: Any) -> np.ndarray:
    sim = _to_numpy(similarity)
    if sim.ndim != 2:
        raise InputError(f"similarity must be a 2-D [queries, gallery] matrix, got shape {tuple(sim.shape)}")
    if sim.shape[0] == 0 or sim.shape[1] == 0:
        raise InputError(f"similarity is empty (shape {tuple(sim.shape)}); need at least one query and item")
    if sim.dtype == np.float16:
        sim = sim.astype(np.float32)
    elif sim.dtype.kind in "iub":
        sim = sim.astype(np.float64)  # exact for integers below 2**53
    elif sim.dtype.kind != "f":
        raise InputError(f"similarity must be numeric, got dtype {sim.dtype}")
    return sim


def _pid_array(pids: Any, name: str, expected: int) -> np.ndarray:
    array = _to_numpy(pids)
    if array.ndim != 1 or len(array) != expected:
        raise InputError(f"{name} must be 1-D with {expected} entries, got shape {tuple(array.shape)}")
    return array
