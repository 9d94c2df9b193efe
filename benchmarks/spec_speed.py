"""Speculative decoding speed on the default model at T=1: tokens/s and ratios measured in one run.

    python benchmarks/spec_speed.py [--prompts 6] [--max-new-tokens 64] [--steps 1000] [--threads 1] [--repeats 3]

Methods, each warmed up by one untimed call at each batch size, then interleaved prompt by prompt
(every method back to back on each prompt, all prompts once per repeat) so load swings on the host
hit all of them alike; tok/s is the median over repeats of each repeat's tokens / seconds:
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
import statistics
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from timing import interleaved  # noqa: E402

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
    ap.add_argument("--repeats", type=int, default=3, help="timed passes over the prompts, after one warm-up call "
                    "per method")
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
    # Lossless at T=0: speculative output equals plain greedy decoding token for token (on this device).
    same = [generate(lm.model, [p], drafter=d, gamma=3, temperature=0.0, max_new_tokens=32,
                     eos_token_id=lm.tokenizer.eos_token_id).tokens[0] for p in prompts[:2]
            for d in (None, MTPDrafter(head))]
    print(f"T=0 speculative == greedy on {args.device}: {same[0] == same[1] and same[2] == same[3]}")
    results = {}
    for B in [int(x) for x in args.batches.split(",")]:
        groups = [[p] for p in prompts[:args.prompts]] if B == 1 else [prompts[i:i + B] for i in range(0, len(prompts) - B + 1, B)][:1]
        G = len(groups)
        # round i: every method on prompt group i mod G (seeded by the group), so a repeat is G rounds
        arms = {name: (lambda i, fn=fn: fn(groups[i % G], i % G)) for name, fn in methods.items()}
        timed = interleaved(arms, args.repeats * G)
        stats = {k: [st for _, (_, st) in runs if st is not None] for k, runs in timed.items()}
        rates, tot = {}, {}
        for name, runs in timed.items():
            reps = [runs[r * G:(r + 1) * G] for r in range(args.repeats)]
            per_rep = [(sum(n for _, (n, _) in rep), sum(sec for sec, _ in rep)) for rep in reps]   # (tokens, s)
            rates[name] = statistics.median(n / sec for n, sec in per_rep)
            tot[name] = (per_rep[0][0], statistics.median(sec for _, sec in per_rep))
        base, hf = rates["plain"], rates["hf"]
        print(f"\nbatch {B} ({G} × {len(groups[0])} prompts, ≤{args.max_new_tokens} new tokens, T=1; "
              f"median of {args.repeats} repeats)")
        print(f"{'method':8s} {'tokens':>7s} {'s':>7s} {'tok/s':>7s} {'×plain':>7s} {'×hf':>7s}  acceptance")
        for name, (n, s) in tot.items():
            rate = rates[name]
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
