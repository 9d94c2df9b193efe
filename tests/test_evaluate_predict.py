"""Predictors of the post-DPO behaviour shift (anatomist/evaluate/predict.py) on hand-made audits."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from anatomist.audit.rows import topic_cluster_rows
from anatomist.errors import AnatomistError
from anatomist.evaluate.predict import (
    PredictConfig,
    apply_calibration,
    pair_weights,
    predict_rows,
    weighted_means,
    write_predictions,
)
from anatomist.shape.losses import dpo_loss


def write_audit(folder, c_chosen: np.ndarray, c_rejected: np.ndarray, topics: np.ndarray, names: list[str],
                labels: list[str] | None = None, min_pairs: int = 2):
    """A minimal audit folder (the files predict.py reads), written as run.py writes them."""
    folder.mkdir(parents=True, exist_ok=True)
    P, C = c_chosen.shape
    delta = c_chosen - c_rejected
    rows = topic_cluster_rows(delta, topics, names, min_pairs=min_pairs, n_boot=50)
    rows.to_parquet(folder / "rows.parquet", index=False)
    pd.DataFrame({"pair_id": np.repeat([f"p{i}" for i in range(P)], C), "topic_id": np.repeat(topics, C),
                  "cluster": np.tile(np.arange(C), P), "c_chosen": c_chosen.ravel(),
                  "c_rejected": c_rejected.ravel(), "delta": delta.ravel()}).to_parquet(folder / "pairs.parquet")
    pd.DataFrame({"cluster": np.arange(C), "label": labels or [f"concept {k}" for k in range(C)], "label_status": "ok",
                  "detection_acc": 0.9, "n_features": 1, "features": [[k] for k in range(C)],
                  "mean_delta": delta.mean(0), "q": 0.5, "direction": "none"}).to_parquet(folder / "clusters.parquet")
    (folder / "audit.json").write_text(json.dumps({"topics": {"names": names}}))
    return folder


@pytest.fixture
def hand_audit(tmp_path):
    # 2 topics × 2 clusters; topic 0 has 3 pairs, topic 1 has 1 pair (N = 4)
    cc = np.array([[2.0, 0.0], [1.0, 1.0], [0.0, 0.0], [1.0, 3.0]])
    cr = np.array([[0.0, 0.0], [1.0, 0.0], [3.0, 0.0], [0.0, 1.0]])
    topics = np.array([0, 0, 0, 1])
    return write_audit(tmp_path / "audit", cc, cr, topics, ["a", "b"], min_pairs=1), cc, cr, topics


def test_predictors_hand_computed(hand_audit):
    folder, cc, cr, topics = hand_audit
    pred = predict_rows(folder, PredictConfig(min_pairs=1)).set_index(["topic", "cluster"])
    # Δc = [[2, 0], [0, 1], [-3, 0], [1, 2]]; topic a: Δ̄ = (-1/3, 1/3); topic b: (1, 2); all: (0, 3/4)
    assert pred.loc[("a", 0), "dbar"] == pytest.approx(-1 / 3)
    assert pred.loc[("a", 1), "dbar"] == pytest.approx(1 / 3)
    assert pred.loc[("b", 1), "dbar"] == pytest.approx(2.0)
    assert pred.loc[("b", 0), "dbar_all"] == pytest.approx(0.0)
    assert pred.loc[("a", 1), "x_naive"] == pytest.approx(0.75)
    # spread of c over topic a's 6 responses, cluster 1: values 0,1,0,0,0,0 → var (ddof 1) = 1/6
    assert pred.loc[("a", 1), "spread"] == pytest.approx(1 / 6)
    assert pred.loc[("a", 1), "expression"] == pytest.approx(1 / 6)
    # x_own = s²·w·Δ̄ = (1/6)·(3/4)·(1/3); x_leak = s²·Δ̄_all = (1/6)·(3/4)
    assert pred.loc[("a", 1), "x_own"] == pytest.approx(1 / 6 * 3 / 4 * 1 / 3)
    assert pred.loc[("a", 1), "x_leak"] == pytest.approx(1 / 6 * 3 / 4)
    assert pred.loc[("a", 1), "share"] == pytest.approx(0.75)
    # topic b: responses c = 1, 0 (cluster 0) → var 1/2, mean 1/2
    assert pred.loc[("b", 0), "spread"] == pytest.approx(0.5)
    assert pred.loc[("b", 0), "x_prompt"] == pytest.approx(0.5)


def test_dbar_matches_audit_rows(tmp_path):
    rng = np.random.default_rng(0)
    cc, cr = rng.normal(size=(40, 5)), rng.normal(size=(40, 5))
    topics = rng.integers(0, 3, 40)
    folder = write_audit(tmp_path / "a", cc, cr, topics, ["x", "y", "z"])
    pred = predict_rows(folder).set_index(["topic", "cluster"])
    rows = pd.read_parquet(folder / "rows.parquet")
    mine = rows[rows.topic != "all"].set_index(["topic", "cluster"])["mean"]
    np.testing.assert_allclose(pred["dbar"].reindex(mine.index), mine, atol=1e-12)
    assert set(pred["direction"]) <= {"amplify", "suppress", "none"}


def test_spread_options(hand_audit):
    folder = hand_audit[0]
    ones = predict_rows(folder, PredictConfig(spread="none", min_pairs=1))
    np.testing.assert_allclose(ones["x_own"], ones["share"] * ones["dbar"])
    base = pd.DataFrame({"prompt_id": ["q1", "q1", "q2", "q2"], "topic": ["a", "a", "b", "b"],
                         "c_0": [0.0, 2.0, 1.0, 1.0], "c_1": [1.0, 1.0, 0.0, 4.0]})
    pb = predict_rows(folder, PredictConfig(spread="base", min_pairs=1), base_scores=base).set_index(["topic", "cluster"])
    assert pb.loc[("a", 0), "spread"] == pytest.approx(2.0) and pb.loc[("b", 1), "spread"] == pytest.approx(8.0)
    with pytest.raises(AnatomistError, match="base"):
        predict_rows(folder, PredictConfig(spread="base"))
    with pytest.raises(AnatomistError, match="spread"):
        PredictConfig(spread="bogus")


def test_shaped_weights_hand_computed():
    delta = np.array([[2.0, 1.0], [-1.0, 0.0]])
    w = pair_weights(delta, {0: 0.5})
    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    np.testing.assert_allclose(w, [2 * sig(1.0), 2 * sig(-0.5)])
    np.testing.assert_allclose(pair_weights(delta, None), [1, 1])
    per_topic, overall = weighted_means(delta, np.array([0, 1]), w, 2)
    np.testing.assert_allclose(per_topic, [[2 * w[0], w[0]], [-w[1], 0]])
    np.testing.assert_allclose(overall, [(2 * w[0] - w[1]) / 2, w[0] / 2])


def test_shaped_drive_equals_loss_gradient():
    """Δ̄^λ is the gradient of the shape module's DPO loss at the reference, in a tilt model where
    log π(y) − log π_ref(y) = θ·c(y): −∂L/∂θ averaged over pairs = (β/2)·mean 2σ(λΔc_C)·Δc."""
    torch.manual_seed(0)
    cc, cr = torch.randn(64, 3, dtype=torch.float64), torch.randn(64, 3, dtype=torch.float64)
    beta, lam = 0.1, {1: -2.0}
    for shaped in (None, lam):
        theta = torch.zeros(3, dtype=torch.float64, requires_grad=True)
        lam_vec = torch.zeros(3, dtype=torch.float64)
        for k, v in (shaped or {}).items():
            lam_vec[k] = v
        offset = ((cc - cr) * lam_vec).sum(-1)
        zeros = torch.zeros(64, dtype=torch.float64)
        out = dpo_loss(cc @ theta, cr @ theta, zeros, zeros, beta=beta, offset=offset)
        out.loss.mean().backward()
        delta = (cc - cr).numpy()
        _, drive = weighted_means(delta, np.zeros(64, dtype=int), pair_weights(delta, shaped), 1)
        np.testing.assert_allclose(-theta.grad.numpy(), beta / 2 * drive, rtol=1e-10)


def test_shaping_sign_and_derivative(hand_audit):
    folder = hand_audit[0]
    plain = predict_rows(folder, PredictConfig(min_pairs=1))
    eps = 1e-4
    up = predict_rows(folder, PredictConfig(min_pairs=1), lam={1: eps})
    down = predict_rows(folder, PredictConfig(min_pairs=1), lam={1: -eps})
    np.testing.assert_allclose(predict_rows(folder, PredictConfig(min_pairs=1), lam={1: 0.0})["dbar"], plain["dbar"])
    # dΔ̄^λ/dλ at 0 = mean Δc²/2 (overall, cluster 1: Δc = 0, 1, 0, 2 → 5/8)
    slope = (up["dbar_all"] - down["dbar_all"]).to_numpy() / (2 * eps)
    assert slope[plain.cluster.to_numpy() == 1][0] == pytest.approx(5 / 8, rel=1e-6)
    strong = predict_rows(folder, PredictConfig(min_pairs=1), lam={1: -50.0})
    assert (strong.loc[strong.cluster == 1, "dbar_all"] <= 1e-6).all()      # λ ≪ 0: nothing pushes it up
    with pytest.raises(AnatomistError, match="cluster 7"):
        predict_rows(folder, lam={7: 1.0})


def test_write_predictions_and_calibration(hand_audit):
    folder = hand_audit[0]
    path, pred = write_predictions(folder, PredictConfig(min_pairs=1), calibration={"naive": [2.0]})
    back = pd.read_parquet(path)
    np.testing.assert_allclose(back["pred_naive"], 2 * back["dbar_all"])
    assert json.loads((folder / "predictions.json").read_text())["calibration"] == {"naive": [2.0]}
    both = apply_calibration(pred, {"feature": [1.0, -1.0]})
    np.testing.assert_allclose(both["pred_feature"], pred["x_own"] - pred["x_leak"])
    assert not list(folder.glob(".*tmp*"))


def test_missing_audit_files(tmp_path):
    with pytest.raises(AnatomistError, match="no such audit folder"):
        predict_rows(tmp_path / "nope")
    (tmp_path / "a").mkdir()
    with pytest.raises(AnatomistError, match="a is not a finished audit folder: missing audit.json"):
        predict_rows(tmp_path / "a")


def test_subset_pairs(hand_audit):
    folder = hand_audit[0]
    pred = predict_rows(folder, PredictConfig(min_pairs=1), pair_ids=["p0", "p3"]).set_index(["topic", "cluster"])
    # pairs p0 (topic a, Δc = 2, 0) and p3 (topic b, Δc = 1, 2)
    assert pred.loc[("a", 0), "dbar"] == pytest.approx(2.0) and pred.loc[("a", 0), "share"] == pytest.approx(0.5)
    assert pred.loc[("b", 1), "dbar_all"] == pytest.approx(1.0)
    with pytest.raises(AnatomistError, match="pair 'zz' is not in the audit"):
        predict_rows(folder, pair_ids=["p0", "zz"])
