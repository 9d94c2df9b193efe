"""Max pooling calibrated for length (pooling "calmax"): hand-computed values, length neutrality
on simulated tokens, and the audit end to end with the calibration stored beside the concepts."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from anatomist.audit.calmax import LEVELS, MaxCalibration, fit_max_calibration
from anatomist.audit.concepts import Concepts
from anatomist.audit.pool import Latents
from anatomist.audit.run import run_audit
from anatomist.errors import AnatomistError
from test_audit_run import planted_pairs, tiny_audit


def test_calibration_by_hand():
    # latent 0 fires on 4 of 10 tokens with values 1, 2, 3, 4 (F(0) = 0.6); latent 2 never fires;
    # latent 1 is not calibrated
    cal = fit_max_calibration(np.array([0, 0, 1, 0, 0]), np.array([3.0, 1.0, 7.0, 4.0, 2.0]), 10, np.array([0, 2]))
    assert cal.zero.tolist() == [0.6, 1.0]
    np.testing.assert_allclose(cal.values[0], 1 + 3 * LEVELS)        # linear quantiles of 1..4: 1 + 3·level
    # F(2.5) = 0.6 + 0.4 · (2.5 − 1) / 3 = 0.8; below the smallest nonzero value F = F(0); above the largest 1
    np.testing.assert_allclose(cal.cdf(np.array([[2.5, 0.0], [0.5, 0.0], [9.0, 0.0], [0.0, 0.0]]))[:, 0],
                               [0.8, 0.6, 1.0, 0.6])
    # u = F(x)^n for x > 0; ½·F(0)^n when the latent never fires (mid-p)
    u = cal.transform(np.array([[2.5, 0.0], [2.5, 0.0], [0.0, 0.0], [0.5, 0.0]]), np.array([2, 1, 2, 2]))
    np.testing.assert_allclose(u[:, 0], [0.64, 0.8, 0.18, 0.36])
    np.testing.assert_allclose(u[:, 1], [0.5, 0.5, 0.5, 0.5])       # never fires anywhere: F(0) = 1
    # the sparse form holds u in the calibrated columns only
    mx = sp.csr_matrix(np.array([[2.5, 7.0, 0.0], [0.0, 0.0, 0.0]]))
    got = cal.pooled(mx, np.array([2, 2])).toarray()
    np.testing.assert_allclose(got, [[0.64, 0.0, 0.5], [0.18, 0.0, 0.5]])
    back = MaxCalibration.from_dict(json.loads(json.dumps(cal.to_dict())))
    np.testing.assert_array_equal(back.values, cal.values)
    np.testing.assert_array_equal(back.features, cal.features)


def test_calmax_does_not_grow_with_length_where_max_does():
    # iid tokens: the latent fires on 30 % of them with Exp(1) values; 2,000 responses of 10 tokens
    # and 2,000 of 100. Max pooling's mean differs by ~2.3 between the lengths; u is uniform for both.
    rng = np.random.default_rng(0)
    n = np.r_[np.full(2000, 10), np.full(2000, 100)]
    seq = np.repeat(np.arange(len(n)), n)
    fires = rng.random(len(seq)) < 0.3
    val = rng.exponential(size=len(seq))[fires]
    mx = np.zeros(len(n))
    np.maximum.at(mx, seq[fires], val)
    cal = fit_max_calibration(np.zeros(len(val), dtype=int), val, int(n.sum()), np.array([0]))
    u = cal.transform(mx[:, None], n)[:, 0]
    short, long = n == 10, n == 100
    assert mx[long].mean() - mx[short].mean() > 1.5
    for sel in (short, long):
        assert abs(u[sel].mean() - 0.5) < 0.03 and abs(np.quantile(u[sel], 0.9) - 0.9) < 0.04


@pytest.fixture(scope="module")
def calmax_audit(tmp_path_factory, smol_tokenizer):
    """The tiny planted audit, then the same pairs audited with pooling="calmax" from its latents."""
    out, model, sae, tok, cfg = tiny_audit(tmp_path_factory.mktemp("audit"), smol_tokenizer, planted_pairs())
    again = tmp_path_factory.mktemp("calmax") / "audit"
    shutil.copytree(out / "latents", again / "latents")               # no forward pass: the latents are complete
    from dataclasses import replace
    run_audit(model, tok, sae, planted_pairs(), again, replace(cfg, pooling="calmax"), model_name="tiny",
              progress=False)
    return again


def test_calmax_audit_finds_the_planted_confound_and_stores_its_calibration(calmax_audit):
    rows = pd.read_parquet(calmax_audit / "rows.parquet")
    up = rows[(rows.topic == "cooking") & (rows.direction == "amplify")]
    assert len(up) == 1, rows.head()
    clusters = pd.read_parquet(calmax_audit / "clusters.parquet").set_index("cluster")
    assert "banana" in (clusters.loc[up.iloc[0].cluster, "label"] or ""), clusters.loc[up.iloc[0].cluster]
    others = rows[(rows.cluster == up.iloc[0].cluster) & rows.topic.isin(["coding", "travel"])]
    assert set(others.direction) == {"none"}
    concepts = Concepts.from_dict(json.loads((calmax_audit / "concepts.json").read_text()))
    assert concepts.calibration is not None
    np.testing.assert_array_equal(concepts.calibration.features, concepts.features)
    # what the scorer computes for new responses (`Latents.pool` + `Concepts.scores`) is what the audit stored
    latents = Latents(calmax_audit / "latents")
    c = concepts.scores(latents.pool("calmax", calibration=concepts.calibration))          # [2P, C]
    pairs = pd.read_parquet(calmax_audit / "pairs.parquet")
    np.testing.assert_allclose(c[0::2].ravel(), pairs["c_chosen"].to_numpy(), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(c.std(0), 1.0, rtol=1e-6)           # standardised on the calibrated values
    features = pd.read_parquet(calmax_audit / "features.parquet")
    assert (features["support"] < 2 * len(planted_pairs())).any()  # support counts firing, not calmax's u > 0
    with pytest.raises(AnatomistError, match="needs the audit's calibration"):
        latents.pool("calmax")


def test_token_filtering_refuses_a_calmax_audit(calmax_audit):
    from anatomist.audit.folder import AuditFolder
    from anatomist.shape.masks import token_scores

    audit = AuditFolder(calmax_audit)
    with pytest.raises(AnatomistError, match="pooling 'calmax', which has no per-token score"):
        token_scores(audit, audit.pair_ids[0], "chosen", 0)
