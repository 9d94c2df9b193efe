"""Predicted vs. actual post-DPO behaviour shift on the model organism (issue 7).

    .venv/bin/python benchmarks/predict_vs_actual.py --small                 # CPU, end to end, minutes
    .venv/bin/python benchmarks/predict_vs_actual.py --device cuda --steps 150 --sweep=-8,-2,0,2,8
    .venv/bin/python benchmarks/predict_vs_actual.py --hh 600 --organism runs/organism_hh --work runs/pva_hh

Steps (each stage caches / resumes on its own; rerunning reuses what is done):
 1. organism: --organism DIR (train.jsonl, heldout_prompts.jsonl); with --small and none there,
    a small one is built under --work; with --hh N and none there, the HH-RLHF variant (traits
    planted into the first N real pairs, the next 200 conversations held out) is built in DIR.
 2. audit: --audit DIR (an audit of this organism's train pairs: checked by data hash), or
    audited here into --work/audit with topics from the data's "topic" column.
 3. pairs: up to --pairs of the train pairs. Held-out preference accuracy ranks the organism's
    heldout_pairs.jsonl, or (absent) a --heldout-pairs share of the train pairs kept out of
    training; predictions use only the trained pairs (train_pairs.json).
 4. base eval on --prompts-per-topic held-out prompts per topic (--samples each, with token ids) →
    plain DPO (--steps; the policy kept under plain/dpo/policy) → post eval (--post-samples).
 5. first-order design (issue 21): the base samples split into two disjoint halves
    (evaluate/paired.sample_halves). On the even half, the first-order predictor: the DPO direction
    at the reference over a seeded --grad-share of the trained pairs (plain and Adam's sign step),
    its JVP over those generations, Cov(c, Δlog π) per prompt (evaluate/firstorder.py). On the odd
    half, the paired ΔB: those samples weighed by the trained policy's log-probs against the base's
    (SNIS, ESS-checked, evaluate/paired.py). Both levels scored (per concept, leave-one-concept-out;
    per (topic, concept), across topics) against the paired and the direct target, with CIs, noise
    ceilings, sign accuracy and ΔR² against the naive and prompt baselines; the predictor's own cost
    against DPO's time. Beside them "first_oracle", a ceiling and not a predictor: the same
    covariance form with δ = the trained policy's own log-prob change on the predictor's half, and
    each predicted δ's within-prompt correlation with that δ ("δ agreement"): together they tell a
    wrong direction from too few samples. Every per-generation number lands in plain/first_order/.
 6. verify (the data-only predictors on all base samples, verify.html) and --sweep λ,...: DPO
    shaped with λ on --sweep-cluster (default: the audit's top flagged dataset-wide concept), each
    evaluated the same way; the curve lands in verify.html.

Prints R² per predictor and the feature-conditioned figure as a ratio against each baseline (R²
of the same rows, same run), plus the noise ceiling of the measured ΔB; then the first-order
figures and the cost ratio. All figures come from one run.

Measured (2-core CPU, session 5; goal R² ≥ 0.9): the full organism (1,239 pairs, 155 steps, top 14
blocks, lr 5e-5, 32 prompts/topic × 4 × 96 tokens; 52 min) gives feature R² −0.14, prompt 0.01,
naive 0.04, noise ceiling 0.68; the HH-RLHF variant (--hh 600) gives 0.07, −0.08 and 0.33, ceiling
0.61. One shift per concept explains 41% (organism) and 63% (HH) of ΔB's variance, one per topic
1–2% (printed as "where ΔB's variance sits"): DPO moves a concept in every topic, not where its
pair asymmetry sits.

First-order design run (session 10, the one run the predictor was chosen on): the demo organism
(420 pairs, 378 trained, 47 steps, top 14 blocks, lr 5e-5; 12 prompts/topic × 8 base samples, 4
post; --grad-share 0.25). Adam's sign direction tracks the trained policy's real log-prob change
within a prompt (corr 0.56) far better than the plain gradient (0.13) or 12 real steps on the same
pairs (0.43). Per concept against the paired ΔB (ceiling 0.55): first_adam R² 0.05 (ρ 0.26),
first_plain −0.05, 12-step 0.07, naive 0.00; against the direct ΔB (ceiling 0.58) first_adam 0.12
(ρ 0.37). Per (topic, concept) the ceiling is 0.23 and every predictor is ≈ 0. Even the true
log-prob change on the predictor's half reaches only 0.32 per concept: with both halves this
small, the predictor's own sampling noise caps R² near ceiling² (0.55² ≈ 0.30). Cost: the
gradient pass + two JVPs 441 s vs DPO 405 s. Frozen: FROZEN below (first_adam); validation runs
report it beside the other variants.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--organism", type=Path, default=REPO / "runs" / "organism")
    ap.add_argument("--audit", type=Path, default=None,
                    help="an existing audit of the organism's train pairs (default: audit into --work/audit)")
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "predict_vs_actual")
    ap.add_argument("--small", action="store_true", help="small sizes for a CPU smoke run (flags given override)")
    ap.add_argument("--hh", type=int, default=None, metavar="N",
                    help="the HH-RLHF variant: build it into --organism from the first N real pairs if absent")
    ap.add_argument("--pairs", type=int, default=None, help="train pairs used (default: all; --small: 120)")
    ap.add_argument("--heldout-pairs", type=float, default=0.1,
                    help="fraction of train pairs kept out of training when the organism has no heldout_pairs.jsonl")
    ap.add_argument("--heldout-limit", type=int, default=200, help="held-out pairs ranked for preference accuracy")
    ap.add_argument("--steps", type=int, default=None, help="DPO optimizer steps (default: one epoch; --small: 12)")
    ap.add_argument("--prompts-per-topic", type=int, default=None, help="held-out prompts per topic (default: all)")
    ap.add_argument("--samples", type=int, default=None,
                    help="base generations per held-out prompt, split into two disjoint halves: the first-order "
                         "predictor's and the paired target's (default 8; --small 4)")
    ap.add_argument("--post-samples", type=int, default=None,
                    help="post-DPO generations per held-out prompt: the direct ΔB and the paired ΔB's fallback "
                         "(default 4; --small 2)")
    ap.add_argument("--grad-share", type=float, default=0.25,
                    help="share of the trained pairs (a seeded random subsample) the first-order predictor's gradient "
                         "pass reads; its reference forward is paid for, not taken from DPO's cache")
    ap.add_argument("--variant-steps", type=int, default=12,
                    help="the multi-step variant (first_steps): real DPO steps on the gradient subsample")
    ap.add_argument("--min-ess", type=float, default=0.3,
                    help="a prompt whose importance weights keep less than this share of its samples falls back "
                         "to the direct difference")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="eval generation length (default 96)")
    ap.add_argument("--gen-batch", type=int, default=32,
                    help="eval sampling batch (part of the generations' cache key; a GPU wants 256)")
    ap.add_argument("--lr", type=float, default=None, help="DPO learning rate (default 2e-5; --small 1e-4)")
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--train-layers", type=int, default=4)
    ap.add_argument("--sweep", default="", help="comma-separated λ values (0 = the plain run), e.g. -8,-2,0,2,8")
    ap.add_argument("--sweep-cluster", type=int, default=None)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--from-run", type=Path, default=None, metavar="DIR",
                    help="a brought-back run (benchmarks/gpu/truth.sh: DIR holds audit.tar.xz and eval.tar.xz, or "
                         "their unpacked audit/ and pva/): verify again from its tables and print the figures; "
                         "no model is loaded")
    args = ap.parse_args(argv)
    small = {"pairs": 120, "steps": 12, "prompts_per_topic": 3, "samples": 4, "post_samples": 2, "max_new_tokens": 48,
             "lr": 1e-4}
    full = {"pairs": None, "steps": None, "prompts_per_topic": None, "samples": 8, "post_samples": 4,
            "max_new_tokens": 96, "lr": 2e-5}
    for k, v in (small if args.small else full).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    return args


def log(msg: str, t0: float) -> None:
    print(f"[{time.time() - t0:7.1f}s] {msg}", flush=True)


def organism_dir(args, loaded, t0) -> Path:
    if (args.organism / "truth.json").is_file():
        return args.organism
    if args.hh:
        from anatomist.organism.hh import build_hh

        log(f"building the HH-RLHF variant ({args.hh} pairs) in {args.organism}", t0)
        build_hh(args.organism, limit=args.hh, loaded=loaded, seed=args.seed, progress=False)
        return args.organism
    if not args.small:
        raise SystemExit(f"{args.organism}/truth.json not found: build it (anatomist organism build), or pass "
                         "--small or --hh N")
    from anatomist.organism.build import build_organism

    out = args.work / "organism"
    if not (out / "train.jsonl").is_file():
        log(f"building a small organism in {out}", t0)
        build_organism(out, per_topic=24, max_new_tokens=64, loaded=loaded, seed=args.seed, heldout_pairs=False)
    return out


def audits(folder: Path, organism: Path, pairs) -> bool:
    """Whether `folder` holds a finished audit of these pairs or of the organism's whole train file
    (an earlier organism's audit shares the pair ids of a rebuilt one, not its texts)."""
    from anatomist.audit.folder import is_audit_of
    from anatomist.data import load_pairs

    return is_audit_of(folder, pairs) or is_audit_of(folder, load_pairs(organism / "train.jsonl"))


def audit_dir(args, organism: Path, pairs, loaded, sae, sae_path, t0) -> Path:
    if args.audit is not None:
        if not audits(args.audit, organism, pairs):
            raise SystemExit(f"{args.audit} is not an audit of {organism}/train.jsonl: pass that audit's folder, "
                             "or leave --audit out to audit into --work/audit")
        return args.audit
    from anatomist.audit.folder import META
    from anatomist.audit.run import AuditConfig, run_audit
    from anatomist.models.loading import DEFAULT_MODEL

    out = args.work / "audit"
    if not audits(out, organism, pairs):
        if (out / META).is_file():    # finished but of other data; an unfinished one resumes
            raise SystemExit(f"{out} holds an audit of other data (another --organism or --pairs): use another --work")
        log(f"auditing {len(pairs)} pairs into {out}", t0)
        cfg = AuditConfig(topic_column="topic", min_pairs=5 if args.small else 8, n_boot=200 if args.small else 1000,
                          seed=args.seed)
        run_audit(loaded[0], loaded[1], sae, pairs, out, cfg, model_name=DEFAULT_MODEL, sae_path=str(sae_path),
                  progress=False, data_path=str(organism / "train.jsonl"))
    return out


def flagged_cluster(audit: Path) -> int:
    from anatomist.audit.folder import AuditFolder

    rows = AuditFolder(audit).rows
    top = rows[(rows.topic == "all") & (rows.direction != "none")]
    top = top if len(top) else rows[rows.topic == "all"]
    return int(top.sort_values("rank_score", ascending=False).cluster.iloc[0])


# The predictor frozen for validation (issue 21; design run on the demo organism, see the docstring):
# its figures are the headline, the other first-order variants are reported beside it.
FROZEN = "first_adam"
T_EVAL = 0.7   # the eval's sampling temperature: the generations' log-probs are of log_softmax(z/T_EVAL)


def dpo_config(args):
    from anatomist.train import DPOConfig

    return DPOConfig(beta=args.beta, lr=args.lr, steps=args.steps, train_layers=args.train_layers, seed=args.seed,
                     max_response_tokens=128)


def first_order_design(args, base_model, tok, trained, base, plain_run, audit: Path, run: Path, t0) -> dict:
    """The first-order predictor against the paired target on disjoint halves of the base samples
    (evaluate/firstorder.py, evaluate/paired.py); the direct target beside it. Keeps every
    per-generation number under run/first_order/ for later analysis."""
    import pandas as pd

    from anatomist.evaluate.firstorder import (delta_agreement, first_order_columns, generation_logps,
                                               generation_seqs, run_directional_logps, steps_logps)
    from anatomist.evaluate.paired import paired_actual, sample_halves
    from anatomist.evaluate.verify import verify
    from anatomist.fileio import atomic_write_parquet, atomic_write_text
    from anatomist.shape.pairs import plain

    out = run / "first_order"
    out.mkdir(parents=True, exist_ok=True)
    half_p, half_t = sample_halves(base)
    n_grad = max(1, min(len(trained), round(args.grad_share * len(trained))))
    grad_pairs = [trained[i] for i in sorted(random.Random(f"{args.seed}:grad").sample(range(len(trained)), n_grad))]
    log(f"first-order: the DPO direction at the reference over {n_grad} of the {len(trained)} trained pairs, then "
        f"its JVP over {len(half_p)} base generations", t0)
    timings: dict = {}
    dlogp = run_directional_logps(base_model, tok, plain(grad_pairs), dpo_config(args), generation_seqs(half_p),
                                  temperature=T_EVAL, preconditions=("plain", "adam"),
                                  cache_dir=args.work / "first_order_cache", device=args.device, progress=False,
                                  timings=timings)
    log(f"multi-step variant: {args.variant_steps} steps of the run's DPO on the same {n_grad} pairs", t0)
    t = time.perf_counter()
    dlogp["steps"] = steps_logps(base_model, tok, plain(grad_pairs), dpo_config(args), generation_seqs(half_p),
                                 steps=args.variant_steps, temperature=T_EVAL, work_dir=out / "steps_run",
                                 cache_dir=args.work / "first_order_cache", device=args.device, progress=False)
    costs = {"first_plain": timings["gradient"] + timings["jvp_plain"],
             "first_adam": timings["gradient"] + timings["jvp_adam"], "first_steps": time.perf_counter() - t}
    log("oracle: the trained policy's own log-prob change on the predictor's half (a ceiling, not a predictor)", t0)
    seqs_p = generation_seqs(half_p)
    oracle = (generation_logps(plain_run["policy"], seqs_p, temperature=T_EVAL, device=args.device)
              - generation_logps(base_model, seqs_p, temperature=T_EVAL, device=args.device))
    agreement = delta_agreement(half_p, dlogp, oracle)
    dlogp["oracle"] = oracle
    first = first_order_columns(half_p, dlogp)
    log(f"paired target: log-probs of the other {len(half_t)} base generations under base and policy", t0)
    seqs_t = generation_seqs(half_t)
    lp_post = generation_logps(plain_run["policy"], seqs_t, temperature=T_EVAL, device=args.device)
    lp_pre = generation_logps(base_model, seqs_t, temperature=T_EVAL, device=args.device)
    clusters = sorted(int(c) for c in first["cluster"].unique())
    actual, health = paired_actual(half_t, lp_post - lp_pre, plain_run["post_frame"], clusters, min_ess=args.min_ess)
    ids = [p.id for p in trained]
    kw = {"first_order": first, "pair_ids": ids, "n_boot": args.n_boot, "seed": args.seed}
    paired = verify(audit, half_t, plain_run["post_frame"], actual=actual, **kw)
    direct = verify(audit, half_t, plain_run["post_frame"], **kw)
    atomic_write_parquet(half_p[["prompt_id", "topic", "sample"]].assign(**{f"dlogp_{k}": v for k, v in dlogp.items()}),
                         out / "dlogp.parquet")
    atomic_write_parquet(half_t[["prompt_id", "topic", "sample"]].assign(logp_pre=lp_pre, logp_post=lp_post),
                         out / "target_logps.parquet")
    atomic_write_parquet(first, out / "first_order_rows.parquet")
    atomic_write_parquet(actual, out / "paired_actual.parquet")
    result = {"paired": paired.summary, "direct": direct.summary, "ess": health, "seconds": costs, "frozen": FROZEN,
              "seconds_dpo": plain_run["dpo_seconds"], "grad_pairs": n_grad, "trained_pairs": len(trained),
              "delta_agreement": agreement}
    atomic_write_text(out / "summary.json", json.dumps(result, indent=1, default=float))
    pd.concat([paired.rows.assign(level="topic"), paired.concepts.assign(level="concept")]
              if paired.concepts is not None else [paired.rows]).pipe(atomic_write_parquet, out / "scored_rows.parquet")
    return result


def print_level(name: str, s: dict) -> None:
    from anatomist.evaluate.verify import level_lines

    print("\n".join(level_lines(name, s)))


def eval_settings(args, samples: int):
    """The eval every run of this benchmark (and shaping.py) shares, as `anatomist loop`'s eval section."""
    from anatomist.loop.config import EvalConfig

    return EvalConfig(samples=samples, max_new_tokens=args.max_new_tokens, temperature=T_EVAL, seed=args.seed,
                      batch_size=getattr(args, "gen_batch", 32))


def train_and_eval(name, base_model, tok, shaped, args, run: Path, scorer, prompts, heldout, t0,
                   ref_logps=None, keep_policy: bool = False) -> dict:
    """DPO a fresh copy of the base on `shaped`, evaluate it: `anatomist.loop`'s train and eval
    (`loop.runs.train_policy`, `eval_policy`) into run/dpo, run/post, run/preference.parquet.
    Returns {post, post_frame, policy (when kept, else None), dpo_seconds, heldout_acc, preference};
    keep_policy: also save it to run/dpo/policy. ref_logps: the base model's held-out pair
    log-probs (`pair_logps`), shared across runs."""
    from anatomist.loop.runs import eval_policy, train_policy

    log(f"{name}: DPO on {len(shaped)} pairs ({args.steps or 'one epoch of'} steps)", t0)
    policy, t_dpo = train_policy(base_model, tok, shaped, dpo_config(args), run / "dpo",
                                 cache_dir=args.work / "dpo_cache", save_model=keep_policy)
    log(f"{name}: post eval", t0)
    out = eval_policy(policy, tok, prompts, heldout, run, scorer=scorer, beta=args.beta, name=name,
                      settings=eval_settings(args, getattr(args, "post_samples", args.samples)),
                      ref_logps=ref_logps, reference=base_model)
    return {**out, "policy": policy if keep_policy else None, "dpo_seconds": t_dpo}


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.from_run is not None:
        return from_run(args)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    from anatomist.data import load_pairs, text_hash
    from anatomist.evaluate.behaviour import Scorer, first_per_topic, read_prompts
    from anatomist.evaluate.verify import verify_run
    from anatomist.loop.runs import eval_base
    from anatomist.models import load
    from anatomist.sae import default_sae, load_sae
    from anatomist.shape.pairs import plain
    from anatomist.shape.shaping import shape_pairs

    args.work.mkdir(parents=True, exist_ok=True)
    loaded = load()
    base_model, tok = loaded[0].to(args.device).eval(), loaded[1]
    sae_path = default_sae()
    sae = load_sae(sae_path).to(args.device)   # the audit's instrument sits beside the model it reads
    organism = organism_dir(args, (base_model, tok), t0)
    pairs = list(load_pairs(organism / "train.jsonl", limit=args.pairs))
    audit = audit_dir(args, organism, pairs, (base_model, tok), sae, sae_path, t0)
    if (organism / "heldout_pairs.jsonl").is_file():      # pairs on the held-out prompts
        heldout, trained = list(load_pairs(organism / "heldout_pairs.jsonl", limit=args.heldout_limit)), pairs
    else:                                                # else keep a share of the train pairs out
        order = list(range(len(pairs)))
        random.Random(f"{args.seed}:heldout").shuffle(order)
        n_held = int(round(args.heldout_pairs * len(pairs)))
        heldout = [pairs[i] for i in sorted(order[:n_held])]
        trained = [pairs[i] for i in sorted(order[n_held:])]
    prompts = read_prompts(organism / "heldout_prompts.jsonl")
    prompts = first_per_topic(prompts, args.prompts_per_topic or len(prompts))
    log(f"organism {organism}, audit {audit}: {len(trained)} trained / {len(heldout)} held-out pairs, "
        f"{len(prompts)} held-out prompts × {args.samples} samples", t0)

    run = args.work / "plain"
    run.mkdir(parents=True, exist_ok=True)
    # with each pair's text hash, so `verify` refuses an audit that scored other texts under these ids
    (run / "train_pairs.json").write_text(json.dumps([{"id": p.id, "text_hash": text_hash(p)} for p in trained]))
    scorer = Scorer.from_audit(audit, loaded=(base_model, tok), sae=sae)
    log("base eval", t0)
    base = eval_base(base_model, tok, prompts, run / "pre", scorer=scorer, settings=eval_settings(args, args.samples))
    plain_run = train_and_eval("plain", base_model, tok, plain(trained), args, run, scorer, prompts, heldout, t0,
                               keep_policy=True)
    design = first_order_design(args, base_model, tok, trained, base, plain_run, audit, run, t0)
    plain_run["policy"] = None

    lams = [float(x) for x in args.sweep.split(",") if x.strip()]
    if lams:
        cluster = args.sweep_cluster if args.sweep_cluster is not None else flagged_cluster(audit)
        entries = []
        for lam in lams:
            if lam == 0:
                entries.append({"lam": 0.0, "post": "post", "heldout_acc": plain_run["heldout_acc"]})
                continue
            sub = run / "sweep" / f"lam{lam:+g}"
            shaped = shape_pairs(trained, str(audit), lam={cluster: lam})
            out = train_and_eval(f"lam{lam:+g}", base_model, tok, shaped, args, sub, scorer, prompts, heldout, t0)
            entries.append({"lam": lam, "post": str(out["post"].relative_to(run)), "heldout_acc": out["heldout_acc"]})
        (run / "sweep.json").write_text(json.dumps({"cluster": cluster, "runs": entries}, indent=1))

    log("verify", t0)
    result = verify_run(audit, run, n_boot=args.n_boot, seed=args.seed)
    print_figures(result, plain_run["heldout_acc"], design, args)
    print(f"\nreport: {run / 'verify.html'}  ({time.time() - t0:.0f} s in all)")


def print_figures(result, heldout_acc: float | None, design: dict | None, args) -> None:
    """The verify figures (data-only predictors, noise ceiling, sweep) and the first-order design's."""
    s = result.summary
    print(f"\n{s['n_rows']} (topic, cluster) rows over {s['n_topics']} topics; noise ceiling of R² "
          f"(sampling noise of the measured ΔB): {s['r2_ceiling']:.3f}")
    print(f"where ΔB's variance sits (in sample): one shift per concept for every topic R² "
          f"{s['r2_cluster_means']:.3f}, one shift per topic for every concept R² {s['r2_topic_means']:.3f}")
    if heldout_acc is not None:
        print(f"held-out preference accuracy (plain DPO): {heldout_acc:.3f}")
    for name, p in s["predictors"].items():
        print(f"  {name:<8} R² {p['r2']:7.3f}  95% CI [{p['r2_ci'][0]:.3f}, {p['r2_ci'][1]:.3f}]  "
              f"Spearman ρ {p['rho']:6.3f} (uncalibrated {p['rho_raw']:6.3f})")
    if "flagged" in s:
        f = s["flagged"]
        print(f"  flagged rows only ({f['n_rows']}): " + ", ".join(
            f"{k} R² {v['r2']:.3f}" for k, v in f["predictors"].items()))
    r2 = {k: v["r2"] for k, v in s["predictors"].items()}
    for other in ("prompt", "naive"):
        ratio = r2["feature"] / r2[other] if r2[other] > 0 and r2["feature"] > 0 else float("nan")  # R² ≤ 0: no ratio
        print(f"feature-conditioned vs {other}: R² {r2['feature']:.3f} vs {r2[other]:.3f} "
              f"(ratio {ratio:.2f}; difference {r2['feature'] - r2[other]:+.3f})")
    if result.sweep is not None:
        print("\nλ sweep (cluster %d):" % int(result.sweep.cluster.iloc[0]))
        print(result.sweep[["lam", "actual", "ci_low", "ci_high", "predicted", "heldout_acc"]].to_string(index=False))
    if design is None:
        print("\nfirst-order predictor: no summary (the run stopped before it)")
        return
    print("\nfirst-order predictor (its own half of the base samples) against the paired ΔB (the other half, "
          "importance-weighted by the trained policy):")
    e = design["ess"]
    print(f"  weights: median ESS {e['median_ess_share']:.2f} of a prompt's samples; {e['fallback_share']:.0%} of "
          f"{e['n_prompts']} prompts fell back to the direct difference (ESS < {e['min_ess']})")
    print_design_levels(design)
    for name, secs in design["seconds"].items():
        what = (f"{args.variant_steps} DPO steps on {design['grad_pairs']} pairs + two forwards" if name == "first_steps"
                else f"reference forward and gradient pass over {design['grad_pairs']} of {design['trained_pairs']} "
                     "trained pairs + one JVP over its half of the base samples")
        print(f"predictor cost, {name}{' (frozen)' if name == FROZEN else ''}: {secs:.0f} s ({what}) vs DPO training "
              f"{design['seconds_dpo']:.0f} s: ratio {secs / design['seconds_dpo']:.2f} (goal ≤ 0.5)")


def print_design_levels(design: dict) -> None:
    """The first-order design's verify levels, and how well each predicted δ agrees with the
    trained policy's own log-prob change (the oracle) on the same generations."""
    for level, key in (("per concept", "concept"), ("per (topic, concept)", None)):
        for target in ("paired", "direct"):
            s = design[target].get(key) if key else design[target]
            if s:
                print_level(f"{level}, {target} target", s)
    if "delta_agreement" in design:
        print("  first_oracle is not a predictor: its δ is the trained policy's own log-prob change on the predictor's "
              "half, so its R² is what the covariance form reaches with a perfect δ at this many samples")
        print("  δ agreement (within-prompt Pearson r of the predicted δ with the oracle's): " + ", ".join(
            f"{k} {v:.2f}" for k, v in design["delta_agreement"].items()))


def unpacked_run(folder: Path, into: Path) -> Path:
    """The folder holding audit/ and pva/plain/ of a brought-back run: `folder` itself, or its
    *.tar.xz files (benchmarks/gpu/truth.sh's) unpacked into `into`."""
    import tarfile

    if (folder / "audit").is_dir() and (folder / "pva" / "plain").is_dir():
        return folder
    archives = sorted(folder.glob("*.tar.xz"))
    if not archives:
        raise SystemExit(f"{folder}: neither audit/ + pva/plain/ nor the *.tar.xz files of benchmarks/gpu/truth.sh")
    into.mkdir(parents=True, exist_ok=True)
    for a in archives:
        with tarfile.open(a) as t:
            t.extractall(into, filter="data")
    for need in (into / "audit", into / "pva" / "plain"):
        if not need.is_dir():
            raise SystemExit(f"{folder}: the archives hold no {need.relative_to(into)}/ (the run stopped before it)")
    return into


def from_run(args) -> None:
    """Verify a brought-back run again from its tables (predictions, ΔB, noise ceiling) and print
    its figures with the first-order summary the run wrote; writes into --work, never into DIR."""
    import shutil
    import tempfile

    import pandas as pd

    from anatomist.evaluate.verify import verify_run

    t0 = time.time()
    root = unpacked_run(args.from_run, Path(tempfile.mkdtemp(prefix="pva_from_run_")))
    work = args.work / "from_run"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(root / "pva" / "plain", work / "plain")      # verify writes its outputs beside the tables
    run = work / "plain"
    result = verify_run(root / "audit", run, n_boot=args.n_boot, seed=args.seed)
    pref = run / "preference.parquet"
    acc = float(pd.read_parquet(pref)["correct"].mean()) if pref.is_file() else None
    summary = run / "first_order" / "summary.json"
    design = json.loads(summary.read_text()) if summary.is_file() else None
    print(f"run {args.from_run} (tables only)")
    print_figures(result, acc, design, args)
    print(f"\nreport: {run / 'verify.html'}  ({time.time() - t0:.0f} s in all)")


if __name__ == "__main__":
    main()
