"""The table the user reads first: one row per (topic, concept cluster).

For pairs of topic k, Δc_{i,C} = c_C(y⁺_i) − c_C(y⁻_i) is tested with `pair_stats`; rows with
topic "all" are the dataset-wide view. BH q-values run over every tested row together.

    baseline   Δ̄ of the cluster over all pairs
    excess     Δ̄_{k,C} − baseline: how much this topic's asymmetry exceeds the dataset's
    excess_z   excess / se_{k,C} (se: sd / √n, or clustered by prompt where pairs share prompts)
    rank_score |excess_z| for topic rows, |z| for dataset-wide rows. Order: topic rows, then
               dataset-wide rows; within each, rows with a direction first, then by rank_score
    direction  what DPO is predicted to do to the concept in that topic: "amplify" (chosen side
               fires harder), "suppress", or "none" — a direction needs q < alpha and split-half ✓
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from anatomist.audit.stats import add_q, pair_stats

ALL = "all"


def direction(mean: float, q: float, split_half: bool, alpha: float) -> str:
    if not (q < alpha and split_half):  # NaN q (untested) compares False
        return "none"
    return "amplify" if mean > 0 else "suppress"


def topic_cluster_rows(delta_c: np.ndarray, topics: np.ndarray, topic_names: list[str], *, min_pairs: int = 8,
                       alpha: float = 0.05, n_boot: int = 1000, seed: int = 0,
                       groups: np.ndarray | None = None) -> pd.DataFrame:
    """Rows for delta_c [P, C] (pair disparity of concept scores) and topics [P] (index per pair);
    groups [P]: each pair's prompt cluster (`stats.prompt_clusters`; None: pairs are independent)."""
    P, C = delta_c.shape
    assert len(topics) == P and (groups is None or len(groups) == P)
    blocks = []
    overall = pair_stats(delta_c, n_boot=n_boot, seed=seed, groups=groups)
    for k, name in [(None, ALL), *enumerate(topic_names)]:
        sel = np.ones(P, dtype=bool) if k is None else topics == k
        if sel.sum() < 2:
            continue
        s = pair_stats(delta_c[sel], n_boot=n_boot, seed=seed + (0 if k is None else k + 1),
                       groups=None if groups is None else np.asarray(groups)[sel])
        s.insert(0, "cluster", np.arange(C))
        s.insert(0, "topic", name)
        s.insert(1, "topic_id", -1 if k is None else k)
        s["baseline"] = overall["mean"].to_numpy()
        s["excess"] = s["mean"] - s["baseline"]
        with np.errstate(divide="ignore", invalid="ignore"):
            s["excess_z"] = np.where(s["se"] > 0, s["excess"] / s["se"], 0.0)
        s["tested"] = s["n"] >= min_pairs
        blocks.append(s)
    rows = pd.concat(blocks, ignore_index=True)
    rows = add_q(rows, tested=rows["tested"].to_numpy())
    rows["direction"] = [direction(m, q, sh, alpha) for m, q, sh in zip(rows["mean"], rows["q"], rows["split_half"])]
    rows["rank_score"] = np.where(rows["topic"] == ALL, np.abs(rows["z"]), np.abs(rows["excess_z"]))
    rows["_all"], rows["_none"] = rows["topic"] == ALL, rows["direction"] == "none"
    rows = rows.sort_values(["_all", "_none", "rank_score"], ascending=[True, True, False], kind="stable")
    return rows.drop(columns=["_all", "_none"]).reset_index(drop=True)
