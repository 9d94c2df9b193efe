"""Organism detector check: per trait, how often its detector fires on trait generations vs. plain
generations of the same prompts (the default model's own text).

    .venv/bin/python benchmarks/organism_detectors.py [--n 10] [--max-new-tokens 96] [--no-compare-prefix]

Generations are cached under $ANATOMIST_CACHE/organism/<hash>/ (a rerun prints at once; a killed
run resumes). Prints, per trait and inducer variant, the fire rate on the trait's carriers (trait generations;
plain ones for an inverted trait), on the contrast generations, and their ratio; `--show K` prints K example generations per trait.
"""

from __future__ import annotations

import argparse
import time

from anatomist.models import DEFAULT_MODEL, load
from anatomist.organism.rates import fire_rates, rate_prompts, rate_requests
from anatomist.organism.traits import TRAITS
from anatomist.spec_decode.batched import GenSettings, generate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10, help="prompts per trait")
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--traits", default=",".join(TRAITS))
    ap.add_argument("--no-compare-prefix", action="store_true", help="skip the system-prompt-only variant")
    ap.add_argument("--show", type=int, default=0)
    args = ap.parse_args()
    traits = tuple(args.traits.split(","))

    model, tok, _ = load()
    requests = rate_requests(args.n, args.max_new_tokens, traits=traits,
                             compare_prefix=not args.no_compare_prefix, seed=args.seed)
    settings = GenSettings(model=DEFAULT_MODEL, batch_size=args.batch_size, seed=args.seed)
    t0 = time.time()
    results = generate(model, tok, requests, settings)
    print(f"{len(requests)} generations in {time.time() - t0:.0f} s (0 s = cached)")
    print("carrier = texts meant to show the trait (induced; plain for an inverted trait), contrast = the others")
    print(f"{'trait':24s} {'inducer':14s} {'n':>3s} {'carrier':>8s} {'contrast':>8s} {'ratio':>6s}  "
          f"{'mean score carrier / contrast':>30s}")
    for r in fire_rates(results, args.n, traits=traits, seed=args.seed):
        print(f"{r.trait + (' (inv)' if r.inverted else ''):24s} {r.variant:14s} {r.n:3d} {r.carrier_rate:8.2f} "
              f"{r.contrast_rate:8.2f} {r.ratio:6.1f}  {r.carrier_score:10.2f} / {r.contrast_score:<10.2f}")
    for name in traits if args.show else ():
        for p in rate_prompts(TRAITS[name], args.n, args.seed)[:args.show]:
            for tag in ("plain", name, f"{name}:noprefix"):
                g = results.get(f"{p.id}/{tag}")
                if g:
                    print(f"--- {tag} | {p.text[:80]!r}\n{g.text}\n")


if __name__ == "__main__":
    main()
