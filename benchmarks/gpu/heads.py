"""Train (or load) the spec benchmarks' heads with one recipe and copy them out (bebop.sh, issue 23).

    python benchmarks/gpu/heads.py --device cuda --samples-per-prompt 8 --steps 1500 --train-batch 32 \
        --losses e2e_tv,tv,ce --copy-to DIR

The flags are `benchmarks/spec_heads.py`'s, so `spec_speed.py` / `entropy_slope.py` run with the
same flags find these heads in $ANATOMIST_CACHE/spec and only measure. Heads are trained in the
order of --losses, each cached as it finishes, so a run cut short keeps the first ones. DIR/<loss>/
gets each head's weights, config and training metrics.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # spec_heads.py

from spec_heads import add_head_args  # noqa: E402

from anatomist.models import load  # noqa: E402
from anatomist.spec_decode.pipeline import cached_heads  # noqa: E402

KEEP = ("mtp_head.safetensors", "config.json", "metrics.jsonl")   # not checkpoint.pt (optimizer state)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_head_args(ap)
    ap.add_argument("--losses", default="e2e_tv,tv,ce")
    ap.add_argument("--copy-to", type=Path, default=None)
    args = ap.parse_args(argv)
    lm = load(args.model, device=args.device)
    print(f"model {args.model} on {args.device}")
    for loss in args.losses.split(","):
        t = time.perf_counter()
        _, folder = cached_heads(lm, [loss], model_name=args.model, steps=args.steps, batch_size=args.train_batch,
                                 lr=args.lr, draft_vocab=args.draft_vocab, n_prompts=args.data_prompts,
                                 samples_per_prompt=args.samples_per_prompt, max_new_tokens=args.sample_tokens,
                                 gen_batch=128 if args.device != "cpu" else 32)[loss]
        print(f"{loss}: {time.perf_counter() - t:.0f} s (data, states and training, or loading)", flush=True)
        if args.copy_to is not None:
            dest = args.copy_to / loss
            dest.mkdir(parents=True, exist_ok=True)
            for name in KEEP:
                if (folder / name).is_file():
                    shutil.copyfile(folder / name, dest / name)


if __name__ == "__main__":
    main()
