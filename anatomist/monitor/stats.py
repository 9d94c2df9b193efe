"""The monitor's statistics: a metric's shift from step 0, paired by prompt, with a t-interval.

Every point samples the same prompts with the same seeds and sample counts, so two points differ
by the policy only. The unit is the prompt: its samples share a context and are not independent,
so each prompt's samples are averaged first (m_p), then the paired difference from step 0 is
taken per prompt, d_p = m_p(s) − m_p(0), and

    shift = mean_p d_p,   se = sd(d_p) / √P (ddof 1),   95% CI = shift ± t_{0.975, P−1}·se

(the cluster-robust interval of a mean over prompts; no resampling, so a resumed run recomputes
exactly the numbers an uninterrupted one wrote). With one prompt, or at step 0, the CI is the
point itself (se undefined → NaN bounds for P = 1).
"""

from __future__ import annotations

import numpy as np
from scipy import stats as sps

LEVEL = 0.95


def prompt_means(values: np.ndarray, n_prompts: int) -> np.ndarray:
    """values [P·S, M] (prompt-major: the S samples of prompt 0 first) → per-prompt means [P, M]."""
    values = np.asarray(values, dtype=np.float64)
    assert values.shape[0] % n_prompts == 0, (values.shape, n_prompts)
    return values.reshape(n_prompts, -1, values.shape[-1]).mean(1)


def paired_shift(now: np.ndarray, base: np.ndarray, level: float = LEVEL) -> dict[str, np.ndarray]:
    """now, base: per-prompt means [P, M] of the same prompts → mean [M] (level now), shift, se,
    ci_low, ci_high [M] each (see the module docstring)."""
    now, base = np.asarray(now, dtype=np.float64), np.asarray(base, dtype=np.float64)
    assert now.shape == base.shape and now.ndim == 2, (now.shape, base.shape)
    d = now - base                                                           # [P, M]
    p = d.shape[0]
    shift = d.mean(0)
    if p < 2:
        se = np.full(d.shape[1], np.nan)
    else:
        se = d.std(0, ddof=1) / np.sqrt(p)
    half = sps.t.ppf(0.5 + level / 2, p - 1) * se if p >= 2 else se
    return {"mean": now.mean(0), "shift": shift, "se": se, "ci_low": shift - half, "ci_high": shift + half}


def excludes_zero(ci_low: float, ci_high: float) -> int:
    """+1 when the CI lies above 0, −1 below, 0 when it covers 0 (or is undefined)."""
    if ci_low > 0:
        return 1
    if ci_high < 0:
        return -1
    return 0
