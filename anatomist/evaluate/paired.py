"""A paired, lower-variance measure of the behaviour shift ΔB: one set of samples, two models.

The direct measure, ΔB_x = mean c(post samples) − mean c(pre samples), differences two
independent sample means, so its variance is the sum of both. Scoring the SAME base samples
y_j ∼ π_pre,T(·|x) under both models gives importance weights for the post model,

    r_j = log π_post,T(y_j|x) − log π_pre,T(y_j|x),   w = softmax(r) over the prompt's samples,
    ΔB̂_x = Σ_j w_j c(y_j) − mean_j c(y_j),

self-normalised importance sampling (SNIS) of E_post[c] minus the plain mean of the same values:
the responses' own spread cancels between the two terms. T is the sampling temperature (the
log-probs are of the tempered distributions the evaluation samples from). SNIS is biased by
O(1/n) and its variance grows as the weights degenerate, so each prompt reports its effective
sample size ESS_x = 1/Σ_j w_j², and where ESS_x < min_ess·n_x the prompt falls back to the
direct difference of its post and pre sample means. Topic and concept values are means over
prompts, with the prompt-level standard error (what a new draw of prompts would change).

The predictor and this target must not share samples (or R² is inflated): the caller passes the
half of the base generations the predictor did not use.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from anatomist.errors import AnatomistError
from anatomist.stats import snis_prompt_shift

__all__ = ["PairedShift", "snis_prompt_shift", "paired_shift_table", "sample_halves", "paired_actual"]


@dataclass(frozen=True)
class PairedShift:
    topic: np.ndarray        # [K, C] mean over the topic's prompts (NaN: no prompt)
    topic_se: np.ndarray     # [K, C] prompt-level standard error (NaN with < 2 prompts)
    concept: np.ndarray      # [C] mean over all prompts
    concept_se: np.ndarray   # [C]
    prompts: np.ndarray      # [X] prompt ids, in the order of the per-prompt arrays below
    ess: np.ndarray          # [X] effective sample size of the SNIS weights
    fallback: np.ndarray     # [X] bool: ESS too low, the direct difference was used


def _mean_se(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    se = values.std(0, ddof=1) / np.sqrt(len(values)) if len(values) > 1 else np.full(values.shape[1], np.nan)
    return values.mean(0), se


def paired_shift_table(c_pre: np.ndarray, log_ratio: np.ndarray, prompt_pre: np.ndarray, topic_pre: np.ndarray,
                       c_post: np.ndarray, prompt_post: np.ndarray, n_topics: int, *,
                       min_ess: float = 0.3) -> PairedShift:
    """ΔB per (topic, concept) and per concept from base samples (c_pre [N, C], their log-ratio
    [N], prompt and topic [N]) with the post model's own samples (c_post [M, C], prompt [M]) as
    the fallback for prompts whose ESS < min_ess × their sample count."""
    c_pre, c_post = np.asarray(c_pre, np.float64), np.asarray(c_post, np.float64)
    prompt_pre, prompt_post, topic_pre = np.asarray(prompt_pre), np.asarray(prompt_post), np.asarray(topic_pre)
    assert c_pre.ndim == c_post.ndim == 2 and len(c_pre) == len(log_ratio) == len(prompt_pre) == len(topic_pre)
    prompts = np.unique(prompt_pre)
    shifts, ess, fallback, tops = [], [], [], []
    for x in prompts:
        rows = prompt_pre == x
        shift, e = snis_prompt_shift(c_pre[rows], np.asarray(log_ratio)[rows])
        low = e < min_ess * rows.sum()
        if low:
            post = c_post[prompt_post == x]
            if not len(post):
                raise ValueError(f"prompt {x!r}: ESS {e:.1f} of {rows.sum()} and no post samples to fall back on")
            shift = post.mean(0) - c_pre[rows].mean(0)
        assert len(set(topic_pre[rows].tolist())) == 1, "a prompt belongs to one topic"
        shifts.append(shift)
        ess.append(e)
        fallback.append(low)
        tops.append(int(topic_pre[rows][0]))
    arr, tops_arr = np.stack(shifts), np.array(tops)                           # [X, C], [X]
    C = arr.shape[1]
    topic, topic_se = np.full((n_topics, C), np.nan), np.full((n_topics, C), np.nan)
    for k in range(n_topics):
        if (tops_arr == k).any():
            topic[k], topic_se[k] = _mean_se(arr[tops_arr == k])
    concept, concept_se = _mean_se(arr)
    return PairedShift(topic, topic_se, concept, concept_se, prompts, np.array(ess), np.array(fallback))


def sample_halves(base: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split an eval table's samples of every prompt into two disjoint halves by sample index
    (even → the predictor's, odd → the target's), so the first-order predictor and the paired ΔB
    never read the same generation. Every prompt needs ≥ 4 samples (two per half: a covariance
    and an SNIS weight need two)."""
    counts = base.groupby("prompt_id")["sample"].nunique()
    if len(counts) == 0 or counts.min() < 4:
        raise AnatomistError(f"sample halves need >= 4 samples per prompt; the fewest here is "
                             f"{int(counts.min()) if len(counts) else 0} (evaluate with --samples 4 or more)")
    odd = (base["sample"].to_numpy() % 2).astype(bool)
    return base[~odd].reset_index(drop=True), base[odd].reset_index(drop=True)


def paired_actual(target: pd.DataFrame, log_ratio: np.ndarray, post: pd.DataFrame, clusters: list[int], *,
                  min_ess: float = 0.3, z: float = 1.96) -> tuple[pd.DataFrame, dict]:
    """The paired ΔB in `verify.actual_shifts`' layout (topic incl. "all", cluster, actual,
    ci_low, ci_high, se, pre, n_prompts; CI = ± z·se over prompts) from the target half of the base
    generations `target` (eval table), their log π_post,T − log π_pre,T [N], and the post model's
    own generations `post` (the fallback). Also returns the weights' health: ESS and fallbacks."""
    cols = [f"c_{k}" for k in clusters]
    names = sorted(target["topic"].astype(str).unique())
    topic = target["topic"].astype(str).map({k: i for i, k in enumerate(names)}).to_numpy()
    table = paired_shift_table(target[cols].to_numpy(), np.asarray(log_ratio), target["prompt_id"].astype(str).to_numpy(),
                               topic, post[cols].to_numpy(), post["prompt_id"].astype(str).to_numpy(), len(names),
                               min_ess=min_ess)
    n_prompts = target.groupby("topic")["prompt_id"].nunique()
    blocks = []
    for k, name in enumerate([*names, "all"]):
        shift, se = (table.topic[k], table.topic_se[k]) if name != "all" else (table.concept, table.concept_se)
        sel = target if name == "all" else target[target["topic"].astype(str) == name]
        blocks.append(pd.DataFrame({"topic": name, "cluster": clusters, "actual": shift, "ci_low": shift - z * se,
                                    "ci_high": shift + z * se, "se": se, "pre": sel[cols].to_numpy().mean(0),
                                    "n_prompts": int(n_prompts.sum() if name == "all" else n_prompts[name])}))
    samples = target.groupby("prompt_id").size().reindex(table.prompts).to_numpy()
    health = {"n_prompts": int(len(table.prompts)), "median_ess_share": float(np.median(table.ess / samples)),
              "fallback_share": float(table.fallback.mean()), "min_ess": min_ess}
    return pd.concat(blocks, ignore_index=True), health
