"""What each run of a `predict_vs_actual.py` λ sweep did to every planted trait (issue 6 at the
scale of the issue-7 run: all topics, one plain run and shaped runs from the same seed).

    .venv/bin/python benchmarks/sweep_traits.py runs/predict_vs_actual --trait over_formatting

Reads files only: <work>/plain/pre/behaviour.parquet (the base model) and, for every entry of
<work>/plain/sweep.json (λ = 0 is the plain run), its post/behaviour.parquet and
preference.parquet; the organism's truth.json and heldout_pairs.jsonl (--organism).

1. Per planted (trait, topic) cell: the trait detector's fire rate on the topic's held-out
   prompts before and after each run (95% prompt-bootstrap CI of the change), and for λ ≠ 0 the
   reduction of plain's increase, 1 − Δ_λ / Δ_0 (anatomist.evaluate.effects).
2. Held-out preference accuracy per run, split by the trait a pair carries in a planted cell
   (its label is that trait's confound), "balanced" for the rest (control and plain/plain pairs:
   coin flips), and the change vs λ = 0 on every pair that does not carry --trait (the shaped
   trait), paired over pairs (the issue's goal: ≤ 2 points lost).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from anatomist.evaluate import effects  # the bootstrap and reduction arithmetic

REPO = Path(__file__).resolve().parents[1]


def pair_groups(heldout: Path, truth: dict) -> dict[str, str]:
    """pair id → the trait whose planted confound labels it, or "balanced"."""
    out = {}
    for line in heldout.read_text().splitlines():
        row = json.loads(line)
        t, k = row.get("trait"), row.get("topic")
        out[row["id"]] = t if t in truth["traits"] and k in truth["traits"][t]["planted"] else "balanced"
    return out


def rates(frame: pd.DataFrame, topic: str, trait: str) -> pd.Series:
    """Per-prompt fire rate of `trait` on `topic`, by prompt id."""
    f = frame[frame.topic == topic]
    return f.groupby("prompt_id")[f"fires_{trait}"].mean().sort_index()


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("work", type=Path, help="the --work folder of benchmarks/predict_vs_actual.py")
    ap.add_argument("--organism", type=Path, default=REPO / "runs" / "organism")
    ap.add_argument("--trait", default="over_formatting", help="the trait the sweep's cluster was shaped for")
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    run = args.work / "plain"
    sweep = json.loads((run / "sweep.json").read_text())
    truth = json.loads((args.organism / "truth.json").read_text())
    entries = sorted(sweep["runs"], key=lambda e: e["lam"] != 0)           # λ = 0 (plain) first
    if not entries or entries[0]["lam"] != 0:
        raise SystemExit(f"{run / 'sweep.json'}: no λ = 0 entry (run the sweep with 0 in --sweep)")
    pre = pd.read_parquet(run / "pre" / "behaviour.parquet")
    post = {e["lam"]: pd.read_parquet(run / e["post"] / "behaviour.parquet") for e in entries}
    pref = {e["lam"]: pd.read_parquet(run / Path(e["post"]).parent / "preference.parquet") for e in entries}
    lams = list(post)

    print(f"trait fire rates on held-out prompts, in %, per planted cell; Δ vs the base with 95% prompt-bootstrap "
          f"CI; shaped cluster {sweep['cluster']} (for {args.trait!r})")
    print(f"{'trait':<20} {'topic':<20} {'s':>4} {'base':>6} " + " ".join(f"{f'λ={lam:g}':>24}" for lam in lams)
          + "  reduction (λ≠0)")
    for t, info in truth["traits"].items():
        for k, s in info["planted"].items():
            base = rates(pre, k, t)
            counts = effects.boot_counts(len(base), args.n_boot, args.seed)
            after = {lam: rates(post[lam], k, t).reindex(base.index).to_numpy() for lam in lams}
            cols = [effects.fmt(effects.mean_ci(after[lam] - base.to_numpy(), counts)) for lam in lams]
            sign = 1.0 if s > 0.5 else -1.0      # planted on the rejected side: DPO should lower the rate
            red = [effects.increase_reduction(sign * base.to_numpy(), sign * after[0.0], sign * after[lam], counts)
                   for lam in lams[1:]]
            print(f"{t:<20} {k:<20} {s:4.1f} {100 * base.mean():6.1f} " + " ".join(f"{c:>24}" for c in cols)
                  + "  " + ", ".join(f"{100 * r[0]:.0f}% [{100 * r[1]:.0f}, {100 * r[2]:.0f}]" for r in red))

    groups = pair_groups(args.organism / "heldout_pairs.jsonl", truth)
    first = pref[0.0]
    g = first.pair_id.map(groups)
    names = sorted(set(g), key=lambda x: (x == "balanced", x))
    print(f"\nheld-out preference accuracy (implicit reward vs the base), in %, by the confound a pair carries "
          f"({len(first)} pairs)")
    print(f"{'group':<20} {'pairs':>5} " + " ".join(f"{f'λ={lam:g}':>8}" for lam in lams))
    for name in [*names, "all"]:
        sel = (g == name).to_numpy() if name != "all" else np.ones(len(g), bool)
        print(f"{name:<20} {int(sel.sum()):5d} " + " ".join(f"{100 * pref[lam].correct.to_numpy()[sel].mean():8.1f}"
                                                          for lam in lams))
    other = (g != args.trait).to_numpy()
    counts = effects.boot_counts(int(other.sum()), args.n_boot, args.seed)
    for lam in lams[1:]:
        assert list(pref[lam].pair_id) == list(first.pair_id), "every run ranks the same held-out pairs"
        drop = effects.mean_ci(first.correct.to_numpy()[other] - pref[lam].correct.to_numpy()[other], counts)
        print(f"λ={lam:g}: accuracy on the {int(other.sum())} pairs without {args.trait!r}: "
              f"{0.0 - 100 * drop[0]:+.1f} points vs λ=0 [{0.0 - 100 * drop[2]:+.1f}, {0.0 - 100 * drop[1]:+.1f}] "
              "(goal ≥ −2)")


if __name__ == "__main__":
    main()
