"""Acceptance vs target entropy for CE-, TV- and e2e-TV-trained MTP heads, RS and greedy drafting.

    python benchmarks/entropy_slope.py [--prompts 8] [--max-new-tokens 40] [--steps 1000] [--threads 1]

Heads are trained once on the model's own T=1 samples (cached under $ANATOMIST_CACHE/spec; the
e2e-TV head is the one `spec_speed.py` uses). For temperatures 0.3 … 1.5 every depth-1 draft
test contributes (H(p), accepted); the slope of acceptance on H(p) (per nat) is fitted per head and
mode with a 95% CI. Goal (issue 8): |slope_TV| ≤ 0.06 and ≤ a tenth of the CE head's |slope|
(Bebop reports −0.06 vs −1.68), checked within each drafting mode and, as Bebop contrasts them,
for a TV head under RS against the conventional CE head with greedy drafts. Writes a
self-contained HTML plot.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from anatomist.models import load  # noqa: E402
from anatomist.spec_decode.analyze import DEFAULT_TEMPERATURES, collect, render_html, slopes  # noqa: E402
from anatomist.spec_decode.pipeline import spec_cache  # noqa: E402
from anatomist.spec_decode.prompts import chat_prompts  # noqa: E402
from spec_heads import add_head_args, heads_from_args  # noqa: E402 — beside this script


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=40)
    add_head_args(ap)
    ap.add_argument("--losses", default="ce,tv,e2e_tv")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument("--out", default=str(spec_cache() / "acceptance_vs_entropy.html"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch threads: {torch.get_num_threads()}")
    lm = load(args.model, device=args.device)
    print(f"model {args.model} on {args.device}")
    heads = heads_from_args(lm, args, args.losses.split(","))
    prompts = chat_prompts(lm.tokenizer, "eval", args.prompts)
    t = time.perf_counter()
    with torch.no_grad():
        recs = collect(lm.model, heads, prompts, temperatures=DEFAULT_TEMPERATURES, max_new_tokens=args.max_new_tokens,
                       batch_size=8, eos_token_id=lm.tokenizer.eos_token_id)
    print(f"collected {len(recs)} draft tests in {time.perf_counter() - t:.0f} s "
          f"({args.prompts} eval prompts × T ∈ {list(DEFAULT_TEMPERATURES)})\n")
    fits = slopes(recs)
    print(f"{'head':7s} {'mode':6s} {'slope/nat':>10s} {'95% CI':>22s} {'accept':>7s} {'n':>6s}   "
          "acceptance @T " + " ".join(f"{t:>5}" for t in DEFAULT_TEMPERATURES))
    for (head, mode), info in fits.items():
        f = info["fit"]
        per_t = " ".join(f"{info['per_temperature'].get(t, {}).get('acceptance', float('nan')):5.2f}"
                         for t in DEFAULT_TEMPERATURES)
        print(f"{head:7s} {mode:6s} {f.slope:+10.4f} [{f.slope_ci[0]:+.4f}, {f.slope_ci[1]:+.4f}] "
              f"{info['acceptance']:7.3f} {f.n:6d}   {'':14s}{per_t}")
    ents = " ".join(f"{fits[next(iter(fits))]['per_temperature'].get(t, {}).get('entropy', float('nan')):5.2f}"
                    for t in DEFAULT_TEMPERATURES)
    print(f"{'':62s}mean H(p) @T   {ents}")
    print()
    # Within each drafting mode, then Bebop's contrast: the conventional setup (CE-trained head,
    # greedy drafts) against a TV-trained head verified by rejection sampling.
    contrasts = [(f"({mode})", (loss, mode), ("ce", mode)) for mode in ("rs", "greedy") for loss in ("tv", "e2e_tv")]
    contrasts += [("(tv head + rs vs ce head + greedy)", (loss, "rs"), ("ce", "greedy")) for loss in ("tv", "e2e_tv")]
    for label, head, base in contrasts:
        if head in fits and base in fits:
            s, ce = fits[head]["fit"].slope, fits[base]["fit"].slope
            ok = abs(s) <= 0.06 and abs(s) <= abs(ce) / 10
            print(f"goal |slope_{head[0]}| ≤ 0.06 and ≤ |slope_ce|/10 {label}: {s:+.4f} vs ce {ce:+.4f} "
                  f"(ratio {abs(s) / abs(ce) if ce else float('nan'):.2f}) — {'met' if ok else 'NOT met'}")
    with open(args.out, "w") as fh:
        fh.write(render_html(recs))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
