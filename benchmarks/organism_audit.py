"""Does the audit find the planted confounds? Recall, precision and sign accuracy on the organism,
at the default strength and weaker ones, against a random-label baseline from the same run.

    nice -n 10 .venv/bin/python benchmarks/organism_audit.py [--organism runs/organism]
        [--audit runs/organism_audit] [--strengths 0.9,0.75,0.6] [--poolings mean,max,top16] [--top-k K]
        [--fractions 0.5,0.75,0.9] [--subsets 40] [--draws 3]

1. Builds the default organism into --organism unless its truth.json exists (generations cached).
2. Audits its train.jsonl with the default SAE and `AuditConfig(topic_column="topic")` into
   --audit unless that folder already holds an audit of the same data (the heavy step: one
   forward over every response).
3. Each weaker strength s relabels the same responses (planted cells s, or 1 − s where the
   default plants towards the rejected side) from the generation cache into
   <organism>_s<s>, and audits it in <audit>_s<s> *without a forward pass*: a response's SAE
   latents depend only on its prompt and text, so the default audit's latent store is
   reordered for the new sides (`organism.score.reuse_latents`). "null" relabels every planted
   cell as a balanced control (random labels): the baseline, scored against the default truth.
   Each further pooling (--poolings; the audit's default is mean) audits every strength again
   into <audit>[_s<s>]_<pooling>, from the same latents: mean pooling dilutes a short trait (a
   flattering opener) over the answer, max pooling keeps it but also grows with length; topN
   (AuditConfig(pooling="topk", topk=N)) averages each latent's N largest token values.
   Measured on two draws of the default organism (1,239 pairs each; session 5): top-k (k = 4, 8,
   16, 32) behaves like max — every planted cell found, ~150 rows flagged, precision 0.72–0.77 —
   while mean flags ~70 rows at 0.80–0.82 and, on one draw, misses flattery/health (q = 0.22).
4. Scores every audit (`organism.score.score_audit`, writes score.json) and prints the table,
   with clusters matched to traits within (topic, side) strata (the default since session 8;
   precision against the measured truth, planted-only precision beside it), then again with the
   global Spearman matching. The figures quoted in 3. and 5. were measured under the earlier
   topic-Spearman matching and planted-only precision, and are not comparable with the new ones.
5. Where does it break as the data shrinks? The default audit (first pooling, default strength)
   is rescored on --subsets random subsets holding each fraction of every topic's pairs
   (`organism.power.detection_power`; rows recomputed as the audit computes them, no forward
   pass): P(found) per planted cell and how often a subset meets issue 5's goal (recall 1,
   precision ≥ 0.8). One draw's recall says little when a cell sits near the threshold; this says
   whether a miss is luck or a weak cell (with --draws, on every draw). Measured (session 7, this
   2-core machine, seed 0, 40 subsets per fraction 0.5 / 0.75 / 0.9; a draw differs between machines, issue 20): on that
   session's draw, flattery/health is found in none, coding/over_formatting in 0.15 /
   0.38 / 0.57, and the goal is met in none; on the older draw the goal is met in 0.25 / 0.88 /
   0.85. Pooling both draws (2× pairs per cell, a scratch audit) finds all 8 cells, at precision
   0.61: with more data the planted traits' side effects (verbosity-tracking concepts in harmful,
   where compliant answers run longer) become significant too, and count against precision.
6. --draws 3 (issue 20): the default organism on three draws, seeds DRAW_SEEDS (0, 1, 2; fixed
   before any draw was scored): the prompt pool is nearly the same, the sampled answers and which
   pairs carry a trait differ. Draw n > 1 is built into <organism>_seedS (train split only) and
   audited into <audit>_seedS at the default strength and pooling (and null), then a table gives
   each draw's recall, sign accuracy, precision against the measured truth, planted-only
   precision, and whether issue 20's goal (8/8 and precision ≥ 0.9 on every draw) holds.
   Measured (6 December 2026, this 2-core machine, `--draws 3 --strengths 0.9 --poolings mean`;
   builds 1,080 / 1,066 / 994 s, audits ~8 min each): 8/8 with the right sign on every draw;
   the null relabelling finds 0/8. P(recall = 1) on subsets of 0.5 / 0.75 / 0.9 of the pairs:
   0.05 / 0.40 / 0.88 on seed 2. Precision (72 / 77 / 57 rows flagged), rescored from the cached
   audits (`--fractions ''`, 48 s):
   - against the measured truth, rule "the measured traits carry ≥ half of the row's gap"
     (session 15): 0.76 / 0.82 / 0.86, null credit 0.00 / 0.00 / 0.00 (20 within-stratum
     shuffles) — the goal (≥ 0.9) is met on none;
   - by the earlier tracking rule (|rank-biserial| ≥ 0.5): 0.31 / 0.34 / 0.39, equal to the
     planted-only figure. Most rows it missed are concepts of the harmful topic that track
     compliance within a side at AUROC 0.67–0.75 (what a compliant answer says and a refusal
     does not): their gap goes with the trait, their AUROC for it stays below the threshold.
   The new rule was written after these draws had been scored by the old one (both are printed).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

from anatomist.audit.folder import is_audit_of
from anatomist.audit.length import ensure_length_tables
from anatomist.audit.run import AuditConfig, run_audit
from anatomist.data import load_pairs
from anatomist.models import DEFAULT_MODEL, load
from anatomist.organism.build import build_organism, relabel_organism
from anatomist.organism.plant import DEFAULT_CONFIG, PlantConfig, TraitPlan
from anatomist.organism.power import detection_power
from anatomist.organism.score import format_score, reuse_latents, score_audit
from anatomist.sae import default_sae, load_sae

DEFAULT_STRENGTH = 0.9
BUILD_GOAL_S = 1200    # issue 5: the default organism (≥ 1,200 pairs) builds in ≤ 20 min on a 2-core CPU
GOAL_RECALL, GOAL_PRECISION = 1.0, 0.8    # issue 5, at the default strength
GOAL20_PRECISION = 0.9                    # issue 20: against the measured truth, on every draw
DRAW_SEEDS = (0, 1, 2)                    # issue 20's three draws, fixed before any was scored


def weaker(config: PlantConfig, s: float | None) -> PlantConfig:
    """Every planted cell at strength s on its side (s, or 1 − s for rejected-side cells); None:
    every planted cell becomes a balanced control (the random-label baseline)."""
    plans = []
    for p in config.plans:
        if s is None:
            plans.append(TraitPlan(p.trait, {}, (*p.control, *p.planted)))
        else:
            plans.append(TraitPlan(p.trait, {k: (s if v > 0.5 else 1 - s) for k, v in p.planted.items()}, p.control))
    return PlantConfig(tuple(plans), config.none_weight, config.seed)


def pooling_config(cfg: AuditConfig, name: str) -> AuditConfig:
    """'mean' / 'max' as they are; 'topN' → pooling "topk" with k = N."""
    if name.startswith("top") and name[3:].isdigit():
        return replace(cfg, pooling="topk", topk=int(name[3:]))
    return replace(cfg, pooling=name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--organism", type=Path, default=Path("runs/organism"))
    ap.add_argument("--audit", type=Path, default=Path("runs/organism_audit"))
    ap.add_argument("--strengths", default="0.9,0.75,0.6",
                    help="planted strengths (0.9 = the default organism); 'null' adds nothing (always run)")
    ap.add_argument("--poolings", default="mean,max,top16",
                    help="audit pooling(s) to compare: mean, max, calmax (max calibrated for length), topN "
                         "(top-k mean, k = N); the first audit's latents serve every other one")
    ap.add_argument("--top-k", type=int, default=None, help="only the first K flagged topic rows count")
    ap.add_argument("--rho-min", type=float, default=None,
                    help="tracking threshold (default: the matching rule's own, 0.5 stratified, 0.3 global)")
    ap.add_argument("--fractions", default="0.5,0.75,0.9", help="subset sizes (share of each topic's pairs); '' skips")
    ap.add_argument("--subsets", type=int, default=40, help="random subsets per fraction")
    ap.add_argument("--draws", type=int, default=1, choices=range(1, len(DRAW_SEEDS) + 1),
                    help=f"organism draws to build and audit, seeds {DRAW_SEEDS} in order (draw 1 in --organism, "
                         "draw n in --organism_seedS); the later draws at the default strength and pooling only")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--from-run", type=Path, default=None, metavar="DIR",
                    help="a brought-back run (benchmarks/gpu/truth.sh: DIR holds organism.tar.xz and audit.tar.xz, "
                         "or their unpacked organism/ and audit/): score its audit (default strength and pooling; "
                         "the others need the latents) and rescore subsets; no model is loaded")
    args = ap.parse_args()
    if args.from_run is not None:
        return from_run(args)
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)

    t0 = time.time()
    loaded = load()
    sae_path = str(default_sae())
    sae = load_sae(sae_path)
    draws = []
    for i, seed in enumerate(DRAW_SEEDS[:args.draws]):
        tag = "" if i == 0 else f"_seed{seed}"
        organism, audit = (p.with_name(p.name + tag) for p in (args.organism, args.audit))
        # the first draw is compared across strengths and poolings; the others at the default only
        strengths, poolings = (args.strengths, args.poolings) if i == 0 else (str(DEFAULT_STRENGTH),
                                                                              args.poolings.split(",")[0])
        print(f"\n######## draw {i + 1}/{args.draws}: organism seed {seed} ({organism}) ########", flush=True)
        draws.append(audit_draw(organism, audit, seed, strengths, poolings, loaded, sae, sae_path, args))
    print(f"total {time.time() - t0:.0f} s")
    if len(draws) > 1:
        print_draws(draws)
    if args.fractions:
        for d in draws:
            subsets(d["default_audit"], d["truth"], args)


def audit_draw(organism: Path, audit: Path, seed: int, strengths: str, poolings: str, loaded, sae, sae_path: str,
               args) -> dict:
    """Build (unless built) and audit one organism draw, rescore it at weaker strengths and other
    poolings, print its tables; returns what the cross-draw summary needs."""
    if not (organism / "truth.json").is_file():
        # later draws only need the train split: the held-out pairs serve predict_vs_actual.py
        build_organism(organism, loaded=loaded, seed=seed, heldout_pairs=seed == DRAW_SEEDS[0])
    built = json.loads((organism / "build.json").read_text())
    truth = organism / "truth.json"
    pairs = load_pairs(organism / "train.jsonl")
    cfg = AuditConfig(topic_column="topic")

    t = time.time()
    if not is_audit_of(audit, pairs):
        run_audit(loaded.model, loaded.tokenizer, sae, pairs, audit, cfg, model_name=DEFAULT_MODEL,
                  sae_path=sae_path, data_path=str(organism / "train.jsonl"))
    audit_s = time.time() - t

    def dirs(s: float | None, pooling: str) -> tuple[Path, Path]:
        """(organism folder, audit folder) of strength s (None: null) audited with `pooling`."""
        tag = "" if s == DEFAULT_STRENGTH else f"_{'null' if s is None else f's{s:g}'}"
        data = organism.with_name(organism.name + tag)
        return data, audit.with_name(audit.name + tag + ("" if pooling == "mean" else f"_{pooling}"))

    results, strict, timings = {}, {}, {}
    for pooling in poolings.split(","):
        for s in [None] + [float(x) for x in strengths.split(",")]:
            name = "null" if s is None else f"{s:g}"
            t = time.time()
            data, audit_dir = dirs(s, pooling)
            if s != DEFAULT_STRENGTH:
                relabel_organism(organism, data, weaker(DEFAULT_CONFIG, s), tokenizer=loaded.tokenizer)
            new_pairs = load_pairs(data / "train.jsonl")
            if not is_audit_of(audit_dir, new_pairs):
                # every audit reads the default audit's latents: same responses, other sides or pooling
                reuse_latents(audit / "latents", audit_dir / "latents", pairs, new_pairs)
                run_audit(loaded.model, loaded.tokenizer, sae, new_pairs, audit_dir, pooling_config(cfg, pooling),
                          model_name=DEFAULT_MODEL, sae_path=sae_path, progress=False,
                          data_path=str(data / "train.jsonl"))
            # a relabelled organism is scored against its own truth (same cells and signs, other
            # strengths); the null one against the default truth
            ensure_length_tables(audit_dir)    # audits written before length.parquet: from their latents
            score = partial(score_audit, audit_dir, truth if s is None else data / "truth.json",
                            data_path=data / "train.jsonl", top_k=args.top_k, rho_min=args.rho_min)
            key = (pooling, name)
            results[key] = score()                                       # matching "stratified"; writes score.json
            strict[key] = score(matching="global", write=False)
            timings[key] = time.time() - t
            print(f"\n== {pooling} pooling, strength {name} ({audit_dir}) ==\n{format_score(results[key])}", flush=True)

    print(f"\norganism build (build.json): {built['n_pairs']} train pairs in {built['seconds_train']:.0f} s "
          f"({built['seconds_train'] / BUILD_GOAL_S:.2f} × the {BUILD_GOAL_S} s goal), with "
          f"{built['n_heldout_pairs']} held-out pairs {built['seconds']:.0f} s "
          f"({built['seconds'] / BUILD_GOAL_S:.2f} ×); benchmarks/organism_build.py compares samplers")
    print(f"organism: {len(pairs)} train pairs; full audit {audit_s:.0f} s (0 = reused)")
    print("null = the same responses with every planted cell relabelled as a balanced control, scored against "
          "the default truth (what the audit 'finds' by chance)")
    for title, table in (("matching='stratified' (the default: tracking within (topic, side) strata); precision "
                          "against the measured truth (measured traits carry ≥ half of the row's gap), tracking the "
                          "earlier rule, planted the strict planted-only figure", results),
                         ("matching='global' (a cluster must track the trait across all its topics, not only in the "
                          "row's topic)", strict)):
        print(f"\n{title}:")
        print(f"{'pooling':>7s} {'strength':>8s} {'recall':>7s} {'precision':>9s} {'tracking':>8s} {'planted':>7s} "
              f"{'sign acc':>8s} "
              f"{'trait share':>11s} {'flagged':>7s} {'controls fp':>11s} {'recall - null':>13s} {'seconds':>7s}")
        for (pooling, name), r in table.items():
            null = table[(pooling, "null")]
            print(f"{pooling:>7s} {name:>8s} {r['recall']:7.2f} {r['precision']:9.2f} {r['precision_tracking']:8.2f} "
                  f"{r['precision_planted']:7.2f} {r['sign_accuracy']:8.2f} "
                  f"{r['trait_share']:11.2f} {r['n_flagged']:7d} {r['control_false_positive_rate']:11.2f} "
                  f"{r['recall'] - null['recall']:13.2f} {timings[(pooling, name)]:7.0f}")
    first = poolings.split(",")[0]
    return dict(seed=seed, n_pairs=len(pairs), build_s=built["seconds_train"], truth=truth,
                default_audit=dirs(DEFAULT_STRENGTH, first)[1], score=results[(first, f"{DEFAULT_STRENGTH:g}")],
                null=results[(first, "null")])


def print_draws(draws: list[dict]) -> None:
    """Issue 20's table: the default strength and pooling on every draw, and whether the goal holds."""
    print(f"\nthe default organism on {len(draws)} draws (seeds fixed in DRAW_SEEDS before any was scored; "
          "precision against the measured truth of the same pairs; null credit: the same with the traits shuffled "
          "within (topic, side); tracking: the earlier rule; planted-only beside them):")
    print(f"{'seed':>6s} {'pairs':>6s} {'build s':>7s} {'recall':>9s} {'sign acc':>8s} {'precision':>9s} "
          f"{'null credit':>11s} {'tracking':>8s} {'planted':>7s} {'flagged':>7s} {'null recall':>11s}")
    met = []
    for d in draws:
        r = d["score"]
        print(f"{d['seed']:6d} {d['n_pairs']:6d} {d['build_s']:7.0f} {r['n_found']:>5d}/{r['n_planted_cells']:<3d} "
              f"{r['sign_accuracy']:8.2f} {r['precision']:9.2f} {r['null_credit']:11.2f} {r['precision_tracking']:8.2f} "
              f"{r['precision_planted']:7.2f} {r['n_flagged']:7d} "
              f"{d['null']['recall']:11.2f}")
        met.append(r["recall"] >= GOAL_RECALL and r["precision"] >= GOAL20_PRECISION)
    print(f"issue 20's goal (recall {GOAL_RECALL:g} with the right sign and precision ≥ {GOAL20_PRECISION} on every "
          f"draw): met on {sum(met)} of {len(draws)} draws")


def from_run(args) -> None:
    """Score a brought-back run's audit against its organism's truth, from the tables alone (a copy
    in a temporary folder: scoring writes score.json beside the audit)."""
    import shutil
    import tarfile
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="organism_audit_from_run_"))
    for name in ("organism", "audit"):
        if (args.from_run / name).is_dir():
            shutil.copytree(args.from_run / name, root / name)
        elif (args.from_run / f"{name}.tar.xz").is_file():
            with tarfile.open(args.from_run / f"{name}.tar.xz") as t:
                t.extractall(root, filter="data")
        else:
            raise SystemExit(f"{args.from_run}: neither {name}/ nor {name}.tar.xz")
    organism, audit_dir = root / "organism", root / "audit"
    truth, data = organism / "truth.json", organism / "train.jsonl"
    built = json.loads((organism / "build.json").read_text())
    print(f"run {args.from_run}: organism seed {built['seed']}, {built['n_pairs']} train pairs, built in "
          f"{built['seconds']:.0f} s (on the run's device)")
    for matching in ("stratified", "global"):
        r = score_audit(audit_dir, truth, data_path=data, top_k=args.top_k, rho_min=args.rho_min, matching=matching,
                        write=matching == "stratified")
        print(f"\n== matching={matching} ==\n{format_score(r)}")
    if args.fractions:
        subsets(audit_dir, truth, args)


def subsets(audit_dir: Path, truth: Path, args) -> None:
    """P(found) per planted cell and P(goal met) on random subsets of the default audit's pairs."""
    fractions = [float(f) for f in args.fractions.split(",")]
    runs = {f: detection_power(audit_dir, truth, fraction=f, n_subsets=args.subsets, rho_min=args.rho_min)
            for f in fractions}
    print(f"\nsubsets of {audit_dir} ({args.subsets} per fraction; fraction = share of each topic's pairs kept):")
    print(f"{'cell':>36s} " + " ".join(f"{f:>7g}" for f in fractions))
    for i, cell in enumerate(runs[fractions[0]]["cells"]):
        print(f"{cell['topic'] + ' / ' + cell['trait']:>36s} "
              + " ".join(f"{runs[f]['cells'][i]['p_found']:7.2f}" for f in fractions))
    for name, fn in (("P(recall = 1)", lambda r, p: r >= GOAL_RECALL),
                     (f"P(precision ≥ {GOAL_PRECISION})", lambda r, p: p >= GOAL_PRECISION),
                     ("P(goal met)", lambda r, p: r >= GOAL_RECALL and p >= GOAL_PRECISION)):
        print(f"{name:>36s} " + " ".join(
            f"{sum(map(fn, runs[f]['recall'], runs[f]['precision'])) / args.subsets:7.2f}" for f in fractions))
    print(f"{'mean precision':>36s} " + " ".join(
        f"{sum(runs[f]['precision']) / args.subsets:7.2f}" for f in fractions))


if __name__ == "__main__":
    main()
