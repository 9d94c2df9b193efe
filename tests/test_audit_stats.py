"""Audit statistics: hand-checked BH, planted differences found with the right sign, nulls stay null."""

from __future__ import annotations

import numpy as np
import pytest

from anatomist.audit.stats import add_q, benjamini_hochberg, bootstrap_mean_ci, pair_stats


def test_bh_hand_computed():
    # p sorted: .01 .02 .03 .04 .20 with m=5 → p*m/rank = .05 .05 .05 .05 .20; monotone from the top.
    p = np.array([0.04, 0.01, 0.20, 0.03, 0.02])
    np.testing.assert_allclose(benjamini_hochberg(p), [0.05, 0.05, 0.20, 0.05, 0.05])
    # Step-up: a later small ratio pulls earlier ones down: .01*3/1=.03, .04*3/2=.06, .045*3/3=.045
    np.testing.assert_allclose(benjamini_hochberg(np.array([0.01, 0.04, 0.045])), [0.03, 0.045, 0.045])
    q = benjamini_hochberg(np.array([0.5, np.nan, 0.9]))  # NaN is untested: m = 2
    np.testing.assert_allclose(q, [0.9, np.nan, 0.9])
    assert benjamini_hochberg(np.array([1.0, 1.0])).max() == 1.0


def test_pair_stats_hand_computed():
    delta = np.array([[1.0, -2.0], [3.0, -2.0], [2.0, 0.0], [2.0, 0.0]])
    s = pair_stats(delta, n_boot=200)
    # column 0: mean 2, sd sqrt(2/3); column 1: mean -1, sd sqrt(4/3)
    np.testing.assert_allclose(s["mean"], [2.0, -1.0])
    np.testing.assert_allclose(s["sd"], [np.sqrt(2 / 3), np.sqrt(4 / 3)])
    np.testing.assert_allclose(s["d"], [2 / np.sqrt(2 / 3), -1 / np.sqrt(4 / 3)])
    np.testing.assert_allclose(s["z"], s["d"] * 2)
    np.testing.assert_allclose(s["frac_pos"], [1.0, 0.0])
    # t = 2/(sqrt(2/3)/2) = 4.899, df 3 → two-sided p = 0.01628
    assert s["p"][0] == pytest.approx(0.016275, abs=1e-5)
    assert (s["ci_low"] <= s["mean"]).all() and (s["mean"] <= s["ci_high"]).all()


def test_bootstrap_ci_covers_at_nominal_rate():
    rng = np.random.default_rng(1)
    data = rng.normal(0.3, 1.0, size=(200, 60, 1))  # 200 experiments of 60 pairs, true mean 0.3
    covered = 0
    for x in data:
        lo, hi = bootstrap_mean_ci(x, n_boot=400, rng=rng)
        covered += lo[0] <= 0.3 <= hi[0]
    assert 0.89 <= covered / 200 <= 0.99


def _features(rng, n_pairs=300, n_feat=200):
    """Sparse non-negative activations for chosen/rejected, like pooled SAE latents."""
    fire = rng.random((2, n_pairs, n_feat)) < 0.3
    return np.where(fire, rng.exponential(1.0, (2, n_pairs, n_feat)), 0.0)


def test_planted_feature_ranked_first_with_right_sign():
    rng = np.random.default_rng(0)
    acts = _features(rng)
    acts[0, :, 17] += rng.exponential(0.6, 300)  # chosen fires harder on feature 17
    acts[1, :, 42] += rng.exponential(0.6, 300)  # rejected fires harder on feature 42
    s = add_q(pair_stats(acts[0] - acts[1], n_boot=200))
    ranked = s["z"].abs().sort_values(ascending=False).index[:2]
    assert set(ranked) == {17, 42}
    assert s.loc[17, "mean"] > 0 and s.loc[42, "mean"] < 0
    assert s.loc[17, "q"] < 0.001 and s.loc[42, "q"] < 0.001 and s.loc[17, "split_half"]


def test_null_gives_no_discoveries_in_95_percent_of_seeds():
    clean = 0
    for seed in range(20):
        rng = np.random.default_rng(100 + seed)
        acts = _features(rng)
        swap = rng.random(300) < 0.5  # shuffle which side is "chosen"
        chosen = np.where(swap[:, None], acts[1], acts[0])
        rejected = np.where(swap[:, None], acts[0], acts[1])
        q = add_q(pair_stats(chosen - rejected, n_boot=50))["q"]
        clean += bool((q >= 0.05).all())
    assert clean >= 19


def test_untested_rows_get_no_q_and_do_not_count():
    rng = np.random.default_rng(3)
    s = pair_stats(rng.normal(size=(50, 4)), n_boot=20)
    q = add_q(s, tested=np.array([True, False, True, False]))["q"]
    assert np.isnan(q[1]) and np.isnan(q[3])
    np.testing.assert_allclose(q[[0, 2]], benjamini_hochberg(s["p"].to_numpy()[[0, 2]]))
