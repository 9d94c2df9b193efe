"""Speculative decoding speed on the default model at T=1: tokens/s and ratios measured in one run.

    python benchmarks/spec_speed.py [--prompts 6] [--max-new-tokens 64] [--steps 1000] [--threads 1]

Methods, interleaved prompt by prompt so load swings on the host hit all of them alike:
  hf       Hugging Face `model.generate(do_sample=True, temperature=1, top_k=0)`
  plain    anatomist's own loop without a drafter (γ = 0)
  ngram    prompt-lookup drafts (model-free), γ = 3 (--gamma)
  mtp_rs   the e2e-TV MTP head, drafts sampled from q and verified by rejection sampling, γ = 3 (--gamma)
at batch 1 and batch 8. The head and its training data are cached under $ANATOMIST_CACHE/spec;
the first run generates the data and trains the head (minutes), later runs only measure.
Goals (issue 8): mtp_rs ≥ 2.0× plain at batch 1; draft acceptance ≥ 0.8 for the e2e-TV head.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from anatomist.models import load  # noqa: E402
from anatomist.spec_decode.drafters import MTPDrafter, NGramDrafter  # noqa: E402
from anatomist.spec_decode.generate import generate  # noqa: E402
from anatomist.spec_decode.prompts import chat_prompts  # noqa: E402
from spec_heads import add_head_args, heads_from_args  # noqa: E402 — beside this script


def run_hf(lm, batch, max_new_tokens, seed):
    tok = lm.tokenizer
    tok.padding_side = "left"
    P = max(len(p) for p in batch)
    dev = lm.model.device
    ids = torch.tensor([[tok.pad_token_id] * (P - len(p)) + p for p in batch], device=dev)
    att = torch.tensor([[0] * (P - len(p)) + [1] * len(p) for p in batch], device=dev)
    torch.manual_seed(seed)
    out = lm.model.generate(input_ids=ids, attention_mask=att, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                            max_new_tokens=max_new_tokens, eos_token_id=tok.eos_token_id,
                            pad_token_id=tok.pad_token_id)
    n = 0
    for row in out[:, P:].tolist():
        n += next((i + 1 for i, t in enumerate(row) if t == tok.eos_token_id), len(row))
    return n, None


def run_own(lm, batch, max_new_tokens, seed, drafter=None, mode="rs", gamma=3):
    out = generate(lm.model, batch, drafter=drafter, gamma=gamma, temperature=1.0, max_new_tokens=max_new_tokens,
                   eos_token_id=lm.tokenizer.eos_token_id, draft_mode=mode,
                   generator=torch.Generator().manual_seed(seed))
    return sum(len(t) for t in out.tokens), out.stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=6, help="batch-1 prompts (batch 8 uses 8 more)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    add_head_args(ap)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--gamma", type=int, default=3, help="draft tokens per round (ngram and mtp_rs)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default); on a shared, "
                    "busy host 1 thread avoids OpenMP barrier stalls that hit multi-token forwards hardest")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch threads: {torch.get_num_threads()}")
    torch.set_grad_enabled(False)
    lm = load(args.model, device=args.device)
    print(f"model {args.model} on {args.device}")
    head = heads_from_args(lm, args, ["e2e_tv"])["e2e_tv"]
    methods = {
        "hf": lambda b, s: run_hf(lm, b, args.max_new_tokens, s),
        "plain": lambda b, s: run_own(lm, b, args.max_new_tokens, s),
        "ngram": lambda b, s: run_own(lm, b, args.max_new_tokens, s, NGramDrafter(), gamma=args.gamma),
        "mtp_rs": lambda b, s: run_own(lm, b, args.max_new_tokens, s, MTPDrafter(head), "rs", args.gamma),
    }
    prompts = chat_prompts(lm.tokenizer, "eval", args.prompts + 8)
    run_own(lm, prompts[:1], 4, 0, MTPDrafter(head))  # warm-up
    # Lossless at T=0: speculative output equals plain greedy decoding token for token (on this device).
    same = [generate(lm.model, [p], drafter=d, gamma=3, temperature=0.0, max_new_tokens=32,
                     eos_token_id=lm.tokenizer.eos_token_id).tokens[0] for p in prompts[:2]
            for d in (None, MTPDrafter(head))]
    print(f"T=0 speculative == greedy on {args.device}: {same[0] == same[1] and same[2] == same[3]}")
    results = {}
    for B in [int(x) for x in args.batches.split(",")]:
        groups = [[p] for p in prompts[:args.prompts]] if B == 1 else [prompts[i:i + B] for i in range(0, len(prompts) - B + 1, B)][:1]
        tot = {k: [0, 0.0] for k in methods}
        stats = {k: [] for k in methods}
        for gi, batch in enumerate(groups):
            for name, fn in methods.items():  # interleaved: each prompt runs every method back to back
                t = time.perf_counter()
                n, st = fn(batch, gi)
                tot[name][0] += n
                tot[name][1] += time.perf_counter() - t
                if st is not None:
                    stats[name].append(st)
        base = tot["plain"][0] / tot["plain"][1]
        hf = tot["hf"][0] / tot["hf"][1]
        print(f"\nbatch {B} ({len(groups)} × {len(groups[0])} prompts, ≤{args.max_new_tokens} new tokens, T=1)")
        print(f"{'method':8s} {'tokens':>7s} {'s':>7s} {'tok/s':>7s} {'×plain':>7s} {'×hf':>7s}  acceptance")
        for name, (n, s) in tot.items():
            rate = n / s
            acc = ""
            if stats[name] and stats[name][0].gamma:
                rounds = sum(x.rounds for x in stats[name])
                emitted = sum(x.emitted for x in stats[name])
                reached = [sum(x.reached[i] for x in stats[name]) for i in range(args.gamma)]
                accd = [sum(x.accepted[i] for x in stats[name]) for i in range(args.gamma)]
                alpha = [a / r if r else float("nan") for a, r in zip(accd, reached)]
                acc = (f"mean accept len {emitted / rounds:.2f} (incl. bonus), drafts accepted "
                       f"{(emitted - rounds) / (args.gamma * rounds):.3f}, α_i {[round(a, 3) for a in alpha]}")
                results[(B, name, "draft_acceptance")] = (emitted - rounds) / (args.gamma * rounds)
            print(f"{name:8s} {n:7d} {s:7.1f} {rate:7.2f} {rate / base:7.2f} {rate / hf:7.2f}  {acc}")
            results[(B, name)] = rate / base
    r1 = results.get((1, "mtp_rs"))
    acc = results.get((1, "mtp_rs", "draft_acceptance"))
    if r1 is not None:
        print(f"\ngoal mtp_rs ≥ 2.0× plain at T=1 batch 1: measured {r1:.2f}× — {'met' if r1 >= 2 else 'NOT met'}")
    if acc is not None:
        print(f"goal e2e-TV draft acceptance ≥ 0.8: measured {acc:.3f} — {'met' if acc >= 0.8 else 'NOT met'}")


if __name__ == "__main__":
    main()
