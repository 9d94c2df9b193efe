"""Scoring a predictor against measured shifts: R², Spearman ρ, calibration by cross-fitting, and
bootstrap intervals over rows (pure functions of arrays; `verify` applies them at two levels).

    R² = 1 − Σ(y − ŷ)² / Σ(y − ȳ)² over the scored rows (can be < 0).
    Calibration: y ≈ X·coef, least squares without intercept (zero drive, zero shift), each
    group's rows predicted with coef fit on the other groups (`cross_fit`).
    Intervals (`row_bootstrap`): percentile bootstrap resampling rows, predictions held fixed;
    one resample serves every predictor, so the difference of two predictors' R² is paired.
    Sign accuracy (`sign_accuracy`): on rows whose measured shift is sure (its 95% interval
    excludes 0), the share whose prediction has the same sign.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from scipy import stats as sps

__all__ = ["r2_score", "spearman", "fit_coef", "cross_fit", "group_means_r2", "bootstrap_r2", "row_bootstrap",
           "sign_accuracy"]


def r2_score(y: np.ndarray, yhat: np.ndarray) -> float:
    """1 − SS_res / SS_tot, SS_tot around the mean of y; NaN when y is constant."""
    y, yhat = np.asarray(y, np.float64), np.asarray(yhat, np.float64)
    ss_tot = ((y - y.mean()) ** 2).sum()
    return float(1 - ((y - yhat) ** 2).sum() / ss_tot) if ss_tot > 0 else float("nan")


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(sps.spearmanr(a, b).statistic)


def fit_coef(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares y ≈ X·coef without intercept: X [R, J], y [R] → [J] (minimum-norm if rank-deficient),
    over the rows where X and y are finite (a first-order row of a topic with no prompt sampled
    twice is NaN: it cannot be predicted, and must not poison the others' fit)."""
    X, y = np.asarray(X, np.float64), np.asarray(y, np.float64)
    ok = np.isfinite(X).all(1) & np.isfinite(y)
    return np.linalg.lstsq(X[ok], y[ok], rcond=None)[0]


def cross_fit(X: np.ndarray, y: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Out-of-group predictions ŷ [R]: each group's rows predicted with coef fit on all other groups."""
    yhat = np.full(len(y), np.nan)
    for g in np.unique(groups):
        held = groups == g
        if (~held).sum() == 0:
            continue
        yhat[held] = X[held] @ fit_coef(X[~held], y[~held])
    return yhat


def group_means_r2(y: np.ndarray, groups: np.ndarray) -> float:
    """R² of predicting y [R] by its group's mean (in sample): the share of y's variance between groups."""
    y = np.asarray(y, np.float64)
    means = pd.Series(y).groupby(np.asarray(groups)).transform("mean").to_numpy()
    return r2_score(y, means)


def bootstrap_r2(y: np.ndarray, yhat: np.ndarray, *, n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile CI of R² resampling rows with replacement (predictions held fixed)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(y), size=(n_boot, len(y)))                   # [B, R]
    yb, pb = y[idx], yhat[idx]
    ss_tot = ((yb - yb.mean(1, keepdims=True)) ** 2).sum(1)
    r2 = 1 - ((yb - pb) ** 2).sum(1) / np.where(ss_tot > 0, ss_tot, np.nan)
    tail = (1 - level) / 2
    return float(np.nanquantile(r2, tail)), float(np.nanquantile(r2, 1 - tail))


def _r2_rows(yb: np.ndarray, pb: np.ndarray) -> np.ndarray:
    ss_tot = ((yb - yb.mean(1, keepdims=True)) ** 2).sum(1)                 # [B]
    return 1 - ((yb - pb) ** 2).sum(1) / np.where(ss_tot > 0, ss_tot, np.nan)


def _rank_rows(x: np.ndarray) -> np.ndarray:
    return sps.rankdata(x, axis=1)


def row_bootstrap(y: np.ndarray, preds: Mapping[str, np.ndarray], *, baselines: tuple[str, ...] = (),
                  n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, dict]:
    """Percentile intervals from one set of row resamples shared by every predictor, over the rows
    where y and every prediction are finite. Per predictor: r2_ci, rho_ci, and for each name b in
    `baselines` (other than itself) r2_minus_<b>: [estimate, low, high] of R²(pred) − R²(b)."""
    y = np.asarray(y, np.float64)
    ok = np.isfinite(y) & np.all([np.isfinite(np.asarray(p, np.float64)) for p in preds.values()], axis=0)
    y = y[ok]
    P = {k: np.asarray(v, np.float64)[ok] for k, v in preds.items()}
    tail = (1 - level) / 2
    if len(y) < 3:
        return {k: {"n_rows": int(len(y))} for k in P}
    idx = np.random.default_rng(seed).integers(0, len(y), size=(n_boot, len(y)))     # [B, R]
    yb = y[idx]
    r2 = {k: _r2_rows(yb, p[idx]) for k, p in P.items()}                              # [B] each
    yr = _rank_rows(yb)
    out = {}
    for k, p in P.items():
        pr = _rank_rows(p[idx])
        rho = np.array([np.corrcoef(a, b)[0, 1] if np.ptp(a) and np.ptp(b) else np.nan for a, b in zip(pr, yr)])
        entry = {"n_rows": int(len(y)), "r2_ci": [float(np.nanquantile(r2[k], tail)), float(np.nanquantile(r2[k], 1 - tail))],
                 "rho_ci": [float(np.nanquantile(rho, tail)), float(np.nanquantile(rho, 1 - tail))]}
        for b in baselines:
            if b in P and b != k:
                d = r2[k] - r2[b]
                entry[f"r2_minus_{b}"] = [r2_score(y, p) - r2_score(y, P[b]), float(np.nanquantile(d, tail)),
                                          float(np.nanquantile(d, 1 - tail))]
        out[k] = entry
    return out


def sign_accuracy(y: np.ndarray, yhat: np.ndarray, sure: np.ndarray) -> tuple[float, int]:
    """(share of `sure` rows whose prediction has the sign of y, number of such rows); NaN when
    none. y, yhat [R]; sure [R] bool (the measured shift's interval excludes 0)."""
    y, yhat, sure = np.asarray(y, np.float64), np.asarray(yhat, np.float64), np.asarray(sure, bool)
    sel = sure & np.isfinite(yhat) & np.isfinite(y)
    if not sel.any():
        return float("nan"), 0
    return float((np.sign(yhat[sel]) == np.sign(y[sel])).mean()), int(sel.sum())
