"""Audit wall time ÷ a bare full forward over the same tokens (issue goal: <= 1.2).

    .venv/bin/python benchmarks/audit_speed.py [--pairs 500] [--repeats 3]

Both arms see the same 2 × pairs sequences (chat-templated prompt + response, batch 8, right
padding). The audit stops its forward after the SAE's layer, encodes only response tokens and
then does statistics, topics, Leiden clusters and labels, into a fresh folder each call (an
existing one would resume); the baseline is `model(...)` with logits. Each arm runs once untimed
(warm-up), then the arms alternate for --repeats rounds; the ratio is of their medians. The
default SAE is trained once and cached beforehand (not timed). The report render is timed
separately, once.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch
from timing import interleaved, median_seconds

from anatomist.audit.report import render_report
from anatomist.audit.run import AuditConfig, run_audit
from anatomist.capture import collate, items_from_pairs
from anatomist.data import load_pairs
from anatomist.models import DEFAULT_MODEL, encode_response, load
from anatomist.sae import default_sae, load_sae

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds per arm, after one warm-up call each")
    args = ap.parse_args()
    model, tok, _ = load()
    sae = load_sae(default_sae())
    pairs = load_pairs(SHARED / "hh-rlhf-harmless-base-test-dev.jsonl.gz", on_bad_row="skip", limit=args.pairs)
    items = items_from_pairs(pairs)
    encoded = [encode_response(tok, it.messages, it.response, max_length=256).input_ids for it in items]
    n_tokens = sum(map(len, encoded))

    @torch.no_grad()
    def full_forward(_round: int) -> None:
        for i in range(0, len(encoded), 8):
            ids, mask = collate(encoded[i:i + 8], tok.pad_token_id)
            model(input_ids=ids, attention_mask=mask, use_cache=False)

    root = Path(tempfile.mkdtemp())
    try:
        def audit(_round: int) -> Path:
            out = root / f"audit{len(list(root.iterdir()))}"          # a fresh folder per call: no resume
            return run_audit(model, tok, sae, pairs, out, AuditConfig(), model_name=DEFAULT_MODEL,
                             progress=False)

        timed = interleaved({"full forward": full_forward, "audit": audit}, args.repeats, log=True)
        t = time.perf_counter()
        render_report(timed["audit"][-1][1])
        report_s = time.perf_counter() - t
    finally:
        shutil.rmtree(root)
    med = median_seconds(timed)
    print(f"{len(pairs)} pairs, {len(items)} sequences, {n_tokens:,} tokens; SAE layer {sae.cfg.layer}, "
          f"{sae.cfg.d_sae} latents; median of {args.repeats} interleaved rounds after one warm-up call each")
    print(f"  bare full forward  {med['full forward']:7.1f} s")
    print(f"  audit              {med['audit']:7.1f} s   (+ report render {report_s:.1f} s)")
    print(f"audit / full forward time ratio: {med['audit'] / med['full forward']:.2f}  (goal <= 1.2)")


if __name__ == "__main__":
    main()
