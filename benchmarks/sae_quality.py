"""Quality of the default SAE on held-out text (issue 3's targets).

    .venv/bin/python benchmarks/sae_quality.py [--heldout-sequences 160] [--ce-sequences 48]

Trains the default SAE if it is not cached yet (`anatomist.sae.default_sae`: capture + train,
timed), captures the recipe's held-out pairs (the last 10% of each demo file, never trained
on) at the same layer, and prints on them: FVU, L0, dead latents (no activation on any
held-out token), and CE loss recovered (SAE reconstruction spliced into the residual after the
layer, vs. zero ablation; on --ce-sequences evenly spaced held-out sequences, both files mixed).
Targets: FVU <= 0.15, dead <= 10%, CE loss recovered >= 80%, training <= 15 min.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from anatomist.capture import capture  # noqa: E402
from anatomist.models import load  # noqa: E402
from anatomist.models.loading import DEFAULT_MODEL, cache_root  # noqa: E402
from anatomist.sae import load_sae  # noqa: E402
from anatomist.sae.default import DEFAULT_RECIPE, default_sae, recipe_items  # noqa: E402
from anatomist.sae.evaluate import activation_metrics, ce_recovered  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--heldout-sequences", type=int, default=160, help="held-out sequences for FVU / L0 / dead "
                    "(evenly spaced pairs over both files; 360 = all)")
    ap.add_argument("--ce-sequences", type=int, default=48)
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    progress = not args.no_progress
    r = DEFAULT_RECIPE

    lm = load(args.model)
    t0 = time.perf_counter()
    path = default_sae(args.model, model=lm, progress=progress)
    trained_now = time.perf_counter() - t0 > 5
    sae = load_sae(path)
    recipe_info = json.loads((path / "recipe.json").read_text()) if (path / "recipe.json").is_file() else {}
    summary = json.loads((path / "training.json").read_text())

    held = recipe_items(r, "heldout")
    n_pairs = len(held) // 2
    step = max(1, round(n_pairs / max(1, args.heldout_sequences // 2)))
    held = [it for i in range(0, n_pairs, step) for it in held[2 * i:2 * i + 2]]   # sequence 2i, 2i+1 = pair i
    name = f"heldout-{r.capture_key(args.model)}-{len(held)}"
    store = capture(lm.model, lm.tokenizer, held, cache_root() / "sae" / args.model / name,
                    r.layer, model_name=args.model, batch_size=r.batch_size, max_length=r.max_length, keep=r.keep,
                    shard_tokens=1 << 15, progress=progress)
    m = activation_metrics(sae, store)
    train_store = cache_root() / "sae" / args.model / f"acts-{r.capture_key(args.model)}"
    m_train = activation_metrics(sae, train_store)   # dead over the N training tokens (issue's definition)
    print(f"activation metrics: held-out {m}, training data {m_train}", flush=True)
    step = max(1, len(held) // args.ce_sequences)
    ce_items = held[::step][:args.ce_sequences]
    ce = ce_recovered(sae, lm.model, lm.tokenizer, ce_items, max_length=r.max_length, progress=progress)

    total = recipe_info.get("total_s")
    print(f"default SAE: {path}")
    print(f"  recipe: layer {r.layer}, {sae.d_sae} latents ({r.width}), k {r.k}, {r.architecture}, "
          f"{summary['train']['tokens']:,} training tokens over {summary['data']['n_tokens']:,} captured "
          f"(keep={r.keep}, pos-0 excluded)")
    if "tokens_per_s" in summary:
        print(f"  training loop: {summary['tokens_per_s']:,.0f} tokens/s ({summary['steps_this_call']} steps in "
              f"{summary['wall_s']:.0f} s in the call that finished it)")
    if total is not None:
        print(f"  build time: {total / 60:.1f} min (capture {recipe_info['capture_s']:.0f} s, train "
              f"{recipe_info['train_s']:.0f} s){' [this run]' if trained_now else ' [cached run]'}")
    print(f"held-out: {m['n_tokens']:,} tokens ({len(held)} sequences); CE on {len(ce_items)} sequences, "
          f"{ce['ce_tokens']:,} tokens")
    ok = {"fvu": m["fvu"] <= 0.15, "dead": m["dead_frac"] <= 0.10, "ce": ce["ce_recovered"] >= 0.80}
    print(f"  FVU               {m['fvu']:.4f}   (target <= 0.15: {'PASS' if ok['fvu'] else 'FAIL'})")
    print(f"  L0                {m['l0']:.1f}")
    print(f"  dead latents      {m['dead_frac']:.1%}   (target <= 10%: {'PASS' if ok['dead'] else 'FAIL'}; no "
          f"activation on any of the {m['n_tokens']:,} held-out tokens; on the {m_train['n_tokens']:,} training "
          f"tokens: {m_train['dead_frac']:.1%}, training FVU {m_train['fvu']:.4f})")
    print(f"  CE loss recovered {ce['ce_recovered']:.1%}   (target >= 80%: {'PASS' if ok['ce'] else 'FAIL'}; "
          f"clean {ce['ce_clean']:.3f}, SAE {ce['ce_sae']:.3f}, zero {ce['ce_zero']:.3f})")


if __name__ == "__main__":
    main()
