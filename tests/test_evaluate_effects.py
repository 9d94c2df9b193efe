"""Effect sizes with bootstrap CIs (anatomist.evaluate.effects): reduction of the increase, mean CIs,
resampling counts — hand-computed values and the CI's coverage."""

import numpy as np
import pytest

from anatomist.evaluate import effects


def test_increase_reduction_by_hand():
    pre = np.array([0.0, 0.0, 0.0, 0.0])
    plain = np.array([1.0, 1.0, 0.0, 0.0])      # Δ_plain = 0.5
    variant = np.array([0.0, 0.0, 0.0, 0.4])    # Δ_variant = 0.1 → 1 − 0.1 / 0.5 = 0.8
    counts = np.ones((3, 4))                    # every resample = the sample itself
    assert effects.increase_reduction(pre, plain, variant, counts) == pytest.approx((0.8, 0.8, 0.8))


def test_increase_reduction_drops_resamples_without_an_increase():
    pre, plain, variant = np.zeros(4), np.array([1.0, 1.0, 0.0, 0.0]), np.array([0.5, 0.0, 0.0, 1.0])
    counts = np.array([[2, 2, 0, 0],            # Δp = 1, Δv = 0.25 → 0.75
                       [0, 0, 2, 2],            # Δp = 0: undefined, left out
                       [1, 1, 1, 1]])           # Δp = 0.5, Δv = 0.375 → 0.25
    point, lo, hi = effects.increase_reduction(pre, plain, variant, counts, level=0.5)
    assert point == pytest.approx(0.25)
    # quantiles 0.25 / 0.75 of {0.25, 0.75} (numpy linear): 0.375, 0.625
    assert (lo, hi) == pytest.approx((0.375, 0.625))


def test_increase_reduction_undefined_when_plain_did_not_increase():
    pre, plain, variant = np.zeros(3), np.array([0.0, 0.0, 0.0]), np.array([1.0, 0.0, 0.0])
    point, lo, hi = effects.increase_reduction(pre, plain, variant, np.ones((5, 3)))
    assert np.isnan(point) and np.isnan(lo) and np.isnan(hi)


def test_increase_reduction_negative_when_the_variant_adds_more():
    pre, plain, variant = np.zeros(2), np.array([0.5, 0.5]), np.array([1.0, 1.0])
    assert effects.increase_reduction(pre, plain, variant, np.ones((1, 2)))[0] == pytest.approx(-1.0)


def test_mean_ci_by_hand():
    x = np.array([1.0, 2.0, 3.0])
    counts = np.array([[3, 0, 0], [0, 0, 3]])   # resample means 1 and 3
    mean, lo, hi = effects.mean_ci(x, counts)
    assert (mean, lo, hi) == pytest.approx((2.0, 1.05, 2.95))   # quantiles 0.025 / 0.975 of {1, 3}


def test_boot_counts_resample_n_prompts_uniformly():
    counts = effects.boot_counts(5, 4000, seed=0)
    assert counts.shape == (4000, 5) and (counts.sum(1) == 5).all()
    # each prompt is drawn Binomial(5, 1/5) times: mean 1, sd 0.894 → se of the mean 0.0141
    assert np.abs(counts.mean(0) - 1.0).max() < 5 * 0.0142
    assert (effects.boot_counts(5, 10, seed=1) == effects.boot_counts(5, 10, seed=1)).all()


def test_mean_ci_covers_the_true_mean_about_95_percent():
    rng = np.random.default_rng(0)
    hits = 0
    for i in range(200):
        x = rng.binomial(1, 0.3, size=60).astype(float)
        _, lo, hi = effects.mean_ci(x, effects.boot_counts(60, 400, seed=i))
        hits += lo <= 0.3 <= hi
    assert 0.88 <= hits / 200 <= 0.99     # percentile bootstrap on n = 60 runs a little under 95%
