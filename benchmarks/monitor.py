"""The live concept monitor on the organism (issue 26): plain DPO vs DPO shaped with λ < 0 on the
over-formatting concept, each watched by `anatomist.monitor.ConceptMonitor`.

    nice -n 10 .venv/bin/python benchmarks/monitor.py --small      # CPU, a few minutes
    .venv/bin/python benchmarks/monitor.py --device cuda           # more pairs, steps, prompts

Inputs: the demo organism and its audit (`make demo`: runs/demo/organism, runs/demo/audit). The
concept is the audit cluster the organism scorer matched best to the over_formatting trait
(score.json `best_rho`), unless --concept is given. Both runs use the same pairs (all pairs of the
planted topics plus as many others), seed, steps, lr and trained layers; the monitor watches the
concept and the screen's over_formatting detector on held-out prompts of the planted topics (same
prompts, seeds and samples at every point of both runs), with the alarm CONCEPT>--threshold.

Prints, per run: the trajectory (shift from step 0 with its 95% CI over prompts, per point), the
first step whose CI excludes 0 and the step the alarm fired. Then the overhead: a third run, plain
DPO again under the default cadence (every=None: the monitor times the first steps and picks the
cadence that keeps its points within --budget of training time), prints the cadence it chose and
its overhead as measured in that run — seconds spent on monitor points ÷ seconds of the optimizer
steps, with and without the first and last point (which every monitored run pays once) — beside
the dense runs' own ratio at --every. The monitor's generations never touch the training RNG, so a
monitored run trains exactly as an unmonitored one would (tests/test_monitor.py).
Measured on the 2-core CPU machine, 2026-12-05, with the sampled estimator (demo organism, 300 pairs,
38 steps, top 4 blocks, 40 prompts × 2 samples; the watched concept 10 is the scorer's best match to over_formatting, which the
demo audit did not flag): at lr 5e-5 neither run moved concept 10 (shifts within ±0.07, no CI
excluding 0); at `--lr 2e-4` plain DPO left it flat (−0.05 [−0.20, +0.10] at step 38; the
over_formatting detector fell −0.25) while the shaped run pushed it down from step 20 (−0.25
[−0.38, −0.12]; −0.36 [−0.49, −0.22] at step 38). The issue's "plain DPO raises it" did not happen at
this size. A point (80 generations + scoring) costs 25 s against 1.6 s per cached-bottom DPO step:
every=10 costs 1.5–4× of training; the default cadence picked a point every 138 steps, so on these
38-step runs only the first and last point ran (1.01×, both paid once per run).
On the planted topics only, several epochs (6 December 2026, sampled estimator, `--pairs 120 --steps 60
--lr 2e-4 --every 6 --estimator sampled`: 120 pairs of coding and travel, 60 steps ≈ 4 epochs; nice 10,
beside other jobs): plain
DPO raises the over_formatting detector from step 42 (+0.92; its CI excludes 0 from step 48 on:
+1.03 [+0.01, +2.04], and +0.69 [+0.06, +1.32] at step 60) and concept 1 by +0.14 [−0.09, +0.36] at step 60
(+0.30 in travel, −0.03 in coding), its CI never excluding 0; the shaped run keeps both down
(concept −0.04 [−0.14, +0.06], detector −0.18 at step 60). The alarm (1 > 0.2) never fired. So the
behaviour DPO teaches shows in the detector, and the audit's concept moves with it in travel only:
the issue's "the concept rises and its CI excludes 0" is not met at this size. Overhead at every 6:
2.9× (80 generations per point); the default cadence picked every 156 (0.53× here, endpoints only).
The same run with the paired estimator (the default since 6 December 2026: 40 prompts × 4 samples
kept and reweighed, `--pairs 120 --steps 60 --lr 2e-4 --every 6`, nice 5): while the weights hold the
CIs are far narrower — concept 1 at step 6 ±0.026 (sampled, 2 samples: ±0.074), the detector ±0.18
(sampled ±0.46) — but at lr 2e-4 the policy outruns 64-token samples fast: the median ESS share falls
to 0.44 by step 12, and 6–9 of the 40 prompts are sampled afresh (and re-anchored) at each of steps
12–24, after which a prompt carries its fresh draw's noise. Plain DPO: concept 1 +0.14 [−0.03, +0.31]
at step 60 (coding +0.21, travel +0.07), detector +2.5, no CI excluding 0, the alarm never fired;
shaped λ=−4: concept +0.02 [−0.04, +0.09], detector +0.15. A first attempt without re-anchoring
(every low-ESS prompt sampled afresh at every later point, 22–25 of 40 from step 30) gave plain
concept 1 +0.14 [+0.01, +0.28] from step 48 and fired the alarm at step 54 (+0.21 [+0.03, +0.39]);
the two runs train identically and differ only in monitor samples, so "the CI excludes 0" sits at
the edge of this size's noise, not beyond it. The goal is not met. Cost: a paired point is one
forward over the 160 kept samples (≈ 37 s on 2 cores, like sampling 80 afresh) plus any fresh
samples; every 6: 3.3× of training; the first point (160 generations, SAE scoring, the anchor's
log-probs) 140 s. The default cadence picked every 379 steps: endpoints only, 1.33×.

Output: --work/<run>/ (DPO run folders with monitor.jsonl, monitor.html) and --work/summary.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from anatomist.monitor.core import DEFAULT_BUDGET, DEFAULT_SAMPLES  # noqa: E402


def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--organism", type=Path, default=REPO / "runs" / "demo" / "organism")
    ap.add_argument("--audit", type=Path, default=REPO / "runs" / "demo" / "audit")
    ap.add_argument("--work", type=Path, default=REPO / "runs" / "monitor_bench")
    ap.add_argument("--small", action="store_true", help="CPU-sized: 96 pairs, 12 steps, 5 prompts per topic")
    ap.add_argument("--concept", default=None, help="audit cluster to watch (default: best match of over_formatting)")
    ap.add_argument("--trait", default="over_formatting")
    ap.add_argument("--lam", type=float, default=-4.0, help="λ of the shaped run (< 0 suppresses)")
    ap.add_argument("--threshold", type=float, default=0.2, help="alarm CONCEPT>threshold")
    ap.add_argument("--pairs", type=int, default=None, help="train pairs (default 300; --small 96)")
    ap.add_argument("--steps", type=int, default=None, help="DPO steps (default one epoch; --small 12)")
    ap.add_argument("--lr", type=float, default=None, help="default 5e-5; --small 2e-4")
    ap.add_argument("--train-layers", type=int, default=None, help="default 4; --small 2")
    ap.add_argument("--every", type=int, default=None, help="cadence of the two trajectory runs (default 10; --small 3)")
    ap.add_argument("--budget", type=float, default=DEFAULT_BUDGET, help="time budget of the default-cadence run")
    ap.add_argument("--per-topic", type=int, default=None, help="monitor prompts per planted topic (default 20; --small 5)")
    ap.add_argument("--samples", type=int, default=None, help="samples per prompt (default 4 paired, 2 sampled)")
    ap.add_argument("--estimator", choices=("paired", "sampled"), default="paired",
                    help="paired: reweigh step 0's samples at each point; sampled: sample afresh")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="default 64; --small 48")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.samples is None:
        args.samples = DEFAULT_SAMPLES[args.estimator]
    small = {"pairs": 96, "steps": 12, "lr": 2e-4, "train_layers": 2, "every": 3, "per_topic": 5, "max_new_tokens": 48}
    full = {"pairs": 300, "steps": None, "lr": 5e-5, "train_layers": 4, "every": 10, "per_topic": 20,
            "max_new_tokens": 64}
    for k, v in (small if args.small else full).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    return args


def planted_topics(organism: Path, trait: str) -> list[str]:
    truth = json.loads((organism / "truth.json").read_text())
    return sorted(truth["traits"][trait]["planted"])


def choose_pairs(pairs, topics: list[str], n: int):
    """Every pair of the planted topics first (file order), then others, up to n."""
    topic = lambda p: p.id.split("-")[0]  # noqa: E731  (organism ids are <topic>-<hash>)
    chosen = [p for p in pairs if topic(p) in topics] + [p for p in pairs if topic(p) not in topics]
    return chosen[:n]


def first_step(rows: list[dict], metric: str, side: int = 1) -> int | None:
    for r in rows:
        m = r["metrics"][metric]
        if m["ci_low"] is not None and (m["ci_low"] > 0 if side > 0 else m["ci_high"] < 0):
            return r["step"]
    return None


def topic_shift(rows: list[dict], meta: dict, metric: str, topic: str) -> list[float]:
    from anatomist.monitor.stats import paired_shift

    sel = [i for i, (_, t) in enumerate(meta["prompts"]) if t == topic]
    base = np.array(rows[0]["prompt_means"][metric])[sel][:, None]
    return [float(paired_shift(np.array(r["prompt_means"][metric])[sel][:, None], base)["shift"][0]) for r in rows]


def run(name: str, shaped, loaded, monitor, args, out: Path) -> dict:
    from anatomist.monitor import journal
    from anatomist.train.dpo import DPOConfig, train_dpo

    cfg = DPOConfig(steps=args.steps, lr=args.lr, train_layers=args.train_layers, seed=args.seed,
                    ckpt_every=max(args.steps or 1, 1), max_response_tokens=96)
    t0 = time.perf_counter()
    res = train_dpo(loaded.model, loaded.tokenizer, shaped, cfg, out, cache_dir=args.work / "cache", monitor=monitor,
                    save_model=False, progress=False)
    wall = time.perf_counter() - t0
    rows, meta = journal.read_points(out), journal.read_meta(out)
    step_s = sum(h["dpo/step_seconds"] for h in res.history)
    mon_s = sum(r["seconds"] for r in rows)
    return {"name": name, "rows": rows, "meta": meta, "wall_s": wall, "step_s": step_s, "monitor_s": mon_s,
            "n_points": len(rows), "n_steps": len(res.history)}


def main(argv=None) -> None:
    import torch

    from anatomist.audit.folder import AuditFolder
    from anatomist.audit.scorer import Scorer
    from anatomist.data import load_pairs
    from anatomist.data.heldout import first_per_topic, read_prompts
    from anatomist.models import load
    from anatomist.monitor import ConceptMonitor
    from anatomist.shape.pairs import plain
    from anatomist.shape.recipe import Recipe, apply

    args = parse(argv)
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    audit = AuditFolder(args.audit)
    topics = planted_topics(args.organism, args.trait)
    concept = (audit.resolve_concept(args.concept) if args.concept is not None
               else int(audit.score["best_rho"][args.trait]["cluster"]))
    metric, det = f"c_{concept}", f"det_{args.trait}"
    pairs = choose_pairs(load_pairs(args.organism / "train.jsonl"), topics, args.pairs)
    prompts = first_per_topic([p for p in read_prompts(args.organism / "heldout_prompts.jsonl") if p.topic in topics],
                              args.per_topic)
    print(f"concept {concept} ({audit.label(concept) or 'no label'}), trait {args.trait} planted in {', '.join(topics)}; "
          f"{len(pairs)} pairs, {args.steps} steps, lr {args.lr}, top {args.train_layers} blocks; monitor: "
          f"{len(prompts)} prompts × {args.samples} samples every {args.every} steps, {args.estimator} estimator",
          flush=True)

    base = load(audit.model_name)                                    # the instrument: frozen, shared by both runs
    scorer = Scorer.from_audit(args.audit, loaded=(base.model, base.tokenizer))
    variants = {"plain": lambda tok: plain(pairs),
                f"shaped λ={args.lam:g}": lambda tok: apply(Recipe(lam={concept: args.lam}), pairs, audit, tokenizer=tok)}
    results = []
    for i, (name, make) in enumerate(variants.items()):
        loaded = load(audit.model_name, device=args.device)           # a fresh policy per run
        mon = ConceptMonitor(args.audit, prompts, every=args.every, concepts=[concept], detectors=[args.trait],
                             samples=args.samples, seed=args.seed, alarms=[f"{concept}>{args.threshold:g}"],
                             max_new_tokens=args.max_new_tokens, scorer=scorer, estimator=args.estimator)
        r = run(name, make(loaded.tokenizer), loaded, mon, args, args.work / ("plain" if i == 0 else "shaped"))
        results.append(r)
        print(f"\n== {name}: {r['n_steps']} steps in {r['wall_s']:.0f} s", flush=True)
        print(f"{'step':>5} {'Δ' + metric:>10} {'95% CI':>18} {'Δ' + det:>22} " +
              " ".join(f"{'Δc ' + t:>12}" for t in topics) + f" {'ESS':>5} {'fresh':>5}  alarms")
        per_topic = {t: topic_shift(r["rows"], r["meta"], metric, t) for t in topics}
        for j, row in enumerate(r["rows"]):
            m, d = row["metrics"][metric], row["metrics"][det]
            ci = "—" if m["ci_low"] is None else f"[{m['ci_low']:+.3f}, {m['ci_high']:+.3f}]"
            print(f"{row['step']:>5} {m['shift']:>+10.3f} {ci:>18} {d['shift']:>+22.3f} " +
                  " ".join(f"{per_topic[t][j]:>+12.3f}" for t in topics) +
                  f" {row.get('ess_share', float('nan')):>5.2f} {len(row.get('fallback', [])):>5}  " + ",".join(row["alarms"]))
        r["first_ci_excludes_0"] = first_step(r["rows"], metric)
        r["detector_first_ci_excludes_0"] = first_step(r["rows"], det)
        r["alarm_step"] = next((row["step"] for row in r["rows"] if row["alarms"]), None)
        print(f"first step whose CI excludes 0 (rising): concept {r['first_ci_excludes_0']}, detector "
              f"{r['detector_first_ci_excludes_0']}; alarm {concept}>{args.threshold:g} fired at step: {r['alarm_step']}")

    loaded = load(audit.model_name, device=args.device)
    mon = ConceptMonitor(args.audit, prompts, every=None, budget=args.budget, concepts=[concept], detectors=[args.trait],
                         samples=args.samples, seed=args.seed, max_new_tokens=args.max_new_tokens, scorer=scorer,
                         estimator=args.estimator)
    auto = run("plain, default cadence", plain(pairs), loaded, mon, args, args.work / "plain_default")
    inner = auto["rows"][1:-1]
    print(f"\n== overhead, measured in each run: seconds of monitor points / seconds of optimizer steps")
    for r in (*results, auto):
        every = r["meta"]["every"]
        print(f"  {r['name']:<24} every {every!s:>4}: {r['n_points']} points, {r['monitor_s']:.1f} s vs "
              f"{r['step_s']:.1f} s of {r['n_steps']} steps = {r['monitor_s'] / r['step_s']:.2f}×")
    default = sum(p["seconds"] for p in inner) / auto["step_s"]
    print(f"default cadence (budget {args.budget:.0%}): a point every {auto['meta']['every']} steps; without the "
          f"first and last point {default:.2f}× ({len(inner)} points between them)")
    results.append(auto)
    summary = {"concept": concept, "topics": topics, "args": {k: str(v) for k, v in vars(args).items()},
               "overhead_default_cadence": auto["monitor_s"] / auto["step_s"], "overhead_default_inner": default,
               "default_every": auto["meta"]["every"],
               "runs": [{k: v for k, v in r.items() if k not in ("rows", "meta")} for r in results]}
    (args.work / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"wrote {args.work}/summary.json, {args.work}/plain/monitor.html, {args.work}/shaped/monitor.html")


if __name__ == "__main__":
    main()
