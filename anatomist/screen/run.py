"""The screen: does the data reward what post-training is known to teach by accident?

    result = screen_pairs(load_pairs("hh.jsonl.gz"), topics="topic")
    result.table        # one row per (detector, topic); topic "all" = the whole file

For each detector and pair i, Δ_i = fires(y⁺_i) − fires(y⁻_i) ∈ {−1, 0, 1}, so the mean Δ̄ is
the chosen-side firing rate minus the rejected-side rate: **positive = chosen fires more** (the
audit's sign convention: DPO would amplify it). Statistics are the audit's (`anatomist.stats`):
pairs that share a prompt are clustered, a 95% CI (bootstrap up to BOOTSTRAP_MAX_PAIRS pairs per
row, the t-interval from the clustered standard error above: the bootstrap's [B, G] resampling
costs seconds at 10⁵ pairs and the two agree there), p from a t-test, Benjamini–Hochberg q over
the whole table, and a direction ("amplify" / "suppress" / "none": q < alpha and split halves
agree) as in the audit's rows.

Topics: a column of the data (`topics="topic"`, read from each pair's extra columns) or one label
per pair (`topics=[...]`): the hook through which a caller above the screen passes embedding
topics (the audit's all-MiniLM topics, `anatomist.audit.embed`, which the screen, below the
audit, cannot import). A topic with fewer than `min_topic_pairs` pairs gets no row.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from anatomist.data.records import PreferencePair
from anatomist.errors import AnatomistError, DataError
from anatomist.screen.columns import Column, score_column, warm_up
from anatomist.screen.detectors import Detector, resolve
from anatomist.screen.hygiene import Hygiene, prompt_text
from anatomist.stats import add_q, pair_stats

ALL = "all"
BOOTSTRAP_MAX_PAIRS = 2000
MIN_TOPIC_PAIRS = 10
COLUMNS = ("detector", "topic", "n", "n_chosen", "n_rejected", "rate_chosen", "rate_rejected", "diff", "ci_low",
           "ci_high", "se", "d", "split_half", "p", "q", "direction")


@dataclass
class ScreenResult:
    """table: one row per (detector, topic), COLUMNS, "all" rows first; fires: one row per pair
    (id, topic, then <detector>_chosen / <detector>_rejected booleans); detectors run; hygiene
    (None when the pairs were not read through `read_with_hygiene`); seconds spent scoring."""

    table: pd.DataFrame
    fires: pd.DataFrame
    detectors: list[Detector]
    hygiene: Hygiene | None
    alpha: float
    seconds: float

    @property
    def n_pairs(self) -> int:
        return len(self.fires)

    def flagged(self) -> pd.DataFrame:
        """Rows with a direction."""
        return self.table[self.table.direction != "none"]


def direction(mean: float, q: float, split_half: bool, alpha: float) -> str:
    """The audit's rule (anatomist.audit.rows.direction): q < alpha and split halves agree."""
    if not (q < alpha and split_half):  # NaN q (untested) compares False
        return "none"
    return "amplify" if mean > 0 else "suppress"


PARALLEL_MIN_PAIRS = 20_000   # below this, forking workers costs more than it saves
CHUNK_PAIRS = 10_000          # pairs scored together: bounds the memory of a column's shared measures
_JOB: tuple = ()              # (pairs, prompts, detectors) for forked workers, which inherit it


def score_pairs(pairs: Sequence[PreferencePair], detectors: Sequence[Detector], *, workers: int | None = None,
                prompts: Sequence[str] | None = None) -> np.ndarray:
    """fires [P, D, 2] (bool): detector d on pair i's chosen (…, 0) and rejected (…, 1) side.

    Each chunk of pairs is scored column by column (`anatomist.screen.columns`: every detector
    over all its responses at once, the same scores as `Detector.score` per response).
    workers: processes (forked, so user detectors need not pickle); None = every core from
    PARALLEL_MIN_PAIRS pairs on (the detectors are pure Python regex work, one core each).
    prompts: `prompt_text` of each pair, when the caller has them already."""
    global _JOB
    prompts = [prompt_text(p) for p in pairs] if prompts is None else prompts
    if workers is None:
        workers = (os.cpu_count() or 1) if len(pairs) >= PARALLEL_MIN_PAIRS else 1
    parallel = workers > 1 and "fork" in mp.get_all_start_methods()
    n_chunks = max(4 * workers if parallel else 1, -(-len(pairs) // CHUNK_PAIRS))
    bounds = np.linspace(0, len(pairs), n_chunks + 1).astype(int)
    if not parallel:
        return np.concatenate([_score_chunk(pairs, prompts, detectors, a, b) for a, b in zip(bounds[:-1], bounds[1:])])
    warm_up()
    _JOB = (pairs, prompts, detectors)
    try:
        with mp.get_context("fork").Pool(workers) as pool:
            parts = pool.starmap(_score_job, zip(bounds[:-1], bounds[1:]))
    finally:
        _JOB = ()
    return np.concatenate(parts)


def _score_job(start: int, stop: int) -> np.ndarray:
    return _score_chunk(*_JOB, start, stop)


def _score_chunk(pairs, prompts, detectors, start: int, stop: int) -> np.ndarray:
    """fires [stop − start, D, 2] of pairs[start:stop]: one column of their chosen then rejected sides."""
    n = stop - start
    chunk = pairs[start:stop]
    col = Column([p.chosen for p in chunk] + [p.rejected for p in chunk], list(prompts[start:stop]) * 2)
    out = np.zeros((n, len(detectors), 2), dtype=bool)
    for j, d in enumerate(detectors):
        fires = score_column(d, col) >= d.threshold                   # [2n]
        out[:, j, 0], out[:, j, 1] = fires[:n], fires[n:]
    return out


def pair_topics(pairs: Sequence[PreferencePair], topics) -> list[str] | None:
    """One topic label per pair from a column name or a sequence; None for no topics."""
    if topics is None:
        return None
    if isinstance(topics, str):
        out = []
        for p in pairs:
            if topics not in p.extra:
                raise DataError(f"missing topic column in pair {p.id!r} (its columns: "
                                f"{', '.join(sorted(p.extra)) or 'none'})", field=topics)
            out.append(str(p.extra[topics]))
        return out
    out = [str(t) for t in topics]
    if len(out) != len(pairs):
        raise AnatomistError(f"topics: expected one label per pair ({len(pairs)}), got {len(out)}")
    return out


def screen_pairs(pairs: Sequence[PreferencePair], *, detectors: Sequence[str | Detector] | None = None,
                 extra_detectors: Sequence[str | Detector] = (), topics=None, hygiene: Hygiene | None = None,
                 alpha: float = 0.05, min_topic_pairs: int = MIN_TOPIC_PAIRS, seed: int = 0,
                 workers: int | None = None) -> ScreenResult:
    """Run the detectors on both sides of every pair and test the chosen-vs-rejected rate
    difference dataset-wide and per topic (see the module docstring). workers: see `score_pairs`."""
    pairs = list(pairs)
    if not pairs:
        raise AnatomistError("no pairs to screen")
    dets = resolve(detectors, extra_detectors)
    labels = pair_topics(pairs, topics)
    prompts = [prompt_text(p) for p in pairs]
    start = time.perf_counter()
    fires = score_pairs(pairs, dets, workers=workers, prompts=prompts)   # [P, D, 2]
    seconds = time.perf_counter() - start
    delta = fires[:, :, 0].astype(np.float64) - fires[:, :, 1]        # [P, D]
    # prompts as integer codes, once: each block's clustering sees the same partition, in the same
    # order of first appearance, as from the texts, without hashing 10⁵ prompts per topic
    groups = pd.factorize(pd.Series(prompts, dtype=object))[0]
    names = [d.name for d in dets]
    blocks = [_block(fires, delta, groups, names, ALL, seed)]
    if labels is not None:
        lab = np.array(labels, dtype=object)
        for topic in sorted(set(labels)):
            idx = np.flatnonzero(lab == topic)
            if len(idx) >= min_topic_pairs:
                blocks.append(_block(fires[idx], delta[idx], groups[idx], names, topic, seed))
    table = add_q(pd.concat(blocks, ignore_index=True))
    table["direction"] = [direction(m, q, s, alpha) for m, q, s in zip(table["diff"], table["q"], table["split_half"])]
    per_pair = {"id": [p.id for p in pairs], "topic": labels if labels is not None else [ALL] * len(pairs)}
    for j, name in enumerate(names):
        per_pair[f"{name}_chosen"] = fires[:, j, 0]
        per_pair[f"{name}_rejected"] = fires[:, j, 1]
    return ScreenResult(table[list(COLUMNS)], pd.DataFrame(per_pair), dets, hygiene, alpha, seconds)


def _block(fires: np.ndarray, delta: np.ndarray, groups: np.ndarray, names: list[str], topic: str,
           seed: int) -> pd.DataFrame:
    """Statistics of one topic's pairs: fires [n, D, 2], delta [n, D] → one row per detector."""
    n = len(delta)
    n_boot = 1000 if n <= BOOTSTRAP_MAX_PAIRS else 0
    stats = pair_stats(delta, n_boot=n_boot, seed=seed, groups=groups).reset_index(drop=True)
    # every pair moving the same way (Δ ≡ ±1, no spread) has t = ∞: pair_stats calls that untested (p = 1)
    # because a continuous Δ never does it; a detector's 0/1 difference can, and it is the clearest case
    constant = (stats["se"].to_numpy() == 0) & (stats["mean"].to_numpy() != 0) & (n >= 2)
    stats.loc[constant, "p"] = 0.0
    counts = fires.sum(0)                                             # [D, 2]
    return pd.DataFrame({
        "detector": names, "topic": topic, "n": n, "n_chosen": counts[:, 0], "n_rejected": counts[:, 1],
        "rate_chosen": counts[:, 0] / n, "rate_rejected": counts[:, 1] / n, "diff": stats["mean"],
        "ci_low": stats["ci_low"], "ci_high": stats["ci_high"], "se": stats["se"], "d": stats["d"],
        "split_half": stats["split_half"], "p": stats["p"],
    })
