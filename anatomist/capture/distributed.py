"""Data-parallel capture under torchrun / accelerate launch, merged into the single-process store.

    torchrun --nproc-per-node 2 -m anatomist.capture.distributed --data pairs.jsonl --layer 15 --out runs/acts
    accelerate launch --num_processes 2 -m anatomist.capture.distributed --data pairs.jsonl --out runs/acts

Rank r of W captures the contiguous slice `rank_slice(n, r, W)` of the sequences into
`OUT/parts/rank-r-of-W/` (an ordinary resumable store: a killed rank resumes where it stopped).
After a barrier, rank 0 merges the parts in order into OUT: every sequence is re-added under its
global index with the settings a single process would record, so shard boundaries, metadata and
`capture.json` come out as a one-process `anatomist capture` writes them (the merge itself resumes
too), and the parts are removed. Merged activations equal single-process ones up to batch
composition: a rank's batches start at its slice, so padding can differ (right padding leaves real
tokens unchanged up to float rounding; see tests/test_capture.py).

Backend: gloo, every rank on CPU. The residual hook now moves its inputs to the model's device and
`capture` brings activations back to the CPU, so a model on one GPU per rank would work; this
launcher has no --device yet. Run without torchrun, it is one rank of one (the same store as
`anatomist capture`).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Sequence

import torch

from anatomist.capture.run import CaptureItem, capture, items_hash
from anatomist.capture.store import ActivationStore, ShardWriter
from anatomist.errors import AnatomistError
from anatomist.models.layers import check_layer
from anatomist.parallel import distributed_main, rank_slice

PARTS = "parts"


def part_dir(out: str | Path, rank: int, world: int) -> Path:
    return Path(out) / PARTS / f"rank-{rank}-of-{world}"


def merge_parts(out: str | Path, parts: Sequence[str | Path], settings: dict, *,
                shard_tokens: int = 1 << 17) -> ActivationStore:
    """Append the finished part stores, in order, into `out` as one store with `settings`."""
    writer = ShardWriter(out, settings, shard_rows=shard_tokens)
    done, seq = writer.next_seq, 0          # sequences an earlier, killed merge already wrote
    for folder in parts:
        part = ActivationStore(folder)
        for info, tensors in zip(part.shards, part.iter_shards()):
            starts = torch.searchsorted(tensors["seq"], torch.arange(info.seq_start, info.seq_end + 1))  # [S + 1]
            for j, (record_id, side) in enumerate(zip(info.ids, info.sides)):
                if seq >= done:
                    rows = slice(int(starts[j]), int(starts[j + 1]))
                    writer.add(seq, record_id, side, **{k: tensors[k][rows] for k in ("acts", "pos", "token", "response")})
                seq += 1
    if seq != settings["n_sequences"]:
        raise AnatomistError(f"{out}: the parts hold {seq} sequences, expected {settings['n_sequences']}")
    writer.close(seq)
    return ActivationStore(out)


def capture_distributed(model, tokenizer, items: Sequence[CaptureItem], out: str | Path, layer: int, *,
                        rank: int, world: int, barrier=lambda: None, model_name: str = "", dtype: str = "float32",
                        keep: str = "all", max_length: int = 256, shard_tokens: int = 1 << 17,
                        **kwargs) -> ActivationStore | None:
    """This rank's share of `capture(...)`, then (rank 0) the merge; returns the store on rank 0."""
    layer = check_layer(model, layer)
    mine = rank_slice(len(items), rank, world)
    if len(mine):
        capture(model, tokenizer, items[mine.start:mine.stop], part_dir(out, rank, world), layer, model_name=model_name,
                dtype=dtype, keep=keep, max_length=max_length, shard_tokens=shard_tokens, progress=rank == 0, **kwargs)
    barrier()
    if rank != 0:
        return None
    settings = dict(model=model_name or getattr(model.config, "_name_or_path", ""), layer=layer,
                    d_model=model.config.hidden_size, n_layers_model=model.config.num_hidden_layers, dtype=dtype,
                    keep=keep, max_length=max_length, n_sequences=len(items), items_hash=items_hash(items))
    parts = [part_dir(out, r, world) for r in range(world) if len(rank_slice(len(items), r, world))]
    store = merge_parts(out, parts, settings, shard_tokens=shard_tokens)
    shutil.rmtree(Path(out) / PARTS, ignore_errors=True)
    return store


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point for `torchrun ... -m anatomist.capture.distributed` (flags as `anatomist capture`)."""
    from anatomist.data.cli import ON_BAD_ROW_HELP
    from anatomist.models.loading import DEFAULT_MODEL

    p = argparse.ArgumentParser(prog="torchrun --nproc-per-node N -m anatomist.capture.distributed",
                                description="Data-parallel residual capture; the merged store equals `anatomist capture`'s.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                epilog="Example: torchrun --nproc-per-node 2 -m anatomist.capture.distributed "
                                       "--data runs/organism/train.jsonl --layer 15 --out runs/acts")
    p.add_argument("--data", required=True, type=Path, help="preference file (jsonl/json/parquet/csv; TRL, HH or ShareGPT)")
    p.add_argument("--out", required=True, type=Path, help="output folder for the shards (rerun to resume)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="HF id, local folder, .gguf file or alias")
    p.add_argument("--layer", type=int, default=15, help="block index (0-based; negative counts from the end)")
    p.add_argument("--keep", default="response", choices=("all", "response"), help="store response tokens only, or all")
    p.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass")
    p.add_argument("--max-length", type=int, default=256, help="tokens per sequence (prompt cut from the left)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N pairs")
    p.add_argument("--dtype", default="float32", help="storage dtype: float32, float16 or bfloat16")
    p.add_argument("--format", dest="data_format", default="auto", help="data format (auto-detected by default)")
    p.add_argument("--on-bad-row", default="error", choices=("error", "skip"), help=ON_BAD_ROW_HELP)
    args = p.parse_args(argv)

    from anatomist.capture.run import items_from_pairs
    from anatomist.data.cli import read_pairs
    from anatomist.models.loading import load

    with distributed_main("gloo") as par:
        pairs = read_pairs(args.data, format=args.data_format, on_bad_row=args.on_bad_row, limit=args.limit)
        lm = load(args.model)
        store = capture_distributed(lm.model, lm.tokenizer, items_from_pairs(pairs), args.out, args.layer,
                                    rank=par.rank, world=par.world, barrier=par.barrier, model_name=args.model,
                                    dtype=args.dtype, keep=args.keep, max_length=args.max_length,
                                    batch_size=args.batch_size)
        if store is not None:
            print(f"{store.n_sequences:,} sequences, {store.n_tokens:,} tokens × {store.d_model} at layer "
                  f"{store.settings['layer']} from {par.world} ranks → {args.out}")


if __name__ == "__main__":
    main()
