"""Pair statistics for the audit: does a concept fire harder on chosen than on rejected responses?

Input is always a matrix of pair disparities Δ [P, F]: Δ_{i,f} = A_f(y⁺_i) − A_f(y⁻_i), so a
positive value means the chosen side fires harder (DESIGN.md). Columns are features, clusters or
(topic, cluster) rows alike. Per column:

    n          pairs tested
    mean       Δ̄
    sd         sample standard deviation of Δ (ddof = 1)
    d          Δ̄ / sd, the effect size
    z          Δ̄ / (sd / √n); for ranking only — pairs share prompts and topics, so z is inflated
    frac_pos   fraction of pairs with Δ > 0 (chosen fires harder)
    ci_low/hi  95% percentile-bootstrap CI of Δ̄ (pairs resampled with replacement)
    split_half True when two random halves of the pairs give Δ̄ of the same (nonzero) sign
    p          two-sided one-sample t-test of Δ̄ = 0 (n − 1 degrees of freedom)
    q          Benjamini–Hochberg over every tested column passed to `add_q` together
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats as sps

COLUMNS = ("n", "mean", "sd", "d", "z", "frac_pos", "ci_low", "ci_high", "split_half", "p")


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """BH q-values (step-up, monotone, capped at 1); NaN p (untested) stays NaN and is not counted."""
    p = np.asarray(p, dtype=np.float64)
    q = np.full_like(p, np.nan)
    tested = ~np.isnan(p)
    m = int(tested.sum())
    if m == 0:
        return q
    pt = p[tested]
    order = np.argsort(pt)
    ranked = pt[order] * m / np.arange(1, m + 1)
    ranked = np.minimum.accumulate(ranked[::-1])[::-1]  # q_(i) = min_{j >= i} p_(j) m / j
    out = np.empty(m)
    out[order] = np.minimum(ranked, 1.0)
    q[tested] = out
    return q


def bootstrap_mean_ci(delta: np.ndarray, *, n_boot: int = 1000, level: float = 0.95,
                      rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Percentile CI of the column means of delta [P, F], resampling rows; returns ([F], [F])."""
    n = delta.shape[0]
    # Resample counts instead of indices: one [B, P] @ [P, F] matmul instead of a [B, P, F] gather.
    counts = np.zeros((n_boot, n))
    np.add.at(counts, (np.repeat(np.arange(n_boot), n), rng.integers(0, n, size=n_boot * n)), 1.0)
    means = counts @ delta / n  # [B, F]
    tail = (1 - level) / 2
    return np.quantile(means, tail, axis=0), np.quantile(means, 1 - tail, axis=0)


def pair_stats(delta: np.ndarray, *, n_boot: int = 1000, seed: int = 0, names=None) -> pd.DataFrame:
    """Per-column statistics of Δ [P, F] (see the module docstring); one row per column."""
    delta = np.asarray(delta, dtype=np.float64)
    assert delta.ndim == 2, f"expected Δ of shape [pairs, columns], got {delta.shape}"
    n, f = delta.shape
    rng = np.random.default_rng(seed)
    mean = delta.mean(0)
    sd = delta.std(0, ddof=1) if n > 1 else np.full(f, np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.where(sd > 0, mean / sd, 0.0)
        z = d * np.sqrt(n)
        p = np.where(sd > 0, 2 * sps.t.sf(np.abs(z), df=max(n - 1, 1)), 1.0)
    lo, hi = bootstrap_mean_ci(delta, n_boot=n_boot, rng=rng)
    half = rng.permutation(n)
    a, b = delta[half[: n // 2]].mean(0), delta[half[n // 2:]].mean(0)
    frame = pd.DataFrame({
        "n": n, "mean": mean, "sd": sd, "d": d, "z": z, "frac_pos": (delta > 0).mean(0),
        "ci_low": lo, "ci_high": hi, "split_half": (np.sign(a) == np.sign(b)) & (a != 0), "p": p,
    }, index=names)
    return frame


def add_q(frame: pd.DataFrame, tested: np.ndarray | None = None) -> pd.DataFrame:
    """Add BH q-values over the rows marked `tested` (default: all); untested rows get NaN."""
    p = frame["p"].to_numpy(dtype=np.float64).copy()
    if tested is not None:
        p[~np.asarray(tested, dtype=bool)] = np.nan
    return frame.assign(q=benjamini_hochberg(p))
