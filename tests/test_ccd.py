"""RDE's consensus clean-pair division: a mixture that clearly separates finds the noisy pairs, the
all-clean fallback, the consensus and coin rule, RDE's mixture parameters, and determinism in
(seed, epoch)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("sklearn", reason="the [rde] extra (scikit-learn) is not installed")

from personsearch.engine import ccd  # noqa: E402
from personsearch.engine.ccd import (  # noqa: E402
    FAST_FIT,
    THOROUGH_FIT,
    consensus,
    divide_pairs,
    min_max,
    noise_detection,
    split_clean,
)


def _losses(seed: int, clean: int = 900, noisy: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Clean pairs with low losses, noisy ones (the last ``noisy``) with high losses."""
    rng = np.random.default_rng(seed)
    losses = np.concatenate([rng.normal(0.2, 0.05, clean), rng.normal(1.5, 0.2, noisy)])
    truth = np.zeros(clean + noisy, dtype=bool)
    truth[clean:] = True
    order = rng.permutation(clean + noisy)
    return losses[order], truth[order]


@pytest.mark.parametrize("thorough", [False, True])
def test_a_clearly_separated_mixture_finds_the_noisy_pairs(thorough):
    losses_a, truth = _losses(0)
    losses_b = losses_a * 1.1 + 0.01  # the second embedding agrees
    division = divide_pairs(losses_a, losses_b, seed=0, epoch=1, thorough=thorough)
    precision, recall = noise_detection(division.weights, truth)
    assert precision >= 0.98 and recall >= 0.98
    assert division.disagreed <= 5 and division.kept == pytest.approx(900, abs=10)


def test_when_every_pair_looks_clean_the_least_likely_percent_is_called_noisy():
    probability = np.linspace(0.6, 0.99, 1000)[::-1].copy()
    clean = split_clean(probability)
    threshold = np.sort(probability)[1000 // 100]
    assert (~clean).sum() == 11  # the 10 below the 10th smallest and the 10th itself (not above it)
    assert np.array_equal(clean, probability > threshold)
    assert np.array_equal(split_clean(np.array([0.2, 0.7, 0.9])), np.array([False, True, True]))


def test_consensus_keeps_agreement_and_tosses_a_coin_on_disagreement():
    a = np.array([True, True, False, False] + [True] * 500)
    b = np.array([True, False, True, False] + [False] * 500)
    weights = consensus(a, b, np.random.default_rng(3))
    assert weights[0] == 1.0 and weights[3] == 0.0
    coins = weights[4:]
    assert 200 < coins.sum() < 300  # a fair coin over 500 disagreements
    assert np.array_equal(weights, consensus(a, b, np.random.default_rng(3)))
    assert set(np.unique(weights)) <= {0.0, 1.0}


def test_the_division_is_a_function_of_seed_and_epoch():
    losses_a, _ = _losses(1)
    losses_b, _ = _losses(2)  # another order: many disagreements, so coins matter
    first = divide_pairs(losses_a, losses_b, seed=7, epoch=3)
    again = divide_pairs(losses_a, losses_b, seed=7, epoch=3)
    assert np.array_equal(first.weights, again.weights)
    assert first.disagreed > 50
    other_epoch = divide_pairs(losses_a, losses_b, seed=7, epoch=4)
    assert not np.array_equal(first.weights, other_epoch.weights)


def test_rdes_mixture_parameters_are_used(monkeypatch):
    from sklearn import mixture

    made = []
    real = mixture.GaussianMixture

    def recording(**kwargs):
        made.append(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(mixture, "GaussianMixture", recording)
    losses, _ = _losses(4)
    ccd.clean_probability(losses, seed=1)
    ccd.clean_probability(losses, seed=1, thorough=True)
    assert made[0] == {"n_components": 2, "random_state": 1, **FAST_FIT}
    assert made[1] == {"n_components": 2, "random_state": 1, **THOROUGH_FIT}
    assert FAST_FIT == {"max_iter": 10, "tol": 1e-2, "reg_covar": 5e-4}
    assert THOROUGH_FIT == {"max_iter": 100, "tol": 1e-4, "reg_covar": 1e-6}


def test_the_lower_mean_component_is_the_clean_one():
    losses, truth = _losses(5)
    probability = ccd.clean_probability(losses, seed=0)
    assert probability[~truth].mean() > 0.9 and probability[truth].mean() < 0.1


def test_min_max_and_bad_losses():
    assert np.array_equal(min_max(np.array([2.0, 4.0, 3.0])), np.array([0.0, 1.0, 0.5]))
    assert np.array_equal(min_max(np.array([3.0, 3.0])), np.array([0.0, 0.0]))
    with pytest.raises(ValueError, match="not finite"):
        divide_pairs(np.array([0.1, np.nan]), np.array([0.1, 0.2]), seed=0, epoch=0)
    with pytest.raises(ValueError, match="shapes"):
        divide_pairs(np.zeros(3), np.zeros(4), seed=0, epoch=0)
    assert noise_detection(np.array([1.0, 0.0, 0.0, 1.0]), np.array([False, True, False, True])) == (0.5, 0.5)
