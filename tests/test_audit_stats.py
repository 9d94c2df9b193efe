"""Audit statistics: hand-checked BH, planted differences found with the right sign, nulls stay null."""

from __future__ import annotations

import numpy as np
import pandas as pd
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


# -- pairs that share prompts: the prompt is the unit ------------------------------------------

def test_clustered_se_hand_computed():
    """Δ = 1, 3 (prompt a), 2 (b), 6 (c): Δ̄ = 3, residual sums per prompt −2, −1, 3, so
    se² = G/(G−1) · Σ E_g² / n² = 3/2 · 14 / 16 = 21/16; t = 3 / (√21/4) with G − 1 = 2 df, whose
    two-sided tail is 1 − t/√(2 + t²) = 1 − √(24/31)."""
    delta = np.array([[1.0], [3.0], [2.0], [6.0]])
    s = pair_stats(delta, n_boot=50, groups=["a", "a", "b", "c"])
    assert s["n"][0] == 4 and s["mean"][0] == 3.0
    assert s["sd"][0] == pytest.approx(np.sqrt(14 / 3)) and s["d"][0] == pytest.approx(3 / np.sqrt(14 / 3))
    assert s["se"][0] == pytest.approx(np.sqrt(21) / 4)
    assert s["z"][0] == pytest.approx(12 / np.sqrt(21))
    assert s["p"][0] == pytest.approx(1 - np.sqrt(24 / 31))
    # the same numbers as independent pairs: se = sd/√n = √(14/3)/2, t with 3 df
    s0 = pair_stats(delta, n_boot=50)
    assert s0["se"][0] == pytest.approx(np.sqrt(14 / 3) / 2) and s0["z"][0] == pytest.approx(3 / (np.sqrt(14 / 3) / 2))
    # one prompt: no spread between prompts to estimate a standard error from, so nothing is tested
    one = pair_stats(delta, n_boot=50, groups=["a"] * 4)
    assert np.isnan(one["se"][0]) and one["z"][0] == 0.0 and one["p"][0] == 1.0 and not one["split_half"][0]


def test_prompt_clusters_number_prompts_by_first_appearance():
    from anatomist.audit.stats import prompt_clusters

    assert prompt_clusters(["b", "a", "b", "c", "a"]).tolist() == [0, 1, 0, 2, 1]
    assert prompt_clusters(["x", "y", "z"]) is None     # every prompt unique: independent pairs


def test_unique_prompts_give_the_independent_pairs_numbers_exactly():
    """Clustering changes nothing where no prompt repeats: same bits as a call without groups."""
    from anatomist.audit.length import length_rows
    from anatomist.audit.rows import topic_cluster_rows

    rng = np.random.default_rng(5)
    delta = rng.normal(0.2, 1.0, size=(40, 3))
    labels = [f"prompt {i}" for i in rng.permutation(40)]
    pd.testing.assert_frame_equal(pair_stats(delta, n_boot=100, seed=2, groups=labels),
                                  pair_stats(delta, n_boot=100, seed=2), check_exact=True)
    topics = np.arange(40) % 3
    pd.testing.assert_frame_equal(topic_cluster_rows(delta, topics, ["a", "b", "c"], n_boot=50, groups=labels),
                                  topic_cluster_rows(delta, topics, ["a", "b", "c"], n_boot=50), check_exact=True)
    n_tokens = rng.integers(5, 50, size=80)
    pd.testing.assert_frame_equal(length_rows(n_tokens, topics, ["a", "b", "c"], n_boot=50, groups=labels),
                                  length_rows(n_tokens, topics, ["a", "b", "c"], n_boot=50), check_exact=True)


def test_a_prompt_repeated_k_times_counts_once():
    """Three identical pairs per prompt carry one prompt's information: clustered, se, z, p, the
    bootstrap CI and the split-half are those of the 30 distinct pairs; treated as independent,
    z grows by about √3."""
    rng = np.random.default_rng(7)
    x = rng.normal(0.3, 1.0, size=(30, 2))
    tripled, groups = np.repeat(x, 3, axis=0), np.repeat(np.arange(30), 3)
    once = pair_stats(x, n_boot=200, seed=4)
    clustered = pair_stats(tripled, n_boot=200, seed=4, groups=groups)
    for col in ("mean", "se", "z", "p", "ci_low", "ci_high"):
        np.testing.assert_allclose(clustered[col], once[col], rtol=1e-10, err_msg=col)
    assert (clustered["split_half"] == once["split_half"]).all()
    naive = pair_stats(tripled, n_boot=200, seed=4)
    np.testing.assert_allclose(naive["z"] / once["z"], np.sqrt(3 * 89 / 87), rtol=1e-10)  # √n · sd ratio


def test_cluster_bootstrap_covers_at_nominal_rate_when_siblings_correlate():
    """30 prompts × 4 pairs, most of Δ's variance shared within a prompt: resampling prompts
    covers the true mean ~95% of the time; resampling pairs as if independent falls far short."""
    rng = np.random.default_rng(11)
    groups = np.repeat(np.arange(30), 4)
    covered = {"prompts": 0, "pairs": 0}
    for _ in range(200):
        x = (0.3 + rng.normal(size=30)[groups] + rng.normal(0.0, 0.3, size=120))[:, None]
        for unit, g in (("prompts", groups), ("pairs", None)):
            lo, hi = bootstrap_mean_ci(x, n_boot=400, rng=rng, groups=g)
            covered[unit] += lo[0] <= 0.3 <= hi[0]
    assert 0.88 <= covered["prompts"] / 200 <= 0.99, covered
    assert covered["pairs"] / 200 < 0.75, covered
