"""Short-span traits (issue 20): which pooling keeps a few tokens' strength (a flattering opener)
without letting response length in? Re-scores one finished organism audit under each pooling.

    nice -n 10 .venv/bin/python benchmarks/short_span.py --organism DIR --audit DIR [--poolings mean,max,calmax]

The audit's stored per-token latents are pooled again (no model, no forward pass), clustered and
tested as `run_audit` does it (`audit.run.pooled_concepts`, `audit.rows.topic_cluster_rows`, the
audit's own config with only the pooling changed; no labels or report), and scored with the
organism scorer (`organism.score.score_tables`: stratified matching, precision against the
measured truth, the audit's length rows included). Per pooling it prints recall, precision
(planted-only beside it), flagged rows, the share of control cells with a flagged tracking row,
the planted cells missed, and how much the concepts track length: the mean rank-biserial of the
concept scores for "long" (above the (topic, side) stratum's median words), over all concepts.
Pooling names: mean, max, calmax, topN (top-k mean with k = N).

The statistic was chosen on two development organisms only, never on a scored draw:

    moved: anatomist organism build --design benchmarks/designs/organism_moved.json --seed 1
           --prompts-per-topic 80 (420 pairs; audit: anatomist audit --topic-column topic)
    hh:    anatomist organism build-hh --design benchmarks/designs/hh_other.json --pairs 600
           (600 HH-RLHF pairs; same audit command)

    nice -n 10 .venv/bin/python benchmarks/short_span.py --organism /work/val-moved/organism \\
        --audit /work/val-moved/audit --poolings mean,max,top4,top16,calmax
    (and the same with /work/val-hh/organism, /work/val-hh/audit)

The precision columns below predate two scorer changes (session 14: the measured truth tests each
detector's decision; session 15: a row is right when the measured traits carry ≥ half of its
gap, `organism.score`) and were not rerun; a rerun prints the current rule's figures.

Measured (session 9, this 2-core machine, three runs each: the concept clusters differ run to run,
because scikit-network's Leiden gives another partition of the same graph on a second call with
the same random_state — fixed since: anatomist.audit.graph seeds the C rand() it draws from —
so a range is shown; "controls" = share of control cells with a flagged
tracking row; "len rb" = mean rank-biserial of the concepts for "long" within (topic, side)):

    dev set  pooling  recall  precision  planted   flagged  controls  len rb   missed
    moved    mean      3/8    1.00       1.00       3       0.14     +0.03    physics/over_formatting, cooking/urls,
                                                                              coding/flattery, travel/flattery,
                                                                              health/over_formatting
    moved    max      6-7/8   0.57-0.58  0.61-0.62  21-24   0.29     +0.20    cooking/urls (+ health/over_formatting once)
    moved    top4      6/8    0.77-0.83  0.81-0.88  24-27   0.43     +0.17    cooking/urls, health/over_formatting
    moved    top16     5/8    0.79       0.79      24       0.14     +0.18    + physics/over_formatting (one run)
    moved    calmax    7/8    0.67-0.71  0.73-0.79  13-15   0.14     -0.04    cooking/urls
    hh       mean      4/4    0.29-0.33  0.24-0.28  16-18   0.50     +0.34    -
    hh       max       4/4    0.60-0.68  0.39-0.47  28-30   0.50     +0.72    -
    hh       top4      2/4    0.50-0.75  0.50-0.67   4-6    0.25     +0.74    drugs_alcohol/over_formatting, insults_bias/urls
    hh       top16     3/4    0.57       0.71       7       0.50     +0.71    drugs_alcohol/over_formatting (one run)
    hh       calmax    4/4    0.33-0.35  0.50-0.53  17-18   0.25     -0.35    -

Reading: calmax is the only pooling with every planted cell found on both sets at the fewest
control cells flagged, and it finds the flattering openers mean pooling misses (moved:
coding/flattery, travel/flattery) with half of max's rows. On HH, max's precision against the
measured truth is higher only because ~16 of its rows are length proxies in "other", where the
chosen answers are measurably shorter — the length row already says that. calmax overcorrects on
HH: its concepts lean against length (−0.35), because HH responses differ in how often a latent
fires (F(x)^n assumes one token distribution for all; mixing responses makes the true maximum of
a long response smaller, Jensen). That is why mean stays the default: calmax is better on the
moved organism on every count, but on HH it trades max's length-tracking rows for a weaker
anti-length lean, and its measured precision there (0.33-0.35) is only level with mean's.

Also tried (scratch, not kept; moved set unless named):
- partialling log length out of the max-pooled Δc (per-concept slope within topics, then the pair
  test; alone, or beside mean in one BH family): recall 6/8 for max, 2/8 for top4 / top16 — a
  planted inducer changes length too (flattery and formatting add words), so the slope absorbs
  the trait and the residual loses it;
- max over the pair's shared length (both sides cut to the shorter one): 6/8, 8 rows; with mean in
  one BH family 5/8. Mean + max in one BH family: 7/8 at precision 0.64, 22 rows (the
  length-tracking max rows stay); mean + calmax in one family: 6/8 (the doubled family costs a cell);
- max ranked among responses of similar length (4 or 10 length bins): hh 4/4 at len rb ≈ 0, but
  moved 5/8 and 3/8 (flattery lost): too few responses per bin;
- calmax with an extremal index (n·θ_f, θ_f = firing runs / firing tokens): hh len rb −0.28, moved
  7/8 at 0.69 — no better; and with a per-feature effective count a_f·n^γ_f fitted to how often
  f stays silent at each length: hh len rb +0.02 but precision 0.29, controls 0.50; moved 6/8 at
  0.50 — and minutes per audit.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pandas as pd

from anatomist.audit.folder import LENGTH, AuditFolder
from anatomist.audit.rows import topic_cluster_rows
from anatomist.audit.run import AuditConfig, conversation_opening, pooled_concepts
from anatomist.audit.stats import prompt_clusters
from anatomist.organism.plant import read_truth
from anatomist.organism.score import above_stratum_median, score_tables, stratified_rank_biserial
from anatomist.organism.truth import log_words, measured_truth


def audit_config(audit: AuditFolder, pooling: str) -> AuditConfig:
    """The audit's own config with only the pooling changed ('topN' → pooling "topk", k = N)."""
    names = {f.name for f in fields(AuditConfig)}
    recorded = {k: (tuple(v) if k == "topic_range" else v) for k, v in audit.config.items() if k in names}
    cfg = AuditConfig(**recorded)
    if pooling.startswith("top") and pooling[3:].isdigit():
        return replace(cfg, pooling="topk", topk=int(pooling[3:]))
    return replace(cfg, pooling=pooling)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--organism", type=Path, required=True, help="organism folder (train.jsonl, truth.json)")
    ap.add_argument("--audit", type=Path, required=True, help="a finished audit of its train.jsonl (--topic-column topic)")
    ap.add_argument("--poolings", default="mean,max,calmax", help="mean, max, calmax, topN (comma-separated)")
    args = ap.parse_args()

    t0 = time.time()
    audit = AuditFolder(args.audit)
    pairs = audit.check_data(args.organism / "train.jsonl", complete=True)
    truth = read_truth(args.organism / "truth.json")
    texts = [t for p in pairs for t in (p.chosen, p.rejected)]                # [2P]
    topics = [p.extra["topic"] for p in pairs]                                # [P]
    measured = measured_truth([{"topic": k, "chosen": texts[2 * i], "rejected": texts[2 * i + 1]}
                               for i, k in enumerate(topics)])
    groups = prompt_clusters([conversation_opening(p) for p in pairs])
    latents = audit.latents
    logn = np.log(np.maximum(latents.n_tokens.astype(np.float64), 1.0))[:, None]   # [2P, 1] the length concept
    side = np.tile(np.array(["chosen", "rejected"], dtype=object), len(pairs))
    strata = np.array([f"{k}|{s}" for k, s in zip(np.repeat(topics, 2), side)])
    long = above_stratum_median(np.array([log_words(x) for x in texts]), strata)
    print(f"{args.audit}: {len(pairs)} pairs, latents loaded in {time.time() - t0:.0f} s", flush=True)

    head = (f"{'pooling':>8s} {'recall':>6s} {'precision':>9s} {'planted':>7s} {'flagged':>7s} {'controls':>8s} "
            f"{'len rb':>6s} {'seconds':>7s}  missed")
    lines = []
    for name in args.poolings.split(","):
        t = time.time()
        cfg = audit_config(audit, name)
        pooled = latents.pooled(topk=cfg.topk if cfg.pooling == "topk" else None)
        acts, concepts = pooled_concepts(latents, pooled, cfg)
        c = concepts.scores(acts)                                                # [2P, C]
        rows = topic_cluster_rows(c[0::2] - c[1::2], audit.topic_ids, audit.topic_names, min_pairs=cfg.min_pairs,
                                  alpha=cfg.alpha, n_boot=cfg.n_boot, seed=cfg.seed, groups=groups)
        res = score_tables(np.concatenate([c, logn], axis=1), texts, topics,
                           pd.concat([rows, audit.length_rows], ignore_index=True), truth,
                           cluster_ids=[*range(c.shape[1]), LENGTH], measured=measured)
        rb = stratified_rank_biserial(long, c, strata)                           # [C]
        missed = ", ".join(f"{x['topic']}/{x['trait']}" for x in res["cells"] if not x["found"]) or "-"
        lines.append(f"{name:>8s} {res['n_found']:>3d}/{res['n_planted_cells']:<2d} {res['precision']:9.2f} "
                     f"{res['precision_planted']:7.2f} {res['n_flagged']:7d} {res['control_false_positive_rate']:8.2f} "
                     f"{rb.mean():+6.2f} {time.time() - t:7.0f}  {missed}")
        print(lines[-1], flush=True)
    print(f"\n{head}\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
