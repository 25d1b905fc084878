"""rank_metrics against a plain per-query implementation written out with Python loops."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from personsearch.errors import InputError
from personsearch.metrics import rank_metrics


def plain_metrics(sim: np.ndarray, q_pids, g_pids, ks=(1, 5, 10), max_rank: int = 10) -> dict:
    """Sort each row (descending score, then ascending gallery index) and walk it."""
    hits = {k: 0 for k in ks}
    cmc = [0] * max_rank
    aps, inps = [], []
    for q in range(sim.shape[0]):
        order = sorted(range(sim.shape[1]), key=lambda g, q=q: (-float(sim[q, g]), g))
        flags = [g_pids[g] == q_pids[q] for g in order]
        if not any(flags):
            continue
        match_ranks = [i + 1 for i, f in enumerate(flags) if f]
        for k in ks:
            hits[k] += match_ranks[0] <= k
        for k in range(max_rank):
            cmc[k] += match_ranks[0] <= k + 1
        aps.append(sum((i + 1) / r for i, r in enumerate(match_ranks)) / len(match_ranks))
        inps.append(len(match_ranks) / match_ranks[-1])
    n = len(aps)
    out = {f"R{k}": 100.0 * hits[k] / n for k in ks}
    out.update(
        mAP=100.0 * sum(aps) / n, mINP=100.0 * sum(inps) / n, queries=n, cmc=[100.0 * c / n for c in cmc]
    )
    return out


def assert_same(ours: dict, ref: dict) -> None:
    for key, value in ref.items():
        if key == "cmc":
            assert ours[key] == pytest.approx(value, abs=1e-9)
        else:
            assert ours[key] == pytest.approx(value, abs=1e-9), key


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_scores_match_plain(seed):
    rng = np.random.default_rng(seed)
    g_pids = rng.integers(0, 12, 60)
    q_pids = rng.integers(0, 12, 45)
    sim = rng.standard_normal((45, 60)).astype(np.float32)
    ours = rank_metrics(sim, q_pids, g_pids)
    ref = plain_metrics(sim, q_pids, g_pids)
    assert_same(ours, ref)
    assert ours["queries"] + ours["queries_without_match"] == 45


def test_heavy_ties_follow_gallery_order_at_every_chunk_size():
    rng = np.random.default_rng(3)
    g_pids = rng.integers(0, 5, 40)
    q_pids = rng.integers(0, 5, 33)
    sim = rng.integers(-2, 3, (33, 40)).astype(np.float32)  # five distinct values: ties everywhere
    ref = plain_metrics(sim, q_pids, g_pids, ks=(1, 2, 3, 5, 10))
    for chunk in (1, 2, 7, 32, 33, 100):
        assert_same(rank_metrics(sim, q_pids, g_pids, ks=(2, 3), chunk_size=chunk), ref)


def test_constant_scores_rank_by_gallery_index():
    g_pids = np.array([3, 1, 2, 1, 3])
    sim = np.zeros((2, 5), np.float32)
    out = rank_metrics(sim, np.array([1, 3]), g_pids)
    # query pid 1: matches at positions 2 and 4 -> AP (1/2 + 2/4)/2; pid 3: positions 1, 5 -> (1 + 2/5)/2
    assert out["R1"] == 50.0
    assert out["mAP"] == pytest.approx(100 * ((0.5 + 0.5) / 2 + (1 + 0.4) / 2) / 2)
    assert out["mINP"] == pytest.approx(100 * (2 / 4 + 2 / 5) / 2)


def test_signed_zero_and_infinities_are_ordinary_scores():
    sim = np.array([[0.0, -0.0, np.inf, -np.inf, 0.0]], np.float32)
    g_pids = np.array([0, 1, 0, 1, 1])
    assert_same(rank_metrics(sim, np.array([1]), g_pids), plain_metrics(sim, [1], g_pids))


def test_single_all_and_last_true_match():
    rng = np.random.default_rng(4)
    sim = rng.standard_normal((3, 8)).astype(np.float32)
    g_pids = np.array([0, 1, 1, 1, 1, 1, 1, 1])
    sim[2, 0] = sim[2].min() - 1  # the single match of query 2 ranks last
    q_pids = np.array([0, 1, 0])
    ours = rank_metrics(sim, q_pids, g_pids)
    assert_same(ours, plain_metrics(sim, q_pids, g_pids))
    all_match = rank_metrics(sim, np.array([7, 7, 7]), np.full(8, 7))
    assert all_match["R1"] == 100.0 and all_match["mAP"] == 100.0 and all_match["mINP"] == 100.0
    last = rank_metrics(sim[2:], q_pids[2:], g_pids)
    assert last["mINP"] == pytest.approx(100 / 8) and last["R5"] == 0.0


def test_queries_without_match_are_counted_and_left_out():
    rng = np.random.default_rng(5)
    sim = rng.standard_normal((6, 10)).astype(np.float32)
    g_pids = np.arange(10) % 3
    q_pids = np.array([0, 9, 1, 9, 2, 8])
    out = rank_metrics(sim, q_pids, g_pids)
    assert out["queries"] == 3 and out["queries_without_match"] == 3
    keep = [0, 2, 4]
    assert_same(out, plain_metrics(sim[keep], q_pids[keep], g_pids))
    with pytest.raises(InputError, match="none of the 2 queries"):
        rank_metrics(sim[:2], np.array([9, 9]), g_pids)


def test_cmc_every_rank_and_torch_inputs():
    gen = torch.Generator().manual_seed(6)
    sim = torch.randn(30, 50, generator=gen)
    q_pids = torch.randint(0, 8, (30,), generator=gen)
    g_pids = torch.randint(0, 8, (50,), generator=gen)
    ours = rank_metrics(sim.to(torch.bfloat16), q_pids, g_pids, max_rank=20)
    ref = plain_metrics(sim.to(torch.bfloat16).float().numpy(), q_pids.tolist(), g_pids.tolist(), max_rank=20)
    assert len(ours["cmc"]) == 20
    assert_same(ours, ref)
    assert ours["cmc"][0] == ours["R1"] and ours["cmc"][9] == ours["R10"]


def test_string_pids_and_float64_scores():
    rng = np.random.default_rng(7)
    sim = rng.standard_normal((9, 12))
    g_pids = np.array(list("abcabcabcabd"))
    q_pids = np.array(list("abcdabcdz"))
    assert_same(rank_metrics(sim, q_pids, g_pids), plain_metrics(sim, q_pids, g_pids))


@pytest.mark.parametrize(
    ("sim", "q", "g", "message"),
    [
        (np.zeros(4), [0], [0], "2-D"),
        (np.zeros((2, 3)), [0], [0, 1, 2], "query_pids must be 1-D with 2"),
        (np.zeros((2, 3)), [0, 1], [0, 1], "gallery_pids must be 1-D with 3"),
        (np.zeros((0, 3)), [], [0, 1, 2], "empty"),
        (np.array([[0.0, np.nan]]), [0], [0, 1], "row 0 contains NaN"),
    ],
)
def test_bad_input_is_named(sim, q, g, message):
    with pytest.raises(InputError, match=message):
        rank_metrics(sim, np.array(q), np.array(g))


def test_bad_options_are_named():
    sim, pids = np.zeros((2, 2)), np.array([0, 1])
    with pytest.raises(InputError, match="max_rank"):
        rank_metrics(sim, pids, pids, max_rank=0)
    with pytest.raises(InputError, match="ks"):
        rank_metrics(sim, pids, pids, ks=[0])
    with pytest.raises(InputError, match="chunk_size"):
        rank_metrics(sim, pids, pids, chunk_size=0)
