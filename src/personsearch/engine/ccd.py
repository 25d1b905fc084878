"""Consensus clean-pair division (CCD) of RDE (Qin et al., CVPR 2024): which training pairs to trust.

At the start of an epoch every training pair's loss is computed twice, under the global embedding
and under the token-selection embedding (no gradients). Each set of losses is min-max normalised
and fitted with a two-component Gaussian mixture; a pair is clean under an embedding when the
posterior of the lower-mean component exceeds 0.5 (when every pair looks clean, the least likely
1 % are called noisy instead: RDE's rule, from NCR). A pair both embeddings call clean is kept
(weight 1), one both call noisy is dropped (0), and a disagreement is settled by a coin.

Everything random here is a function of (seed, epoch): the mixture's initialisation and the coins,
so a resumed run divides its pairs exactly as the uninterrupted one.

The mixture is scikit-learn's ``GaussianMixture`` with RDE's parameters (the ``[rde]`` extra).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from personsearch.errors import InputError

__all__ = ["CleanDivision", "FAST_FIT", "THOROUGH_FIT", "clean_probability", "consensus", "divide_pairs",
           "min_max", "noise_detection", "split_clean"]

#: RDE's mixture parameters: the usual fit, and the closer one it uses on RSTPReid or above 40 % noise.
FAST_FIT = {"max_iter": 10, "tol": 1e-2, "reg_covar": 5e-4}
THOROUGH_FIT = {"max_iter": 100, "tol": 1e-4, "reg_covar": 1e-6}


@dataclass(frozen=True)
class CleanDivision:
    """One epoch's division: ``weights`` [N] (1.0 clean, 0.0 noisy) and what led to it."""

    weights: np.ndarray
    clean_a: np.ndarray  # bool [N]: clean under the global embedding's losses
    clean_b: np.ndarray  # bool [N]: clean under the token-selection embedding's losses
    disagreed: int

    @property
    def kept(self) -> int:
        return int(self.weights.sum())


def min_max(losses: np.ndarray) -> np.ndarray:
    """(x - min) / (max - min); all zeros when every loss is the same."""
    losses = np.asarray(losses, dtype=np.float64)
    span = losses.max() - losses.min()
    return (losses - losses.min()) / span if span > 0 else np.zeros_like(losses)


def clean_probability(losses: np.ndarray, seed: int, thorough: bool = False) -> np.ndarray:
    """The posterior of the lower-mean component of a two-component Gaussian mixture fitted to the
    min-max normalised ``losses`` [N] (RDE's parameters; ``seed`` fixes its initialisation)."""
    try:
        from sklearn.mixture import GaussianMixture
    except ImportError:
        raise InputError("train.ccd needs scikit-learn, which is not installed",
                         hint="pip install 'personsearch[rde]'") from None
    values = min_max(losses).reshape(-1, 1)
    if values.shape[0] < 2:
        return np.ones(values.shape[0])
    mixture = GaussianMixture(n_components=2, random_state=seed, **(THOROUGH_FIT if thorough else FAST_FIT))
    mixture.fit(values)
    return mixture.predict_proba(values)[:, int(np.argmin(mixture.means_[:, 0]))]


def split_clean(probability: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Clean where the probability exceeds ``threshold``; when every pair does, the threshold
    becomes the 1st percentile's probability (the ``len // 100``-th smallest), as RDE does."""
    probability = np.asarray(probability, dtype=np.float64)
    if probability.size and probability.min() > threshold:
        threshold = float(np.sort(probability)[len(probability) // 100])
    return probability > threshold


def consensus(clean_a: np.ndarray, clean_b: np.ndarray, generator: np.random.Generator) -> np.ndarray:
    """1.0 where both say clean, 0.0 where both say noisy, a fair coin where they disagree."""
    votes = clean_a.astype(np.int64) + clean_b.astype(np.int64)
    split = votes == 1
    votes[split] += generator.integers(0, 2, size=int(split.sum()))
    return (votes > 1).astype(np.float32)


def divide_pairs(losses_a: np.ndarray, losses_b: np.ndarray, seed: int, epoch: int,
                 thorough: bool = False) -> CleanDivision:
    """CCD over per-pair losses [N] under the two embeddings, reproducible from (seed, epoch)."""
    losses_a, losses_b = np.asarray(losses_a, dtype=np.float64), np.asarray(losses_b, dtype=np.float64)
    if losses_a.shape != losses_b.shape or losses_a.ndim != 1:
        raise ValueError(f"losses of shapes {losses_a.shape} and {losses_b.shape}: expected two [N] arrays")
    if not (np.isfinite(losses_a).all() and np.isfinite(losses_b).all()):
        raise ValueError("a per-pair loss is not finite: the division cannot be fitted")
    streams = np.random.SeedSequence([int(seed), int(epoch)]).spawn(3)
    mixture_seed_a, mixture_seed_b = (int(s.generate_state(1)[0]) for s in streams[:2])
    clean_a = split_clean(clean_probability(losses_a, mixture_seed_a, thorough))
    clean_b = split_clean(clean_probability(losses_b, mixture_seed_b, thorough))
    weights = consensus(clean_a, clean_b, np.random.default_rng(streams[2]))
    return CleanDivision(weights, clean_a, clean_b, int((clean_a != clean_b).sum()))


def noise_detection(weights: np.ndarray, noisy: np.ndarray) -> tuple[float, float]:
    """(precision, recall) of the pairs called noisy (weight 0) against the known noisy pairs."""
    called = np.asarray(weights) == 0
    noisy = np.asarray(noisy, dtype=bool)
    hits = int((called & noisy).sum())
    precision = hits / int(called.sum()) if called.any() else 1.0
    recall = hits / int(noisy.sum()) if noisy.any() else 1.0
    return precision, recall
