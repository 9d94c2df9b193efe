"""Measured truth: asymmetries the pairs really carry, found with the audit's own statistics."""

from __future__ import annotations

import numpy as np
import pandas as pd

from anatomist.organism.truth import LENGTH_TRAIT, measured_truth

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
