"""Pair statistics: does a concept (an SAE cluster, a screen detector) fire harder on chosen than on rejected?

Shared by the audit and the screen (`anatomist.screen`), so it sits on the ground floor. So does
`snis_prompt_shift`, the importance-weighted shift of a mean between two models (the paired ΔB
of `anatomist.evaluate.paired` and the paired monitor of `anatomist.monitor`).

Input is always a matrix of pair disparities Δ [P, F]: Δ_{i,f} = A_f(y⁺_i) − A_f(y⁻_i), so a
positive value means the chosen side fires harder (DESIGN.md). Columns are features, clusters or
(topic, cluster) rows alike. Per column:

    n          pairs tested
    mean       Δ̄
    sd         sample standard deviation of Δ (ddof = 1)
    d          Δ̄ / sd, the effect size
    se         standard error of Δ̄: sd / √n, or cluster-robust when pairs share prompts (below)
    z          Δ̄ / se; for ranking only — pairs share topics, so z is still inflated
    frac_pos   fraction of pairs with Δ > 0 (chosen fires harder)
    ci_low/hi  95% percentile-bootstrap CI of Δ̄ (pairs, or prompts, resampled with replacement);
               with n_boot = 0 the t-interval Δ̄ ± t_{0.975, df}·se instead (no resampling: the
               screen's choice on files of 10⁵ pairs, where the bootstrap's [B, G] counts cost seconds)
    split_half True when two random halves of the pairs (or prompts) give Δ̄ of the same (nonzero) sign
    p          two-sided t-test of Δ̄ = 0 (n − 1 degrees of freedom; G − 1 when clustered)
    q          Benjamini–Hochberg over every tested column passed to `add_q` together

Pairs that share a prompt (HH-RLHF's multi-turn siblings, files with several pairs per prompt)
are not independent: `groups` [P] names each pair's prompt, and where some prompt repeats the
prompt is the unit — the bootstrap and the split-half draw prompts, and se is the cluster-robust
(CR1) standard error of a mean over G prompts with residual sums E_g = Σ_{i∈g} (Δ_i − Δ̄):

    se² = G / (G − 1) · Σ_g E_g² / n²

(with every prompt unique this is exactly sd² / n). Where every prompt is unique the
independent-pairs formulas run unchanged, so the numbers are those of an unclustered call.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats as sps

COLUMNS = ("n", "mean", "sd", "d", "se", "z", "frac_pos", "ci_low", "ci_high", "split_half", "p")


def prompt_clusters(keys) -> np.ndarray | None:
    """Cluster index per pair [P] (0 … G−1 in order of first appearance) from one hashable key per
    pair; None when every key is unique (independent pairs: nothing to cluster)."""
    codes = pd.factorize(pd.Series(list(keys), dtype=object))[0]
    return None if codes.size == 0 or codes.max() + 1 == codes.size else codes


def cluster_sums(x: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Per-cluster column sums of x [P, F] → [G, F]."""
    out = np.zeros((int(codes.max()) + 1, x.shape[1]))
    np.add.at(out, codes, x)
    return out


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
                      rng: np.random.Generator, groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Percentile CI of the column means of delta [P, F], resampling rows — or, with `groups` [P]
    where some group repeats, resampling whole groups (the cluster bootstrap); returns ([F], [F])."""
    n = delta.shape[0]
    codes = None if groups is None else prompt_clusters(groups)
    G = n if codes is None else int(codes.max()) + 1
    # Resample counts instead of indices: one [B, G] @ [G, F] matmul instead of a [B, G, F] gather.
    counts = np.zeros((n_boot, G))
    np.add.at(counts, (np.repeat(np.arange(n_boot), G), rng.integers(0, G, size=n_boot * G)), 1.0)
    if codes is None:
        means = counts @ delta / n  # [B, F]
    else:  # a resample's mean over the pairs of its drawn prompts: Σ c_g S_g / Σ c_g n_g
        means = counts @ cluster_sums(delta, codes) / (counts @ np.bincount(codes))[:, None]
    tail = (1 - level) / 2
    return np.quantile(means, tail, axis=0), np.quantile(means, 1 - tail, axis=0)


def clustered_se(delta: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Cluster-robust (CR1) standard error of the column means of delta [P, F] with clusters
    codes [P] → [F]: se² = G/(G−1) · Σ_g (Σ_{i∈g} (Δ_i − Δ̄))² / P². NaN with one cluster."""
    n, G = delta.shape[0], int(codes.max()) + 1
    resid = cluster_sums(delta - delta.mean(0), codes)                           # [G, F]
    factor = G / (G - 1) if G > 1 else np.nan
    return np.sqrt(factor * (resid ** 2).sum(0)) / n


def pair_stats(delta: np.ndarray, *, n_boot: int = 1000, seed: int = 0, names=None,
               groups: np.ndarray | None = None) -> pd.DataFrame:
    """Per-column statistics of Δ [P, F] (see the module docstring); one row per column.
    groups [P]: each pair's prompt (any hashable labels); None or all distinct = independent pairs."""
    delta = np.asarray(delta, dtype=np.float64)
    assert delta.ndim == 2, f"expected Δ of shape [pairs, columns], got {delta.shape}"
    n, f = delta.shape
    assert groups is None or len(groups) == n, "one group label per pair"
    codes = None if groups is None else prompt_clusters(groups)
    rng = np.random.default_rng(seed)
    mean = delta.mean(0)
    sd = delta.std(0, ddof=1) if n > 1 else np.full(f, np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.where(sd > 0, mean / sd, 0.0)
        if codes is None:
            se = sd / np.sqrt(n)
            z = d * np.sqrt(n)
            p = np.where(sd > 0, 2 * sps.t.sf(np.abs(z), df=max(n - 1, 1)), 1.0)
        else:
            G = int(codes.max()) + 1
            se = clustered_se(delta, codes)
            z = np.where(se > 0, mean / se, 0.0)
            p = np.where(se > 0, 2 * sps.t.sf(np.abs(z), df=max(G - 1, 1)), 1.0)
    if n_boot > 0:
        lo, hi = bootstrap_mean_ci(delta, n_boot=n_boot, rng=rng, groups=codes)
    else:
        df = max((n if codes is None else int(codes.max()) + 1) - 1, 1)
        half_width = sps.t.ppf(0.975, df) * se
        lo, hi = mean - half_width, mean + half_width
    if codes is None:
        half = rng.permutation(n)
        a, b = delta[half[: n // 2]].mean(0), delta[half[n // 2:]].mean(0)
    else:  # halves of the prompts, so siblings never sit on both sides
        in_a = np.isin(codes, rng.permutation(G)[: G // 2])
        # one prompt: no two halves, so no agreement (a = 0 marks it)
        a, b = (delta[in_a].mean(0), delta[~in_a].mean(0)) if G > 1 else (np.zeros(f), np.zeros(f))
    frame = pd.DataFrame({
        "n": n, "mean": mean, "sd": sd, "d": d, "se": se, "z": z, "frac_pos": (delta > 0).mean(0),
        "ci_low": lo, "ci_high": hi, "split_half": (np.sign(a) == np.sign(b)) & (a != 0), "p": p,
    }, index=names)
    return frame


def add_q(frame: pd.DataFrame, tested: np.ndarray | None = None) -> pd.DataFrame:
    """Add BH q-values over the rows marked `tested` (default: all); untested rows get NaN."""
    p = frame["p"].to_numpy(dtype=np.float64).copy()
    if tested is not None:
        p[~np.asarray(tested, dtype=bool)] = np.nan
    return frame.assign(q=benjamini_hochberg(p))


def auroc(score: np.ndarray, label: np.ndarray, weight: np.ndarray | None = None) -> np.ndarray:
    """AUROC of score [R] for telling label-True from label-False rows [R], once per weight row
    w [B, R] (resample counts; None = one row of ones) → [B]: Σ_{i∈T, j∈F} w_i w_j (1[s_i > s_j] +
    ½·1[s_i = s_j]) / (Σ_T w · Σ_F w) — the Mann–Whitney U with ties counting one half. NaN where a
    weight row leaves no True or no False row."""
    label = np.asarray(label, dtype=bool)
    w = np.ones((1, len(score))) if weight is None else np.atleast_2d(np.asarray(weight, dtype=np.float64))
    _, level = np.unique(np.asarray(score), return_inverse=True)                 # [R] tie groups, ascending
    U = int(level.max()) + 1
    pos, neg = np.zeros((len(w), U)), np.zeros((len(w), U))                      # [B, U] weight per tie group
    np.add.at(pos.T, level[label], w[:, label].T)
    np.add.at(neg.T, level[~label], w[:, ~label].T)
    below = np.cumsum(neg, 1) - neg                                              # [B, U] False weight strictly below
    num_ = (pos * (below + 0.5 * neg)).sum(1)
    den = pos.sum(1) * neg.sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num_ / den, np.nan)


def auroc_ci(score: np.ndarray, label: np.ndarray, *, groups: np.ndarray, n_boot: int = 1000, level: float = 0.95,
             rng: np.random.Generator, chunk: int = 200) -> tuple[float, float, float]:
    """(AUROC, CI low, CI high) of score [R] for label [R]; the percentile bootstrap resamples the
    groups [R] (row → unit, e.g. the prompt of the pair a response belongs to: a pair's two
    responses, and sibling pairs, are not independent), in chunks of `chunk` resamples."""
    codes = pd.factorize(pd.Series(list(groups), dtype=object))[0]
    G = int(codes.max()) + 1
    boots = []
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        counts = np.zeros((b, G))                                                # [b, G]
        np.add.at(counts, (np.repeat(np.arange(b), G), rng.integers(0, G, size=b * G)), 1.0)
        boots.append(auroc(score, label, counts[:, codes]))                      # weights [b, R]
    boots = np.concatenate(boots)
    boots = boots[~np.isnan(boots)]
    tail = (1 - level) / 2
    lo, hi = (np.quantile(boots, [tail, 1 - tail]) if len(boots) else (np.nan, np.nan))
    return float(auroc(score, label)[0]), float(lo), float(hi)


def snis_prompt_shift(c: np.ndarray, log_ratio: np.ndarray) -> tuple[np.ndarray, float]:
    """One prompt's shift of E[c] from the model its n samples were drawn from to another, by
    self-normalised importance sampling: w = softmax(log_ratio) (log π_new − log π_old of each
    sample [n]), shift = Σ_j w_j c_j − mean_j c_j [C] from the samples' scores c [n, C], and the
    effective sample size 1 / Σ_j w_j² (n when the models agree, → 1 as the weights degenerate).
    Used by the paired ΔB (`anatomist.evaluate.paired`) and the paired monitor."""
    z = np.asarray(log_ratio, dtype=np.float64)
    w = np.exp(z - z.max())
    w /= w.sum()
    c = np.asarray(c, dtype=np.float64)
    return w @ c - c.mean(0), float(1.0 / (w ** 2).sum())
