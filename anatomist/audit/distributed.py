"""Data-parallel audit pooling under torchrun / accelerate launch; the rest of the audit on rank 0.

    torchrun --nproc-per-node 2 -m anatomist.audit.distributed --data pairs.jsonl --out runs/audit
    torchrun --nproc-per-node 4 -m anatomist.audit.distributed --data pairs.jsonl --out runs/audit \
        --model HuggingFaceTB/SmolLM2-135M-Instruct --sae runs/sae --topic-column topic
    accelerate launch --num_processes 2 -m anatomist.audit.distributed --data pairs.jsonl --out runs/audit

Pooling (`anatomist.audit.pool.pool_features`) is the only model-sized stage of `run_audit`, so it
is the one that runs on every rank: rank r of W pools the contiguous slice
`anatomist.parallel.rank_slice(n, r, W)` of the 2P sequences into
`OUT/latents/parts/rank-r-of-W/` (an ordinary resumable latent store: a killed rank resumes).
After a barrier, rank 0 re-adds every sequence, in order and under its global index, into
`OUT/latents/` with the settings one process records, removes the parts, and runs `run_audit`,
which finds the latent store complete and skips the forward. With the same batch composition
(e.g. `--batch-size 1`) the audit tables equal a single-process `anatomist audit` exactly; with
larger batches a rank's batches start at its slice, so padding differs and latents can differ by
float rounding (right padding leaves real tokens unchanged up to that).

Backend: gloo, every rank on CPU (as `anatomist.capture.distributed`: the residual hook runs on
the model's CPU inputs). A rerun after a kill resumes the parts, the merge, or nothing. Run without
torchrun, it is one rank of one (the tables of `anatomist audit`).
"""

from __future__ import annotations

import argparse
import itertools
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch

from anatomist.audit.pool import FORMAT, POOLINGS, LatentStore, pool_features
from anatomist.capture.distributed import PARTS, part_dir
from anatomist.capture.run import CaptureItem, items_hash
from anatomist.capture.store import ShardWriter
from anatomist.errors import AnatomistError
from anatomist.parallel import distributed_main, lead_first, rank_slice


def _sequences(store: LatentStore) -> Iterator[tuple]:
    """(id, side, info, per-sequence tensors, row tensors) of every sequence of `store`, in order."""
    for shard, tensors in zip(store.shards, store.iter_shards()):
        per_seq = {k.removeprefix("seq."): v for k, v in tensors.items() if k.startswith("seq.")}
        rows = {k: v for k, v in tensors.items() if k != "seq" and not k.startswith("seq.")}
        edges = torch.searchsorted(tensors["seq"], torch.arange(shard.seq_start, shard.seq_end + 1)).tolist()  # [S + 1]
        for j, (a, b) in enumerate(itertools.pairwise(edges)):
            yield (shard.ids[j], shard.sides[j], shard.infos[j] if shard.infos else None,
                   {k: v[j] for k, v in per_seq.items()}, {k: v[a:b] for k, v in rows.items()})


def merge_latents(out: str | Path, parts: Sequence[str | Path], items: Sequence[CaptureItem], *,
                  shard_rows: int = 1 << 18) -> LatentStore:
    """Append the finished part stores, in order, into `out` as the store `pool_features(items)` writes."""
    first = LatentStore(parts[0]).settings
    settings = {**first, "n_sequences": len(items), "items_hash": items_hash(items)}
    writer = ShardWriter(out, settings, shard_rows=shard_rows, format=FORMAT)
    done, seq = writer.next_seq, 0          # sequences an earlier, killed merge already wrote
    for folder in parts:
        part = LatentStore(folder)
        if {**part.settings, "n_sequences": 0, "items_hash": ""} != {**first, "n_sequences": 0, "items_hash": ""}:
            raise AnatomistError(f"{folder}: pooled with other settings than {parts[0]} (another model, SAE or layer)")
        for record_id, side, info, per_seq, rows in _sequences(part):
            if seq >= done:
                writer.add(seq, record_id, side, info=info, per_seq=per_seq, **rows)
            seq += 1
    if seq != len(items):
        raise AnatomistError(f"{out}: the parts hold {seq} sequences, expected {len(items)}")
    writer.close(seq)
    return LatentStore(out)


def _merged(folder: Path, items: Sequence[CaptureItem]) -> bool:
    """True when `folder` already holds the complete merged store for `items` (a rerun after the merge)."""
    try:
        store = LatentStore(folder)
    except AnatomistError:
        return False
    return store.settings.get("items_hash") == items_hash(items) and store.n_sequences == len(items)


def pool_distributed(model, tokenizer, sae, items: Sequence[CaptureItem], out: str | Path, *, rank: int, world: int,
                     barrier=lambda: None, batch_size: int = 8, max_length: int = 256,
                     shard_rows: int = 1 << 18) -> LatentStore | None:
    """This rank's share of `pool_features(...)` into `out`, then (rank 0) the merge; the store on rank 0."""
    out = Path(out)
    spans = [rank_slice(len(items), r, world) for r in range(world)]
    if not _merged(out, items):
        mine = spans[rank]
        if len(mine):
            pool_features(model, tokenizer, sae, items[mine.start:mine.stop], part_dir(out, rank, world),
                          batch_size=batch_size, max_length=max_length, shard_rows=shard_rows, progress=rank == 0)
    barrier()
    if rank != 0:
        return None
    if not _merged(out, items):
        merge_latents(out, [part_dir(out, r, world) for r in range(world) if len(spans[r])], items,
                      shard_rows=shard_rows)
    shutil.rmtree(out / PARTS, ignore_errors=True)
    return LatentStore(out)


def audit_distributed(model, tokenizer, sae, pairs, out: str | Path, cfg, *, rank: int, world: int,
                      barrier=lambda: None, **kwargs) -> Path | None:
    """`run_audit` with pooling spread over the ranks; returns the audit folder on rank 0."""
    from anatomist.audit.run import run_audit
    from anatomist.capture.run import items_from_pairs

    pairs = list(pairs)
    if len(pairs) < 2 * cfg.min_pairs:  # run_audit's own check, made before the ranks pool
        raise AnatomistError(f"audit needs at least {2 * cfg.min_pairs} pairs, got {len(pairs)}")
    store = pool_distributed(model, tokenizer, sae, items_from_pairs(pairs), Path(out) / "latents", rank=rank,
                             world=world, barrier=barrier, batch_size=cfg.batch_size, max_length=cfg.max_length)
    if store is None:
        return None
    return run_audit(model, tokenizer, sae, pairs, out, cfg, **kwargs)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point for `torchrun ... -m anatomist.audit.distributed` (flags as `anatomist audit`)."""
    from anatomist.models.loading import DEFAULT_MODEL

    p = argparse.ArgumentParser(prog="torchrun --nproc-per-node N -m anatomist.audit.distributed",
                                description="Audit with data-parallel pooling; the tables equal `anatomist audit`'s.",
                                epilog="Example: torchrun --nproc-per-node 2 -m anatomist.audit.distributed "
                                       "--data pairs.jsonl --out runs/audit --topic-column topic")
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--sae", default="default", help="SAE folder, or 'default' (trained once, cached)")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--pooling", default="mean", choices=POOLINGS)
    p.add_argument("--topk", type=int, default=16, help="k of --pooling topk")
    p.add_argument("--topics", type=int, default=None)
    p.add_argument("--topic-method", default="kmeans")
    p.add_argument("--topic-embedder", default="model")
    p.add_argument("--topic-column", default=None)
    p.add_argument("--leiden-backend", default="sknetwork")
    p.add_argument("--resolution", type=float, default=4.0)
    p.add_argument("--min-support", type=int, default=10)
    p.add_argument("--min-pairs", type=int, default=8)
    p.add_argument("--knn", type=int, default=10)
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--n-examples", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", dest="data_format", default="auto")
    p.add_argument("--on-bad-row", default="error")
    p.add_argument("--no-report", action="store_true", help="skip report.html")
    args = p.parse_args(argv)

    from anatomist.audit.run import AuditConfig
    from anatomist.data import load_pairs
    from anatomist.models.loading import load
    from anatomist.sae import default_sae, load_sae

    with distributed_main("gloo") as par:
        cfg = AuditConfig(pooling=args.pooling, topk=args.topk, topics=args.topics, topic_method=args.topic_method,
                          topic_embedder=args.topic_embedder, topic_column=args.topic_column,
                          leiden_backend=args.leiden_backend, resolution=args.resolution, min_support=args.min_support,
                          min_pairs=args.min_pairs, knn=args.knn, alpha=args.alpha, n_boot=args.n_boot,
                          n_examples=args.n_examples, batch_size=args.batch_size, max_length=args.max_length,
                          seed=args.seed)
        pairs = load_pairs(args.data, format=args.data_format, on_bad_row=args.on_bad_row, limit=args.limit)
        # 'default' trains the SAE once; rank 0 first, so the others find it cached instead of racing.
        with lead_first(par if args.sae == "default" else None):
            sae_path = str(default_sae(args.model)) if args.sae == "default" else args.sae
        lm = load(args.model)
        folder = audit_distributed(lm.model, lm.tokenizer, load_sae(sae_path), pairs, args.out, cfg, rank=par.rank,
                                   world=par.world, barrier=par.barrier, model_name=args.model, sae_path=sae_path,
                                   data_path=str(args.data), progress=par.lead)
        if folder is not None:
            if not args.no_report:
                from anatomist.audit.report import render_report

                print(f"report: {render_report(folder)}")
            print(f"audited {len(pairs):,} pairs, pooled on {par.world} ranks → {folder}")


if __name__ == "__main__":
    main()
