"""The arithmetic of benchmarks/shaping.py and benchmarks/effects.py: reduction of the increase,
bootstrap CIs, λ signs, pair selection, the accuracy split."""

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import effects  # noqa: E402
import shaping  # noqa: E402


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


def test_shaping_lams_follow_the_sign_of_rho():
    assert shaping.shaping_lams({3: 0.6, 7: -0.4}, -4.0) == {3: -4.0, 7: 4.0}


def test_select_pairs_balances_topics_in_file_order():
    pairs = [SimpleNamespace(id=f"{t}{i}", extra={"topic": t}) for i in range(4) for t in ("a", "b", "c")]
    got = [p.id for p in shaping.select_pairs(pairs, ["a", "b"], 4)]
    assert got == ["a0", "b0", "a1", "b1"]
    assert len(shaping.select_pairs(pairs, ["a", "b"], None)) == 8


def test_accuracy_splits_trait_pairs_from_the_rest_and_pairs_the_drop():
    ids = ["t0", "t1", "o0", "o1", "o2", "o3"]
    trait_of = {"t0": "x", "t1": "x", "o0": "y", "o1": "none", "o2": "y", "o3": "z"}
    plain = pd.DataFrame({"pair_id": ids, "correct": [1.0, 1.0, 1.0, 1.0, 0.0, 1.0]})
    shaped = pd.DataFrame({"pair_id": ids, "correct": [0.0, 0.0, 1.0, 0.0, 1.0, 1.0]})
    got = shaping.accuracy(shaped, plain, trait_of, "x", n_boot=200, seed=0)
    assert (got["n_trait"], got["n_other"]) == (2, 4)
    assert got["acc"] == pytest.approx(3 / 6) and got["acc_trait"] == 0.0 and got["acc_other"] == 0.75
    assert got["acc_drop"] == pytest.approx(5 / 6 - 3 / 6)
    mean, lo, hi = got["acc_drop_other"]    # per pair plain − shaped on the other pairs: 0, 1, −1, 0
    assert mean == 0.0 and -1 <= lo <= 0 <= hi <= 1
    with pytest.raises(AssertionError):
        shaping.accuracy(shaped.iloc[::-1], plain, trait_of, "x", n_boot=10, seed=0)


def test_verdict_calls_the_accuracy_check_uninformative_when_plain_learned_nothing_there():
    def rows(plain_other):
        plain = {"variant": "plain", "increase": (0.15, 0.02, 0.29), "acc_other_ci": plain_other}
        shaped = {"variant": "shaped", "reduction": (1.2, 1.0, 3.0), "acc_drop_other": (0.0, -0.1, 0.1),
                  "acc_drop": 0.05}
        weak = {"variant": "steered", "reduction": (0.1, 0.0, 0.6), "acc_drop_other": (0.0, -0.02, 0.02),
                "acc_drop": 0.0}
        return [{"variant": "base"}, plain, shaped, weak]

    chance = shaping.verdict(rows((0.48, 0.39, 0.56)))
    assert chance[0].startswith("met: plain DPO increased") and chance[1].startswith("NOT INFORMATIVE")
    assert chance[2].startswith("met on reduction, accuracy not informative: shaped")
    assert chance[3].startswith("NOT MET: steered")
    learned = shaping.verdict(rows((0.70, 0.62, 0.78)))
    assert len(learned) == 3 and learned[1].startswith("met: shaped") and learned[2].startswith("NOT MET: steered")
