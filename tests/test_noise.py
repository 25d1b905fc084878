"""Noisy correspondences (RDE's protocol): the share, the record, foreign captions only, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from personsearch.data.noise import swap_captions


def _pids(ids: int = 100, per_id: int = 10) -> np.ndarray:
    return np.repeat(np.arange(ids), per_id)


@pytest.mark.parametrize("rate", [0.2, 0.3, 0.5, 0.8])
def test_the_share_of_swapped_pairs_and_every_one_carries_another_identitys_caption(rate):
    pids = _pids()
    swapped = swap_captions(pids, rate, seed=0)
    assert swapped.count == int(rate * len(pids))
    noisy = swapped.noisy
    assert np.all(pids[swapped.source[noisy]] != pids[noisy])
    assert np.array_equal(swapped.source[~noisy], np.flatnonzero(~noisy))
    assert len(np.unique(swapped.source)) == len(pids)  # a permutation: every caption used once


def test_the_swap_is_a_function_of_the_seed():
    pids = _pids()
    assert np.array_equal(swap_captions(pids, 0.3, 1).source, swap_captions(pids, 0.3, 1).source)
    assert not np.array_equal(swap_captions(pids, 0.3, 1).source, swap_captions(pids, 0.3, 2).source)


def test_no_noise_and_hopeless_cases_leave_every_pair_clean():
    assert swap_captions(_pids(), 0.0, 0).count == 0
    assert swap_captions(np.zeros(50, dtype=int), 0.5, 0).count == 0  # one identity: nothing foreign
    few = swap_captions(np.array([0, 0, 0, 0, 0, 0, 0, 0, 0, 1]), 0.9, 0)
    assert np.all(np.array([0] * 9 + [1])[few.source[few.noisy]] != np.array([0] * 9 + [1])[few.noisy])
    with pytest.raises(ValueError, match="noise rate"):
        swap_captions(_pids(), 1.0, 0)
