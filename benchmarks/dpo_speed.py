"""DPO step time: anatomist's loop vs TRL's DPOTrainer on the same batch, model and trainable parameters.

Prints two ratios measured in one run (medians over interleaved rounds):
    anatomist ÷ TRL     goal ≤ 1.0
    shaped ÷ plain      goal ≤ 1.05  (anatomist with a concept offset and token masks vs without)

Fairness: the same SmolLM2-135M-Instruct (fp32), the same B pairs (responses short enough that
neither side truncates), one micro-batch per optimizer step, AdamW with the same lr and
gradient clipping, fp32 and no gradient checkpointing in both (TRL's DPOConfig defaults to bf16
and checkpointing; bf16 matmuls crawl on this CPU), reference log-probs precomputed in both (TRL: `precompute_ref_log_probs=True`),
and the same trainable parameters: the top N blocks + final norm (the rest frozen in both).
What differs is the method: anatomist runs the frozen bottom once and caches its output (and
the LM head only on response positions); TRL runs the whole model every step. A step is timed
from before the forward to after the optimizer step (TRL: `on_step_begin` → `on_step_end`).

    nice -n 10 .venv/bin/python benchmarks/dpo_speed.py --pairs 4 --rounds 5 --train-layers 4
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from anatomist.models.loading import DEFAULT_MODEL

REPO = Path(__file__).resolve().parents[1]
HH = REPO.parent / "shared" / "data" / "hh-rlhf-harmless-base-test-dev.jsonl.gz"


def pick_pairs(path: Path, tokenizer, n: int, max_tokens: int):
    """The first n pairs whose chosen and rejected sequences both fit in max_tokens untruncated."""
    from anatomist.data import load_pairs
    from anatomist.models.chat import encode_response

    out = []
    for p in load_pairs(path, on_bad_row="skip", limit=400):
        lens = [len(encode_response(tokenizer, p.prompt, r, max_length=10_000).input_ids) for r in (p.chosen, p.rejected)]
        if max(lens) <= max_tokens - 2 and min(lens) >= max_tokens // 3:  # -2: TRL keeps the template's trailing "\n"
            out.append(p)
        if len(out) == n:
            return out
    raise SystemExit(f"only {len(out)} pairs of {path} fit in {max_tokens} tokens")


def freeze_all_but_top(model, n: int) -> None:
    layers = model.model.layers
    for p in model.parameters():
        p.requires_grad_(False)
    for block in layers[len(layers) - n:]:
        block.requires_grad_(True)
    model.model.norm.requires_grad_(True)


def trl_stepper(model, tokenizer, pairs, args, workdir: Path):
    """A function that runs one TRL DPOTrainer optimizer step on the batch and returns its seconds."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig as TRLConfig
    from trl import DPOTrainer

    rows = [{"prompt": list(p.prompt), "chosen": [{"role": "assistant", "content": p.chosen}],
             "rejected": [{"role": "assistant", "content": p.rejected}]} for p in pairs]
    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.t0)

    cfg = TRLConfig(output_dir=str(workdir / "trl"), per_device_train_batch_size=len(pairs), gradient_accumulation_steps=1,
                    max_steps=1, learning_rate=args.lr, beta=0.1, max_length=args.max_tokens + 8, use_cpu=True,
                    precompute_ref_log_probs=True, report_to="none", save_strategy="no", logging_steps=1000,
                    dataloader_num_workers=0, max_grad_norm=1.0, warmup_steps=0, lr_scheduler_type="constant",
                    disable_tqdm=True, seed=0,
                    bf16=False, fp16=False, gradient_checkpointing=False)  # TRL defaults: bf16 + checkpointing
    trainer = DPOTrainer(model=model, args=cfg, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                         callbacks=[Timer()])

    def step() -> float:
        trainer.train()
        return times[-1]
    return step


def anatomist_stepper(model, tokenizer, pairs, args, workdir: Path, shaped: bool):
    from anatomist.shape.pairs import ShapedPair, plain
    from anatomist.train.dpo import DPOConfig, make_trainable, prepare, train_step

    cfg = DPOConfig(lr=args.lr, beta=0.1, batch_size=len(pairs), grad_accum=1, train_layers=args.train_layers,
                    max_length=args.max_tokens + 8, max_response_tokens=None, schedule="constant", warmup_ratio=0.0)
    items = plain(pairs)
    if shaped:  # an offset per pair and ~15% of response tokens masked on each side
        g = torch.Generator().manual_seed(0)
        items = [ShapedPair(p.id, p.prompt, p.chosen, p.rejected, offset=0.3 * (i - 1.5),
                            chosen_token_mask=tuple((torch.rand(512, generator=g) > 0.15).int().tolist()),
                            rejected_token_mask=tuple((torch.rand(512, generator=g) > 0.15).int().tolist()))
                 for i, p in enumerate(items)]
    prep = prepare(model, tokenizer, items, cfg, cache_dir=workdir / "cache", progress=False)
    policy = make_trainable(model, prep.split, cfg)
    params = [p for p in policy.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    offsets = torch.tensor([p.offset for p in items])

    def step() -> float:
        t0 = time.perf_counter()
        train_step(prep.split, prep.cache, prep.seqs, [list(range(len(items)))], offsets, cfg, params, opt, sched,
                   pad_id=prep.pad_id, device="cpu")
        return time.perf_counter() - t0
    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--data", type=Path, default=HH, help="Preference file to take the batch from (HH or organism).")
    ap.add_argument("--pairs", type=int, default=4, help="Pairs in the batch.")
    ap.add_argument("--max-tokens", type=int, default=160, help="Longest sequence (prompt + response) allowed.")
    ap.add_argument("--train-layers", type=int, default=4, help="Top blocks trained (both sides).")
    ap.add_argument("--lr", type=float, default=1e-6)
    ap.add_argument("--rounds", type=int, default=5, help="Interleaved timing rounds (after one warm-up round).")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, help="Also write the numbers here.")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from anatomist.models import load

    lm = load(args.model)
    pairs = pick_pairs(args.data, lm.tokenizer, args.pairs, args.max_tokens)
    trl_model = copy.deepcopy(lm.model)
    freeze_all_but_top(trl_model, args.train_layers)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        steppers = {"trl": trl_stepper(trl_model, lm.tokenizer, pairs, args, work),
                    "plain": anatomist_stepper(lm.model, lm.tokenizer, pairs, args, work, shaped=False),
                    "shaped": anatomist_stepper(lm.model, lm.tokenizer, pairs, args, work, shaped=True)}
        times = {k: [] for k in steppers}
        for r in range(args.rounds + 1):
            for name, step in steppers.items():
                t = step()
                if r:  # round 0 warms up allocators and caches
                    times[name].append(t)
            print(f"round {r}: " + "  ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items() if v and r), flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {"model": args.model, "pairs": args.pairs, "max_tokens": args.max_tokens, "train_layers": args.train_layers,
              "threads": args.threads, "rounds": args.rounds, "median_seconds": med,
              "anatomist_over_trl": med["plain"] / med["trl"], "shaped_over_plain": med["shaped"] / med["plain"]}
    print(f"median step: anatomist {med['plain']:.2f}s  shaped {med['shaped']:.2f}s  TRL DPOTrainer {med['trl']:.2f}s")
    print(f"anatomist / TRL = {result['anatomist_over_trl']:.3f}   (goal <= 1.0)")
    print(f"shaped / plain  = {result['shaped_over_plain']:.3f}   (goal <= 1.05)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
