"""EAGLE-3 head vs MTP head: expected acceptance on the same self-samples of the default model (CPU).

    nice -n 10 python benchmarks/eagle3.py [--prompts 64] [--held-out 16] [--steps 200] [--loss e2e_tv]

Both heads are trained with the same loss, steps, batch, learning rate and 8192-token draft
vocabulary on the same self-generated chat replies (T=1), then scored on held-out replies: α_k =
E Σ_v min(p_k, q_k), the acceptance probability of depth k under rejection sampling (teacher-forced,
`head_alphas`). Heads and samples are cached under $ANATOMIST_CACHE/spec (the head's kind is part
of the key), so a rerun only scores.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from anatomist.models import load  # noqa: E402
from anatomist.models.loading import DEFAULT_MODEL  # noqa: E402
from anatomist.spec_decode.pipeline import cached_head, cached_samples  # noqa: E402
from anatomist.spec_decode.train import Samples, TrainConfig, head_alphas  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--prompts", type=int, default=64, help="self-sampled chat prompts (training + held out)")
    ap.add_argument("--held-out", type=int, default=16, help="of those, replies kept out of training")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--loss", default="e2e_tv")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    lm = load(a.model)
    s = cached_samples(lm.model, lm.tokenizer, model_name=a.model, n_prompts=a.prompts,
                       max_new_tokens=a.max_new_tokens, batch_size=16)
    k = len(s.sequences) - a.held_out
    train, test = Samples(s.sequences[:k], s.prompt_lens[:k]), Samples(s.sequences[k:], s.prompt_lens[k:])
    heads = {}
    for kind in ("mtp", "eagle3"):
        cfg = TrainConfig(loss=a.loss, gamma=3, steps=a.steps, batch_size=8, lr=1e-3, draft_vocab=8192, head=kind)
        t = time.perf_counter()
        heads[kind], folder = cached_head(lm.model, train, cfg, model_name=a.model,
                                          eos_token_id=lm.tokenizer.eos_token_id)
        print(f"{kind:7s} head {folder}: {k} replies, {a.steps} steps × 8 ({time.perf_counter() - t:.0f} s to train or load)")
    alphas = head_alphas(heads, lm.model, test)
    print(f"held-out α (loss {a.loss}, {a.held_out} replies of {a.model}):")
    for kind, al in alphas.items():
        print(f"  {kind:7s} α1..3 = {[round(x, 3) for x in al]}  expected accepted per round (γ=3) = "
              f"{sum(math.prod(al[:i + 1]) for i in range(len(al))):.3f} (α1 + α1α2 + α1α2α3)")


if __name__ == "__main__":
    main()
