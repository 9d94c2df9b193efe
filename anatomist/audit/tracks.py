"""Detector evidence beside a concept's label: which of the screen's detectors a concept tracks.

For concept C and detector d over the audited responses r (pair i's chosen = 2i, rejected = 2i+1),
AUROC_{C,d} = P(c_C(r) > c_C(r') | d fires on r, not on r') (ties ½): how well the concept's
per-response score (the audit's standardized concept score, `Concepts.scores`) picks out the
responses the detector fires on. Its 95% CI resamples prompts (a pair's two responses and sibling
pairs move together). A concept "tracks" d when

    n_fires ≥ MIN_FIRES and n_quiet ≥ MIN_FIRES    (enough responses on each side to judge)
    CI low ≥ CI_LOW_MIN                            (the concept separates them, not by chance)

Only candidates whose point AUROC reaches CI_LOW_MIN are bootstrapped (a percentile CI's low end
sits below its point estimate), so C × D pairs cost one rank pass each and a few bootstraps.
The AUROC pools every response, so a concept can also track a detector through what both share
(a topic, a side); the organism scorer's stratified match (organism/score.py) is the stricter test.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from anatomist.stats import auroc, auroc_ci

CI_LOW_MIN = 0.7     # the CI's lower end a concept must reach to be said to track a detector
MIN_FIRES = 10       # responses the detector must fire on (and stay quiet on) to be judged
COLUMNS = ("cluster", "detector", "auroc", "ci_low", "ci_high", "n_fires")


def detector_tracks(c: np.ndarray, fires: np.ndarray, detectors: list[str], groups: np.ndarray, *,
                    ci_low_min: float = CI_LOW_MIN, min_fires: int = MIN_FIRES, n_boot: int = 1000,
                    seed: int = 0) -> pd.DataFrame:
    """The (cluster, detector) pairs where concept scores c [R, C] track detector firings fires
    [R, D] (bool; names `detectors`), resampling groups [R] (each response's prompt); COLUMNS,
    best AUROC first within a cluster."""
    c, fires = np.asarray(c, dtype=np.float64), np.asarray(fires, dtype=bool)
    assert c.shape[0] == fires.shape[0] == len(groups) and fires.shape[1] == len(detectors)
    rng = np.random.default_rng(seed)
    rows = []
    n_fires = fires.sum(0)                                                       # [D]
    for d, name in enumerate(detectors):
        if n_fires[d] < min_fires or len(fires) - n_fires[d] < min_fires:
            continue
        for k in range(c.shape[1]):
            if not auroc(c[:, k], fires[:, d])[0] >= ci_low_min:
                continue
            a, lo, hi = auroc_ci(c[:, k], fires[:, d], groups=groups, n_boot=n_boot, rng=rng)
            if lo >= ci_low_min:
                rows.append((k, name, a, lo, hi, int(n_fires[d])))
    table = pd.DataFrame(rows, columns=list(COLUMNS)).astype({"cluster": int, "n_fires": int})
    return table.sort_values(["cluster", "auroc"], ascending=[True, False], kind="stable").reset_index(drop=True)


def response_fires(fires_table: pd.DataFrame, detectors: list[str]) -> np.ndarray:
    """The screen's per-pair table (<detector>_chosen / _rejected columns, one row per pair) as
    fires [2P, D] in the audit's response order (2i chosen, 2i+1 rejected)."""
    out = np.empty((2 * len(fires_table), len(detectors)), dtype=bool)
    for j, name in enumerate(detectors):
        out[0::2, j] = fires_table[f"{name}_chosen"].to_numpy(bool)
        out[1::2, j] = fires_table[f"{name}_rejected"].to_numpy(bool)
    return out


def by_cluster(table: pd.DataFrame, n_clusters: int) -> list[list[dict]]:
    """One list per cluster 0..C−1 of {detector, auroc, ci_low, ci_high, n_fires} (clusters.parquet's TRACKS)."""
    out: list[list[dict]] = [[] for _ in range(n_clusters)]
    for r in table.itertuples():
        out[int(r.cluster)].append({"detector": str(r.detector), "auroc": float(r.auroc), "ci_low": float(r.ci_low),
                                    "ci_high": float(r.ci_high), "n_fires": int(r.n_fires)})
    return out


def tracks_text(tracks: list[dict]) -> str:
    """"tracks: urls 0.99 [0.97, 1.00], emoji 0.81 [0.74, 0.88]" ("" for none)."""
    if not tracks:
        return ""
    return "tracks: " + ", ".join(f"{t['detector']} {t['auroc']:.2f} [{t['ci_low']:.2f}, {t['ci_high']:.2f}]"
                                  for t in tracks)
