"""Capture throughput vs. a bare full forward over the same tokens (issue: capture at layer 15 of
30 must cost <= 0.6 of a full forward, because it stops after layer 15).

    .venv/bin/python benchmarks/capture.py [--pairs 48] [--layer 15] [--repeats 3]

Prints tokens/s of (a) a bare full forward (`model(...)`, logits included), (b) the residual hook
alone, (c) the whole `capture()` to disk (tokenization, hook, shard writing), and the ratios
(b)/(a) and (c)/(a) in time. Runs alternate and the best of `--repeats` is kept, since this
machine's speed swings when the host is busy.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch

from anatomist.capture import capture, collate, items_from_pairs, residual_stream
from anatomist.data import load_pairs
from anatomist.models import encode_response, load

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=48)
    ap.add_argument("--layer", type=int, default=15)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())

    model, tok, _ = load()
    pairs = list(load_pairs(SHARED / "hh-rlhf-harmless-base-test-dev.jsonl.gz", limit=args.pairs))
    items = items_from_pairs(pairs)
    encoded = [encode_response(tok, it.messages, it.response, max_length=args.max_length).input_ids for it in items]
    batches = [collate(encoded[i:i + args.batch_size], tok.pad_token_id) for i in range(0, len(encoded), args.batch_size)]
    n_tokens = sum(map(len, encoded))

    @torch.no_grad()
    def full_forward():
        for ids, mask in batches:
            model(input_ids=ids, attention_mask=mask, use_cache=False)

    def hook_only():
        for ids, mask in batches:
            residual_stream(model, ids, mask, args.layer)

    def to_disk():
        tmp = Path(tempfile.mkdtemp())
        try:
            capture(model, tok, items, tmp / "acts", args.layer, batch_size=args.batch_size,
                    max_length=args.max_length, progress=False)
        finally:
            shutil.rmtree(tmp)

    runs = {"full_forward": full_forward, "hook_only": hook_only, "capture_to_disk": to_disk}
    best = {name: float("inf") for name in runs}
    full_forward()  # warm-up
    for _ in range(args.repeats):
        for name, fn in runs.items():
            t = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t)

    n_layers = model.config.num_hidden_layers
    print(f"{len(items)} sequences, {n_tokens:,} tokens, layer {args.layer} of {n_layers}, "
          f"batch {args.batch_size}, threads {torch.get_num_threads()}")
    for name, t in best.items():
        print(f"  {name:16s} {t:7.2f} s  {n_tokens / t:8.0f} tokens/s")
    print(f"capture/full_forward time ratio (hook only):  {best['hook_only'] / best['full_forward']:.3f}  (goal <= 0.6)")
    print(f"capture/full_forward time ratio (to disk):    {best['capture_to_disk'] / best['full_forward']:.3f}")


if __name__ == "__main__":
    main()
