"""Noisy correspondences for testing noise-robust training (RDE's protocol): a share of the training
pairs get another pair's caption.

``int(rate * N)`` pairs are drawn at random and their captions are shuffled among them, as RDE's
``inject_noisy_correspondence`` does, with one difference: the shuffle is rearranged so that no
caption stays with its own identity where another identity's is available (in RDE's a caption may
land on its own pair or on a pair of the same person, and still count as noisy). So every pair
recorded as noisy really describes someone else, and the record is exact; a pair for which no trade
finds a foreign caption (a draw of nearly one identity) keeps its own and counts as clean.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["NoisyPairs", "swap_captions"]


@dataclass(frozen=True)
class NoisyPairs:
    """``source[i]``: the pair whose caption pair i now carries (i itself when clean)."""

    source: np.ndarray  # int64 [N]

    @property
    def noisy(self) -> np.ndarray:
        return self.source != np.arange(len(self.source))

    @property
    def count(self) -> int:
        return int(self.noisy.sum())


def swap_captions(pids: Sequence[int], rate: float, seed: int) -> NoisyPairs:
    """Which caption each of N pairs (their identities ``pids``) carries after ``rate`` of them are
    given another identity's caption. Deterministic in ``seed``."""
    pids = np.asarray(pids, dtype=np.int64)
    count = len(pids)
    if not 0 <= rate < 1:
        raise ValueError(f"the noise rate must be in [0, 1), got {rate}")
    source = np.arange(count, dtype=np.int64)
    chosen_count = int(rate * count)
    if chosen_count < 2 or len(np.unique(pids)) < 2:
        return NoisyPairs(source)
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(count, size=chosen_count, replace=False))
    order = rng.permutation(chosen)
    # Repair the shuffle: a pair given a caption of its own identity trades with another chosen pair
    # when the trade leaves both with a foreign caption (a few passes settle every case but the
    # hopeless ones, e.g. a chosen set that is nearly all one identity).
    for _ in range(3):
        same = np.flatnonzero(pids[order] == pids[chosen])
        if same.size == 0:
            break
        for position in same:
            if pids[order[position]] != pids[chosen[position]]:
                continue  # already fixed by an earlier trade
            for other in rng.permutation(chosen_count):
                if (pids[order[other]] != pids[chosen[position]]
                        and pids[order[position]] != pids[chosen[other]]):
                    order[position], order[other] = order[other], order[position]
                    break
    source[chosen] = order
    stuck = pids[source] == pids  # noisy by index but the same person: counted clean, as it is
    source[stuck] = np.arange(count)[stuck]
    return NoisyPairs(source)
