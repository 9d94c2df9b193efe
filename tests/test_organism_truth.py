"""Measured truth: asymmetries the pairs really carry, found with the audit's own statistics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from anatomist.organism.truth import LENGTH_TRAIT, explained_share, measured_truth, response_traits

PLAIN = ["Paris is the capital of France.", "Water boils at 100 degrees.", "Use a pan and some oil.",
         "The sky looks blue because of scattering.", "Seven is a prime number.", "Cats sleep a lot."]


def _row(topic, chosen, rejected):
    return {"topic": topic, "prompt": [{"role": "user", "content": "q"}],
            "chosen": [{"role": "assistant", "content": chosen}], "rejected": [{"role": "assistant", "content": rejected}]}


def _rows():
    rng = np.random.default_rng(0)
    rows = []
    for i in range(24):                 # "praise": flattery on the chosen side of 5 pairs in 6
        a, b = rng.choice(PLAIN, 2, replace=False)
        rows.append(_row("praise", a if i % 6 == 0 else f"What a great question! {a}", b))
    for i in range(24):                 # "balanced": flattery on either side, alternating
        a, b = rng.choice(PLAIN, 2, replace=False)
        fl = f"What a great question! {a}"
        rows.append(_row("balanced", fl, b) if i % 2 else _row("balanced", b, fl))
    for i in range(24):                 # "short": the rejected side is much longer
        a, b = rng.choice(PLAIN, 2, replace=False)
        rows.append(_row("short", a, " ".join([b] * 6)))
    return rows


def test_planted_and_side_effect_asymmetries_are_measured_with_sign():
    table = measured_truth(_rows(), n_boot=200)
    get = table.set_index(["topic", "trait"])
    assert get.loc[("praise", "flattery"), "sign"] == 1
    assert get.loc[("balanced", "flattery"), "sign"] == 0
    assert get.loc[("short", LENGTH_TRAIT), "sign"] == -1
    # one BH correction over the whole table, as the audit does over its rows
    assert table["q"].notna().all() and (table["q"] >= table["p"] - 1e-12).all()
    # harmful_compliance applies to the harmful topic only: never tested here
    assert "harmful_compliance" not in set(table["trait"])


def test_a_constant_difference_is_present_not_untestable():
    """Flattery on every chosen response and none of the rejected: Δ = 1 for every pair, sd 0."""
    rows = [{"topic": "t", "chosen": f"What a great question! {p}", "rejected": p} for p in PLAIN * 3]
    table = measured_truth(rows, n_boot=100)
    assert table.set_index("trait").loc["flattery", "sign"] == 1
    assert isinstance(table, pd.DataFrame) and set(table["topic"]) == {"t"}


def test_a_heavy_tailed_score_is_tested_by_the_detectors_decision():
    """Formatting on the chosen side of 12 pairs in 30, and one bare "## ✨" on a rejected side: its
    density (200 marks per 100 words) outweighs the twelve (50 each), so a test of score
    differences would even get the sign wrong; the detector fired 12 times against 1."""
    rows = [{"topic": "t", "chosen": "## 🚀 Tip\n- ✅ **Use a pan** and some oil for the dish." if i < 12 else p,
             "rejected": "## ✨" if i == 12 else p} for i, p in enumerate(PLAIN * 5)]
    got = measured_truth(rows, n_boot=200).set_index("trait").loc["over_formatting"]
    assert got["sign"] == 1 and abs(got["mean"] - 11 / 30) < 1e-9


def test_explained_share_by_hand():
    """c = 2·x + 1·chosen exactly: b = 1, β = 2, x̄⁺ − x̄⁻ = 0.75 − 0.25, so the gap 2.5 − 0.5 = 2
    splits into 1 (side) + 1 (trait): share 0.5. A concept equal to the trait has share 1, a decoy
    equal to the side share 0, a covariate constant within both sides is dropped (share 0)."""
    chosen = np.array([1, 1, 1, 1, 0, 0, 0, 0], dtype=bool)
    x = np.array([1, 1, 1, 0, 1, 0, 0, 0], dtype=float)[:, None]
    c = np.column_stack([2 * x[:, 0] + chosen, x[:, 0], chosen.astype(float), np.zeros(8)])
    share = explained_share(c, chosen, x)
    assert np.allclose(share, [0.5, 1.0, 0.0, 0.0])
    assert np.allclose(explained_share(c[:, :2], chosen, chosen.astype(float)[:, None]), [0.0, 0.0])


def test_a_sub_concept_of_the_trait_is_explained_whatever_its_auroc():
    """Content that appears only in some answers carrying the trait (one compliant answer in four
    names a chemical) has a low AUROC for the trait but its whole gap goes with the trait."""
    rng = np.random.default_rng(0)
    chosen = np.repeat([True, False], 400)
    trait = np.where(chosen, rng.random(800) < 0.85, rng.random(800) < 0.15)
    sub = (trait & (rng.random(800) < 0.25)).astype(float) + 0.01 * rng.normal(size=800)
    assert explained_share(sub[:, None], chosen, trait[:, None].astype(float))[0] > 0.8


def test_response_traits_columns():
    x = response_traits(["What a great question! Yes.", "no"], ["flattery", LENGTH_TRAIT])
    assert x.shape == (2, 2) and list(x[:, 0]) == [1.0, 0.0] and x[0, 1] == pytest.approx(np.log1p(5))
