"""How fast the default organism's generations are sampled: HF `generate` (the baseline) against
anatomist's own KV-cached loop, in one process and in worker processes; all in one run.

    .venv/bin/python benchmarks/organism_build.py [--batches 4] [--workers 2] [--repeats 3]

Times the same planned batches (64 prompts, 96 new tokens, T = 0.7) of the default organism
(`build_organism` defaults) three ways — each once untimed (warm-up), then alternating for
--repeats rounds, every call on a fresh generations cache — prints generations per minute from
each sampler's median time and each as a ratio against HF `generate`, and projects the default build (train pairs alone, and with held-out pairs) from
the measured rate: the issue's budget is ≤ 20 min for ≥ 1,200 pairs on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile

import torch
from timing import interleaved, median_seconds

from anatomist.models import DEFAULT_MODEL, load
from anatomist.organism.plant import DEFAULT_CONFIG, assign, requests_for
from anatomist.organism.prompts import build_prompts
from anatomist.spec_decode.batched import GenSettings, generate, plan_batches

GOAL_S = 1200


@torch.no_grad()
def hf_generate(model, tokenizer, batch, settings: GenSettings, seed: int) -> int:
    """The baseline: left-padded HF `generate` with sampling; returns tokens sampled."""
    eos = tokenizer.eos_token_id
    width = max(len(ids) for _, ids in batch)
    input_ids = torch.full((len(batch), width), eos, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, (_, ids) in enumerate(batch):
        input_ids[i, width - len(ids):] = torch.tensor(ids)
        mask[i, width - len(ids):] = 1
    torch.manual_seed(seed)
    out = model.generate(input_ids=input_ids, attention_mask=mask, do_sample=True, temperature=settings.temperature,
                         top_p=1.0, top_k=0, max_new_tokens=batch[0][0].max_new_tokens, eos_token_id=eos,
                         pad_token_id=eos)
    return int((out[:, width:] != eos).sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=4, help="planned batches timed per sampler")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds per sampler, after one warm-up call each")
    args = ap.parse_args()

    lm = load()
    prompts = build_prompts(236, heldout_fraction=0.25, seed=0)
    train = requests_for(assign(prompts, DEFAULT_CONFIG), 96)
    held = requests_for(assign(prompts, DEFAULT_CONFIG, split="heldout"), 96)
    settings = GenSettings(model=DEFAULT_MODEL, batch_size=64)
    batches = plan_batches(lm.tokenizer, train, settings.batch_size)
    chosen = batches[len(batches) // 2: len(batches) // 2 + args.batches]       # typical prompt lengths
    requests = [r for b in chosen for r, _ in b]
    n = len(requests)

    def hf(_round: int) -> None:
        for i, b in enumerate(chosen):
            hf_generate(lm.model, lm.tokenizer, b, settings, seed=i)

    def own(workers: int):
        def run(_round: int) -> None:
            cache = tempfile.mkdtemp(prefix="organism-build-bench-")   # fresh: a filled cache would only be read
            try:
                generate(lm.model, lm.tokenizer, requests, settings, cache_dir=cache, progress=False, workers=workers)
            finally:
                shutil.rmtree(cache, ignore_errors=True)
        return run

    arms = {"HF generate (baseline)": hf, "anatomist loop, 1 process": own(1),
            f"anatomist loop, {args.workers} workers": own(args.workers)}
    rates = {label: n / s * 60 for label, s in median_seconds(interleaved(arms, args.repeats, log=True)).items()}

    base = rates["HF generate (baseline)"]
    print(f"\n{n} generations ({len(chosen)} batches of {settings.batch_size}, 96 new tokens), torch threads "
          f"{torch.get_num_threads()}; median of {args.repeats} interleaved rounds after one warm-up call each")
    print(f"{'sampler':34s} {'gens/min':>9s} {'× HF':>6s} {'train build':>12s} {'+ held-out':>11s}")
    for label, rate in rates.items():
        train_min, all_min = len(train) / rate, (len(train) + len(held)) / rate
        print(f"{label:34s} {rate:9.1f} {rate / base:6.2f} {train_min:10.1f} m {all_min:9.1f} m")
    print(f"default organism: {len(train)} train generations ({len(train) // 2} pairs) + {len(held)} held-out; "
          f"goal ≤ {GOAL_S / 60:.0f} min")


if __name__ == "__main__":
    main()
