"""Effect sizes of an intervention with prompt- or pair-bootstrap CIs (how much shaping removed of
what plain DPO taught; used by benchmarks/shaping.py and benchmarks/sweep_traits.py).

    counts = boot_counts(n, 2000, seed=0)         # one resampling of n prompts (or pairs)
    mean_ci(x, counts)                            # (mean, low, high) of per-prompt values x [n]
    increase_reduction(pre, plain, variant, counts)
"""

from __future__ import annotations

import numpy as np


def boot_counts(n: int, n_boot: int, seed: int) -> np.ndarray:
    """[B, n] resampling counts of n prompts (one draw shared by every statistic of a run, so pre,
    plain and a variant are resampled jointly: they were evaluated on the same prompts)."""
    rng = np.random.default_rng(seed)
    counts = np.zeros((n_boot, n))
    np.add.at(counts, (np.repeat(np.arange(n_boot), n), rng.integers(0, n, size=n_boot * n)), 1.0)
    return counts


def mean_ci(x: np.ndarray, counts: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """Mean of per-prompt values x [P] and its percentile bootstrap CI."""
    boots = counts @ x / x.shape[0]                                            # [B]
    tail = (1 - level) / 2
    return float(x.mean()), float(np.quantile(boots, tail)), float(np.quantile(boots, 1 - tail))


def increase_reduction(pre: np.ndarray, plain: np.ndarray, variant: np.ndarray, counts: np.ndarray,
                       level: float = 0.95) -> tuple[float, float, float]:
    """1 − Δ_variant / Δ_plain with Δ = mean(post − pre) over the same prompts [P]; 1 = the variant
    removes the whole increase plain DPO made, 0 = none of it, < 0 = it adds more.
    CI: percentile bootstrap over prompts; resamples where plain did not increase (Δ_plain ≤ 0)
    have no defined reduction and are left out (NaN when there is no defined estimate)."""
    d_plain, d_var = plain - pre, variant - pre                                # [P]
    point = 1 - d_var.mean() / d_plain.mean() if d_plain.mean() > 0 else float("nan")
    bp, bv = counts @ d_plain, counts @ d_var                                  # [B] (sums: the ratio is the same)
    ok = bp > 0
    if not ok.any():
        return float(point), float("nan"), float("nan")
    r = 1 - bv[ok] / bp[ok]
    tail = (1 - level) / 2
    return float(point), float(np.quantile(r, tail)), float(np.quantile(r, 1 - tail))


def fmt(ci, pct: bool = True, sign: str = "+") -> str:
    """"m [lo, hi]" of a (mean, low, high) triple, in percent (points) or as is."""
    if ci is None:
        return "—"
    k, spec = (100, f"{sign}6.1f") if pct else (1, f"{sign}6.2f")
    return f"{k * ci[0]:{spec}} [{k * ci[1]:{spec}}, {k * ci[2]:{spec}}]"
