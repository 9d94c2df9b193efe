"""Measured truth: what the organism's pairs really contain, per (topic, trait), tested like a concept.

The planted design says where a trait was put on one side (truth.json "cells"); a small model
follows an inducing system prompt only loosely, and an inducer has side effects (a compliant
answer runs longer than a refusal), so the pairs can carry asymmetries nobody planted. The audit
is right to flag those. This table measures them: for every topic k and every trait t (plus
response length), over ALL pairs of topic k,

    Δ_i = fires_t(y⁺_i) − fires_t(y⁻_i)  ∈ {−1, 0, 1}

(whether the trait's detector fires, `Trait.fires`; log(1 + words) for "length"), with the audit's
own statistics (`anatomist.audit.stats.pair_stats`) and one Benjamini–Hochberg correction over the
whole table. A (topic, trait) is *present* with sign ±1 where q < alpha and the split halves agree,
as the audit decides a direction for a concept. The detector's decision, not its raw score, is
tested: scores such as markdown marks per 100 words are heavy-tailed (a two-word "## ✨" scores 200,
the default organism's largest is 3,300), so a mean of score differences follows a few short
answers; on the default draw (seed 0) it missed over-formatting planted in coding and travel (in
coding the detector fires on 25 % of chosen and 8 % of rejected answers; the score test gave q
0.12). Because this truth comes from the same pairs the audit reads, a precision computed against it
says "the audit flagged what is really there", not "what was planted"; the scorer reports the
planted-only precision beside it.

Whether a flagged concept row is *explained* by this truth (`explained_share`): over the topic's
responses, least squares c ≈ a + b·chosen + Σ_t β_t·x_t with x_t the measured traits of the topic
(detector decisions, log words). Because the residuals have mean zero on each side, the concept's
chosen − rejected gap splits exactly into

    gap = mean(c | chosen) − mean(c | rejected) = b + Σ_t β_t·(x̄_t⁺ − x̄_t⁻),

the part the traits carry (β_t is estimated within a side, where the preference cannot stand in
for the trait) and the part b that goes with the side alone. share = 1 − b / gap. A concept that
separates the sides but not the trait (a decoy) has β = 0 and share 0; a concept that appears only
in answers that carry the trait (content of compliant answers, the header of a formatted one) has
share ≈ 1, whatever its AUROC for the trait. A covariate that does not vary within either side
cannot be told from the side and is left out (it explains nothing measurably).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from anatomist.audit.stats import add_q, pair_stats
from anatomist.organism.traits import TRAITS, Trait, n_words

__all__ = ["LENGTH_TRAIT", "log_words", "measured_truth", "response_traits", "explained_share"]

LENGTH_TRAIT = "length"


def log_words(text: str) -> float:
    return math.log1p(n_words(text))


def _text(side) -> str:
    """A response as stored in train.jsonl: a string, or one assistant message in a list."""
    if isinstance(side, str):
        return side
    return "".join(m["content"] for m in side if m.get("role") == "assistant")


def measured_truth(rows: Sequence[Mapping], *, traits: Mapping[str, Trait] = TRAITS,
                   length_of: Callable[[str], float] = log_words, alpha: float = 0.05,
                   n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """One row per (topic, trait) with ≥ 2 pairs: the audit's pair statistics of the difference of
    the trait detector's decision (length: of log words) over the topic's pairs, q (BH over the
    table), `present` and `sign`.
    `rows`: organism rows (topic, chosen, rejected as in train.jsonl). Traits that do not apply to
    a topic (`Trait.topics`) are not tested there; length is tested everywhere."""
    scorers: dict[str, Callable[[str], float]] = {LENGTH_TRAIT: length_of}
    scorers.update({name: (lambda text, t=t: float(t.fires(text))) for name, t in traits.items()})
    by_topic: dict[str, list[tuple[str, str]]] = {}
    for r in rows:
        by_topic.setdefault(str(r["topic"]), []).append((_text(r["chosen"]), _text(r["rejected"])))
    blocks = []
    for topic, pairs in sorted(by_topic.items()):
        names = [n for n in scorers if n == LENGTH_TRAIT or traits[n].applies_to(topic)]
        if len(pairs) < 2 or not names:
            continue
        delta = np.array([[scorers[n](c) - scorers[n](r) for n in names] for c, r in pairs])   # [P, T]
        stats = pair_stats(delta, n_boot=n_boot, seed=seed, names=names)
        # a detector that fires on every chosen and no rejected response gives a constant Δ (sd 0),
        # which the t-test cannot score; that is the strongest asymmetry there is, not none
        constant = (stats["sd"] == 0) & (stats["mean"] != 0)
        stats.loc[constant, "p"] = 0.0
        blocks.append(stats.reset_index(names="trait").assign(topic=topic))
    table = add_q(pd.concat(blocks, ignore_index=True))
    present = (table["q"] < alpha) & table["split_half"].astype(bool) & (table["mean"] != 0)
    table["present"] = present
    table["sign"] = np.where(present, np.sign(table["mean"]), 0).astype(int)
    cols = ["topic", "trait", "present", "sign", *[c for c in table.columns if c not in ("topic", "trait",
                                                                                           "present", "sign")]]
    return table[cols]


def response_traits(texts: Sequence[str], names: Sequence[str], *, traits: Mapping[str, Trait] = TRAITS,
                    length_of: Callable[[str], float] = log_words) -> np.ndarray:
    """[R, len(names)]: per response, each named trait's detector decision (0/1), or length_of
    for "length" — the covariates `explained_share` reads."""
    cols = [[length_of(x) if n == LENGTH_TRAIT else float(traits[n].fires(x)) for x in texts] for n in names]
    return np.array(cols, dtype=np.float64).T.reshape(len(texts), len(names))


def explained_share(c: np.ndarray, chosen: np.ndarray, x: np.ndarray) -> np.ndarray:
    """[C]: the share of each column's chosen − rejected gap that the covariates carry (module
    docstring), over the responses of one topic. c [R, C] concept scores, chosen [R] bool, x [R, T]
    covariates. 0 where the gap is 0; covariates constant within both sides are dropped."""
    chosen = np.asarray(chosen, dtype=bool)
    x = np.asarray(x, dtype=np.float64).reshape(len(chosen), -1)
    varies = np.array([x[chosen, j].std() > 0 or x[~chosen, j].std() > 0 for j in range(x.shape[1])], dtype=bool)
    design = np.column_stack([np.ones(len(chosen)), chosen.astype(np.float64), x[:, varies]])
    beta = np.linalg.lstsq(design, c, rcond=None)[0]                       # [2 + T', C]
    gap = c[chosen].mean(0) - c[~chosen].mean(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(gap != 0, 1.0 - beta[1] / gap, 0.0)
