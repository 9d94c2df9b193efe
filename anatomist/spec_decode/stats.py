"""Small statistics without scipy: chi-square goodness of fit and a least-squares line with CIs."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

__all__ = ["chi2_sf", "chisquare_gof", "LineFit", "linear_fit"]


def chi2_sf(x: float, df: int) -> float:
    """Upper tail P(χ²_df ≥ x) = Q(df/2, x/2), the regularised upper incomplete gamma."""
    if df <= 0:
        return 1.0
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64),
                                         torch.tensor(x / 2, dtype=torch.float64)))


def chisquare_gof(observed: torch.Tensor, expected_probs: torch.Tensor, min_expected: float = 5.0
                  ) -> tuple[float, int, float]:
    """Pearson χ² of counts [C] against probabilities [C]; cells with expected count below
    `min_expected` are pooled into one (the usual validity rule). → (statistic, df, p-value)."""
    observed = observed.double().flatten()
    n = observed.sum()
    expected = expected_probs.double().flatten() / expected_probs.double().sum() * n
    small = expected < min_expected
    obs = torch.cat([observed[~small], observed[small].sum()[None]]) if small.any() else observed
    exp = torch.cat([expected[~small], expected[small].sum()[None]]) if small.any() else expected
    keep = exp > 0
    if (obs[~keep] > 0).any():
        return float("inf"), int(keep.sum()) - 1, 0.0  # mass where the target has none
    obs, exp = obs[keep], exp[keep]
    stat = float(((obs - exp) ** 2 / exp).sum())
    df = int(obs.numel()) - 1
    return stat, df, chi2_sf(stat, df)


class LineFit(NamedTuple):
    slope: float
    intercept: float
    slope_se: float
    slope_ci: tuple[float, float]  # 95%, normal approximation (n is in the thousands here)
    n: int


def linear_fit(x: torch.Tensor, y: torch.Tensor) -> LineFit:
    """Ordinary least squares y ≈ a + b·x with the slope's standard error and 95% CI."""
    x, y = x.double().flatten(), y.double().flatten()
    n = x.numel()
    if n < 3 or float(x.var()) == 0:
        return LineFit(float("nan"), float("nan"), float("nan"), (float("nan"), float("nan")), n)
    xm, ym = x.mean(), y.mean()
    sxx = ((x - xm) ** 2).sum()
    b = ((x - xm) * (y - ym)).sum() / sxx
    a = ym - b * xm
    resid = y - a - b * x
    se = math.sqrt(float((resid ** 2).sum()) / (n - 2) / float(sxx))
    return LineFit(float(b), float(a), se, (float(b) - 1.96 * se, float(b) + 1.96 * se), n)
