"""Trait → audit clusters (anatomist.organism.match) on the scorer's hand-made audit folder, and the
λ signs that follow from ρ."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
from test_organism_score import fake_audit  # noqa: F401 (a fixture)

from anatomist.data import load_pairs
from anatomist.errors import AnatomistError
from anatomist.organism.match import trait_clusters, trait_lams
from anatomist.organism.plant import read_truth


def test_trait_clusters_keep_the_flagged_row_with_the_expected_sign(fake_audit):  # noqa: F811
    root, audit = fake_audit
    pairs, truth = load_pairs(root / "data" / "train.jsonl"), read_truth(root / "data" / "truth.json")
    # c0 = formatting density and c3 = its square root both track over_formatting (ρ > 0); coding
    # flags c0 "amplify" (expected for s = 0.9, ρ > 0) and c3 "suppress" (wrong sign): only c0 counts
    formatting, found = trait_clusters(audit, pairs, truth, "over_formatting")
    assert found and list(formatting) == [0] and formatting[0] == pytest.approx(1.0)
    # c1 = −URL count: ρ = −1, flagged "amplify" in physics where s = 0.1 expects exactly that
    assert trait_clusters(audit, pairs, truth, "urls") == ({1: pytest.approx(-1.0)}, True)
    with pytest.raises(AnatomistError, match="is not among the given pairs"):
        trait_clusters(audit, pairs[1:], truth, "urls")


def test_trait_clusters_fall_back_to_the_best_rho_when_nothing_is_flagged(fake_audit, tmp_path):  # noqa: F811
    root, audit = fake_audit
    quiet = shutil.copytree(audit, tmp_path / "quiet")
    rows = pd.read_parquet(quiet / "rows.parquet")
    rows.assign(direction="none").to_parquet(quiet / "rows.parquet")
    pairs, truth = load_pairs(root / "data" / "train.jsonl"), read_truth(root / "data" / "truth.json")
    clusters, found = trait_clusters(quiet, pairs, truth, "urls")
    assert not found and clusters == {1: pytest.approx(-1.0)}


def test_trait_lams_follow_the_sign_of_rho():
    assert trait_lams({3: 0.6, 7: -0.4}, -4.0) == {3: -4.0, 7: 4.0}
    assert trait_lams({}, -4.0) == {}
