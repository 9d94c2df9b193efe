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

Backend: gloo (the ranks only meet at barriers); each rank's model and SAE sit on --device (cpu, or
cuda: one GPU per rank, cuda:LOCAL_RANK), and its latents come back to the CPU. A rerun after a kill resumes the parts, the merge, or nothing. Run without
torchrun, it is one rank of one (the tables of `anatomist audit`).
"""

from __future__ import annotations

import argparse
import itertools
import os
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
    from anatomist.audit.run import AuditConfig
    from anatomist.data.cli import ON_BAD_ROW_HELP
    from anatomist.models.loading import DEFAULT_MODEL
    from anatomist.options import default

    def d(name):
        return default(AuditConfig, name)

    p = argparse.ArgumentParser(prog="torchrun --nproc-per-node N -m anatomist.audit.distributed",
                                description="Audit with data-parallel pooling; the tables equal `anatomist audit`'s.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                epilog="Example: torchrun --nproc-per-node 2 -m anatomist.audit.distributed "
                                       "--data runs/organism/train.jsonl --out runs/audit --topic-column topic")
    p.add_argument("--data", required=True, type=Path, help="preference file (jsonl/json/parquet/csv; TRL, HH or ShareGPT)")
    p.add_argument("--out", required=True, type=Path, help="output folder (rerun to resume pooling)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="HF id, local folder, .gguf file or alias")
    p.add_argument("--sae", default="default", help="SAE folder, or 'default' (trained once, cached)")
    p.add_argument("--limit", type=int, default=None, help="audit only the first N pairs")
    p.add_argument("--pooling", default=d("pooling"), choices=POOLINGS, help="latents over a response")
    p.add_argument("--topk", type=int, default=d("topk"), help="k of --pooling topk")
    p.add_argument("--topics", type=int, default=d("topics"), help="number of prompt topics (default: by silhouette)")
    p.add_argument("--topic-method", default=d("topic_method"), help="'kmeans' or 'leiden'")
    p.add_argument("--topic-embedder", default=d("topic_embedder"), help="'model' (its own residual) or 'minilm'")
    p.add_argument("--topic-column", default=d("topic_column"), help="take topics from this data column instead")
    p.add_argument("--leiden-backend", default=d("leiden_backend"), help="'sknetwork' (BSD) or 'leidenalg' (GPL)")
    p.add_argument("--resolution", type=float, default=d("resolution"), help="Leiden resolution for concepts")
    p.add_argument("--min-support", type=int, default=d("min_support"),
                   help="responses a feature must fire in to be clustered")
    p.add_argument("--min-pairs", type=int, default=d("min_pairs"), help="rows with fewer pairs are not tested")
    p.add_argument("--knn", type=int, default=d("knn"), help="neighbours per feature in the concept graph")
    p.add_argument("--alpha", type=float, default=d("alpha"), help="FDR level for a predicted direction")
    p.add_argument("--n-boot", type=int, default=d("n_boot"), help="bootstrap resamples for the CIs")
    p.add_argument("--n-examples", type=int, default=d("n_examples"), help="contexts per cluster for labels")
    p.add_argument("--labeller", default=d("labeller"), help="'offline' (no LLM) or 'openai' (any compatible endpoint)")
    p.add_argument("--base-url", default=None, help="OpenAI-compatible endpoint for --labeller openai")
    p.add_argument("--llm-model", default=None, help="model name for --labeller openai")
    p.add_argument("--allow-remote", action="store_true", help="allow sending dataset text to a non-local endpoint")
    p.add_argument("--batch-size", type=int, default=d("batch_size"), help="sequences per forward pass")
    p.add_argument("--max-length", type=int, default=d("max_length"), help="tokens per sequence")
    p.add_argument("--seed", type=int, default=d("seed"), help="seed of topics, clustering and bootstrap")
    p.add_argument("--format", dest="data_format", default="auto", help="data format (auto-detected by default)")
    p.add_argument("--on-bad-row", default="error", choices=("error", "skip"), help=ON_BAD_ROW_HELP)
    p.add_argument("--no-report", action="store_true", help="skip report.html")
    p.add_argument("--device", default="cpu", help="where each rank's model and SAE pool: cpu, or cuda (rank r of "
                                                   "a node on cuda:LOCAL_RANK); the statistics run on the CPU")
    args = p.parse_args(argv)

    from anatomist.data.cli import read_pairs
    from anatomist.models.loading import load
    from anatomist.sae import default_sae, load_sae

    with distributed_main("gloo") as par:
        cfg = AuditConfig(pooling=args.pooling, topk=args.topk, topics=args.topics, topic_method=args.topic_method,
                          topic_embedder=args.topic_embedder, topic_column=args.topic_column,
                          leiden_backend=args.leiden_backend, resolution=args.resolution, min_support=args.min_support,
                          min_pairs=args.min_pairs, knn=args.knn, alpha=args.alpha, n_boot=args.n_boot,
                          n_examples=args.n_examples, batch_size=args.batch_size, max_length=args.max_length,
                          seed=args.seed, labeller=args.labeller,
                          labeller_kwargs={"base_url": args.base_url, "model": args.llm_model,
                                           "allow_remote": args.allow_remote} if args.labeller == "openai" else {})
        pairs = read_pairs(args.data, format=args.data_format, on_bad_row=args.on_bad_row, limit=args.limit)
        # 'default' trains the SAE once; rank 0 first, so the others find it cached instead of racing.
        with lead_first(par if args.sae == "default" else None):
            sae_path = str(default_sae(args.model)) if args.sae == "default" else args.sae
        device = f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if args.device == "cuda" else args.device
        lm = load(args.model, device=device)
        folder = audit_distributed(lm.model, lm.tokenizer, load_sae(sae_path).to(device), pairs, args.out, cfg, rank=par.rank,
                                   world=par.world, barrier=par.barrier, model_name=args.model, sae_path=sae_path,
                                   data_path=str(args.data), progress=par.lead)
        if folder is not None:
            if not args.no_report:
                from anatomist.audit.report import render_report

                print(f"report: {render_report(folder)}")
            print(f"audited {len(pairs):,} pairs, pooled on {par.world} ranks → {folder}")


if __name__ == "__main__":
    main()
