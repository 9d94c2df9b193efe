"""Predict, from the preference data alone, how DPO will move each concept on each prompt topic.

One row per (topic k, concept cluster C) of the audit (dataset-wide rows are inputs, not rows).
Target (DESIGN.md "Behaviour shift"): ΔB_{k,C} = mean c_C(post) − mean c_C(pre) on held-out
prompts of topic k.

First-principles form (feature-conditioned). Treat the policy near the reference as an
exponential tilt along concept scores, π(y|x) ∝ π_ref(y|x)·exp(θ_x·c(y)). DPO's implicit reward
is then β·θ_x·c and the gradient of L = −log σ(β·Δθ − offset) at the reference is
−β·σ(offset_i)·Δc_i per pair: the update pushes θ along chosen-minus-rejected, Δc_i.
A prompt of topic k shares parameters with every training prompt, more with its own topic
(NTK view: kernel K_same within a topic, K_cross across), so after a few steps

    θ_{k,C} ∝ (K_same − K_cross)·w_k·Δ̄_{k,C} + K_cross·Δ̄_{all,C},   w_k = n_k / N (the topic's
                                                                     share of the updates)
and a tilt θ moves the mean of c_C by Var(c_C | k)·θ_{k,C} to first order:

    ΔB_{k,C} ≈ a·s²_{k,C}·w_k·Δ̄_{k,C} + b·s²_{k,C}·Δ̄_{all,C}          (two scalars a, b)

with s²_{k,C} the spread of c_C on topic k — of the dataset's responses ("pairs") or of the base
model's own generations ("base"). β, learning rate and steps only scale a and b. The
uncalibrated prediction is the own-topic term s²·w_k·Δ̄_{k,C}.

Baselines: "prompt" uses only which prompts a topic holds and how the concept is expressed in
the topic's responses, never which side was preferred (x = mean c_C on topic k); "naive" is
the dataset-wide Δ̄_{all,C} for every topic. Each is calibrated the same way (least squares,
no intercept: zero drive, zero shift) in `verify.py`, on rows of other topics.

Shaping (DESIGN.md: L = −log σ(β·Δθ − λ·Δc), the policy optimizes r + λ·c): the per-pair
gradient weight changes from σ(0) = 1/2 to σ(offset_i), offset_i = Σ_D λ_D·Δc_{i,D}, so the
shaped run is predicted by the same formula with Δ̄ replaced by the reweighted mean
Δ̄^λ = mean_i 2σ(offset_i)·Δc_i (`shaped_disparity`; λ = 0 gives Δ̄ exactly, and
dΔ̄^λ_C/dλ_C at 0 = mean Δc_C²/2 > 0: λ > 0 amplifies).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from anatomist.audit.folder import META, AuditFolder
from anatomist.errors import AnatomistError
from anatomist.fileio import atomic_write_parquet, atomic_write_text

log = logging.getLogger(__name__)

ALL = "all"
SPREADS = ("pairs", "base", "none")
# predictor name → (calibration features, uncalibrated column); verify.py fits y ≈ X·coef
PREDICTORS: dict[str, tuple[tuple[str, ...], str]] = {
    "feature": (("x_own", "x_leak"), "x_own"),
    "prompt": (("x_prompt",), "x_prompt"),
    "naive": (("x_naive",), "x_naive"),
    # first-order (evaluate/firstorder.py): Cov over the base generations of c with the log-prob
    # change along the run's own DPO direction, plain gradient or Adam's sign step; only where
    # `verify` is given its rows
    "first_plain": (("x_first_plain",), "x_first_plain"),
    "first_adam": (("x_first_adam",), "x_first_adam"),
    # multi-step variant: δ = log π_k − log π_0 after k real steps of the run's DPO on a subsample
    "first_steps": (("x_first_steps",), "x_first_steps"),
    # a ceiling, not a predictor: δ = the trained policy's own log-prob change on the predictor's
    # half of the base samples (it reads the run's result): what the covariance form reaches with a
    # perfect δ at this many samples (benchmarks/predict_vs_actual.py prints it beside the predictors)
    "first_oracle": (("x_first_oracle",), "x_first_oracle"),
}


@dataclass(frozen=True)
class PredictConfig:
    spread: str = "pairs"     # s²_{k,C} from the dataset's responses, the base model's generations, or 1
    min_pairs: int = 2        # topic rows with fewer pairs are dropped (no Δ̄)

    def __post_init__(self):
        if self.spread not in SPREADS:
            raise AnatomistError(f"spread must be one of {SPREADS}, got {self.spread!r}")
        if self.min_pairs < 1:
            raise AnatomistError(f"min_pairs must be >= 1, got {self.min_pairs}")


# -- pure math -------------------------------------------------------------------------------------

def sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.tanh(0.5 * np.asarray(x, dtype=np.float64)))   # overflow-free σ


def pair_weights(delta: np.ndarray, lam: Mapping[int, float] | None) -> np.ndarray:
    """Relative DPO gradient weight per pair at the reference, 2σ(offset_i) [P], for Δc [P, C]
    and λ per cluster index (offset_i = Σ_D λ_D·Δc_{i,D}); all ones without shaping."""
    P = delta.shape[0]
    if not lam:
        return np.ones(P)
    offset = np.zeros(P)
    for c, value in lam.items():
        offset += float(value) * delta[:, int(c)]
    return 2 * sigmoid(offset)


def weighted_means(delta: np.ndarray, topic: np.ndarray, weights: np.ndarray, n_topics: int):
    """Per-topic and dataset-wide means of weights·Δc: delta [P, C], topic [P] in 0..K-1 →
    ([K, C], [C]). Means divide by pair counts (not weight sums): a pair the shaped loss ignores
    contributes no gradient, it does not renormalize the others."""
    wd = weights[:, None] * delta                                          # [P, C]
    onehot = np.eye(n_topics)[topic]                                       # [P, K]
    counts = np.clip(onehot.sum(0), 1, None)                               # [K]
    return (onehot.T @ wd) / counts[:, None], wd.mean(0)


def spread_from_pairs(c_chosen: np.ndarray, c_rejected: np.ndarray, topic: np.ndarray, n_topics: int):
    """Variance [K, C] and mean [K, C] of c over both responses of each topic's pairs ([P, C] each)."""
    c = np.concatenate([c_chosen, c_rejected])                             # [2P, C]
    t = np.concatenate([topic, topic])
    var = np.full((n_topics, c.shape[1]), np.nan)
    mean = np.full_like(var, np.nan)
    for k in range(n_topics):
        sel = c[t == k]
        if len(sel):
            mean[k] = sel.mean(0)
            var[k] = sel.var(0, ddof=1) if len(sel) > 1 else np.nan
    return var, mean


def features(dbar: np.ndarray, dbar_all: np.ndarray, share: np.ndarray, spread: np.ndarray,
             expression: np.ndarray) -> dict[str, np.ndarray]:
    """Predictor inputs per row (all [R]): see the module docstring."""
    return {"x_own": spread * share * dbar, "x_leak": spread * dbar_all, "x_prompt": expression,
            "x_naive": dbar_all}


# -- reading the audit -----------------------------------------------------------------------------

def audit_pairs(audit: AuditFolder, pair_ids: Sequence[str] | None = None) -> np.ndarray:
    """Indices [P'] into the audit's pairs, in audit order: all of them, or only `pair_ids` (e.g.
    the pairs a run trained on; the audit's rows stay as context). An unknown id is an error."""
    if pair_ids is None:
        return np.arange(len(audit.pair_ids))
    idx = sorted({audit.pair_index(str(p)) for p in pair_ids})
    if not idx:
        raise AnatomistError(f"{audit.path}: no pair ids given to predict from")
    return np.asarray(idx)


def base_spread(scores: pd.DataFrame, topic_names: list[str], n_clusters: int):
    """Variance and mean [K, C] of c_C over the base model's generations per topic (eval table)."""
    cols = [f"c_{k}" for k in range(n_clusters)]
    missing = [c for c in ["topic", *cols] if c not in scores.columns]
    if missing:
        raise AnatomistError(f"base scores: missing column(s) {', '.join(missing[:5])}")
    var = np.full((len(topic_names), n_clusters), np.nan)
    mean = np.full_like(var, np.nan)
    for k, name in enumerate(topic_names):
        sel = scores.loc[scores["topic"] == name, cols].to_numpy(np.float64)
        if len(sel) > 1:
            var[k], mean[k] = sel.var(0, ddof=1), sel.mean(0)
    return var, mean


# -- the predictions table -------------------------------------------------------------------------

def predict_rows(audit: AuditFolder | str | Path, cfg: PredictConfig = PredictConfig(), *,
                 base_scores: pd.DataFrame | None = None, lam: Mapping[int, float] | None = None,
                 pair_ids: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per (topic, cluster) with the predictors' inputs (x_*) and the audit's context.

    base_scores: the base model's eval table (needed for spread="base"; only pre-training data).
    lam: {cluster: λ} to predict a shaped run (Δ̄ → Δ̄^λ); None or {} for plain DPO.
    pair_ids: predict from these audited pairs only (`audit_pairs`); None: all of them."""
    audit = audit if isinstance(audit, AuditFolder) else AuditFolder(audit)
    names = audit.topic_names
    if not names:
        raise AnatomistError(f"{audit.path / META}: records no topic names (topics.names)")
    sel = audit_pairs(audit, pair_ids)                                                 # [P]
    delta, topic = audit.delta[sel], audit.topic_ids[sel]                              # [P, C], [P]
    K, (P, C) = len(names), delta.shape
    bad = [c for c in (lam or {}) if not 0 <= int(c) < C]
    if bad:
        raise AnatomistError(f"λ names cluster {bad[0]}, but the audit has clusters 0..{C - 1}")
    weights = pair_weights(delta, lam)                                                 # [P]
    dbar, dbar_all = weighted_means(delta, topic, weights, K)                          # [K, C], [C]
    counts = np.bincount(topic, minlength=K)                                           # [K]
    var, expr = spread_from_pairs(audit.c_chosen[sel], audit.c_rejected[sel], topic, K)
    if cfg.spread == "base":
        if base_scores is None:
            raise AnatomistError("spread='base' needs the base model's eval scores (base_scores)")
        var, _ = base_spread(base_scores, names, C)
    elif cfg.spread == "none":
        var = np.ones((K, C))

    kk, cc = np.meshgrid(np.arange(K), np.arange(C), indexing="ij")                   # [K, C] each
    kk, cc = kk.ravel(), cc.ravel()
    share = counts[kk] / P
    x = features(dbar[kk, cc], dbar_all[cc], share, np.nan_to_num(var[kk, cc]), np.nan_to_num(expr[kk, cc]))
    audit_rows = audit.rows[audit.rows["topic"] != ALL].set_index(["topic_id", "cluster"])
    key = pd.MultiIndex.from_arrays([kk, cc])
    out = pd.DataFrame({
        "topic": [names[k] for k in kk], "topic_id": kk, "cluster": cc,
        "label": [audit.labels.get(int(c), "") for c in cc], "n": counts[kk], "share": share,
        "dbar": dbar[kk, cc], "dbar_all": dbar_all[cc], "spread": var[kk, cc], "expression": expr[kk, cc],
        "direction": audit_rows["direction"].reindex(key).fillna("none").to_numpy(),
        "q": audit_rows["q"].reindex(key).to_numpy() if "q" in audit_rows else np.nan,
        "tested": audit_rows["tested"].reindex(key).fillna(False).astype(bool).to_numpy(),
        **x,
    })
    out = out[out["n"] >= cfg.min_pairs].reset_index(drop=True)
    # a readable, calibration-free ranking: the own-topic drive s²·w·Δ̄, rescaled by the mean share
    out["score"] = out["x_own"] / max(float(out["share"].mean()), 1e-12) if len(out) else []
    return out


def apply_calibration(pred: pd.DataFrame, coefs: Mapping[str, list[float]]) -> pd.DataFrame:
    """Add pred_<name> = X·coef (ΔB units) for each predictor with coefficients (e.g. from a
    verify.json of another run: calibrate on one dataset, test on another)."""
    pred = pred.copy()
    for name, coef in coefs.items():
        if name not in PREDICTORS:
            raise AnatomistError(f"calibration names predictor {name!r}; known: {', '.join(PREDICTORS)}")
        cols, _ = PREDICTORS[name]
        if not set(cols) <= set(pred.columns):
            raise AnatomistError(f"calibration of {name!r} needs column(s) {', '.join(cols)}, which these "
                                 "predictions lack (the first-order inputs come from evaluate.firstorder)")
        if len(coef) != len(cols):
            raise AnatomistError(f"calibration of {name!r}: {len(coef)} coefficients for inputs {', '.join(cols)}")
        pred[f"pred_{name}"] = pred[list(cols)].to_numpy(np.float64) @ np.asarray(coef, dtype=np.float64)
    return pred


def write_predictions(audit_dir: str | Path, cfg: PredictConfig = PredictConfig(), *,
                      base_scores: pd.DataFrame | None = None, calibration: Mapping[str, list[float]] | None = None,
                      lam: Mapping[int, float] | None = None) -> tuple[Path, pd.DataFrame]:
    """Compute `predict_rows` and write AUDIT_DIR/predictions.parquet (+ predictions.json meta)."""
    audit_dir = Path(audit_dir)
    pred = predict_rows(audit_dir, cfg, base_scores=base_scores, lam=lam)
    if calibration:
        pred = apply_calibration(pred, calibration)
    path = audit_dir / "predictions.parquet"
    atomic_write_parquet(pred, path)
    atomic_write_text(audit_dir / "predictions.json", json.dumps(
        {"config": asdict(cfg), "lam": {str(k): float(v) for k, v in (lam or {}).items()},
         "calibration": dict(calibration or {}), "predictors": {k: list(v[0]) for k, v in PREDICTORS.items()}},
        indent=1))
    return path, pred
