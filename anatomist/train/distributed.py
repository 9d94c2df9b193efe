"""Data-parallel DPO under torchrun / accelerate launch: each rank takes its share of every batch.

    torchrun --nproc-per-node 2 -m anatomist.train.distributed --data train.jsonl --out runs/dpo --train-layers 4
    accelerate launch --num_processes 2 -m anatomist.train.distributed --data train.jsonl --out runs/dpo
    (every flag of `anatomist dpo`, shaping included: this runs that command on each rank)

How (DDP-style, no wrapper module): `train_dpo` picks up the process group (`DataParallel.current()`)
and in every optimizer step
  - rank r of W takes the contiguous share `anatomist.capture.distributed.rank_slice(B, r, W)` of
    each of the step's micro-batches (the global batch is the single-process one: same pairs, same
    `batch_size`, `grad_accum`, seed);
  - backpropagates its pairs' losses divided by the GLOBAL pair count, so the all-reduced SUM of the
    ranks' gradients is the single-process gradient (up to float summation order);
  - clips and steps identically on every rank (same parameters, same optimizer state: no broadcast
    needed after the deterministic start; LoRA's init is seeded);
  - gathers the per-pair outputs, so metrics (loss, margins, leakage) are those of the global batch.
Rank 0 alone precomputes the frozen bottom and reference cache first (the others then read it, so
they never race on its files) and alone writes the checkpoint, metrics.jsonl, summary.json and
policy/; every rank resumes from rank 0's checkpoint.

Backend: gloo on CPU; with CUDA, nccl and one GPU per rank (LOCAL_RANK), accelerate choosing the device.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from anatomist.capture.distributed import rank_slice
from anatomist.shape.losses import DPOOutput


@dataclass(frozen=True)
class DataParallel:
    rank: int
    world: int

    @classmethod
    def current(cls) -> DataParallel | None:
        """The initialized process group with more than one rank, else None (one process)."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            return cls(dist.get_rank(), dist.get_world_size())
        return None

    @property
    def lead(self) -> bool:
        return self.rank == 0

    def share(self, micro: list[list[int]]) -> list[list[int]]:
        """This rank's contiguous part of each micro-batch (pair indices); empty parts are dropped."""
        parts = [[idx[i] for i in rank_slice(len(idx), self.rank, self.world)] for idx in micro]
        return [p for p in parts if p]

    def sync(self, params: Sequence[torch.Tensor], micro: list[list[int]],
             outs: list[tuple[list[int], DPOOutput]]) -> list[tuple[list[int], DPOOutput]]:
        """Sum the gradients over ranks (in place) and return every rank's outputs as one process's
        `outs` for `micro`: per micro-batch, its pairs in order with their DPO outputs."""
        _all_reduce_grads(params)
        local = [(idx, DPOOutput(*(t.detach().cpu() for t in o))) for idx, o in outs]
        gathered: list = [None] * self.world
        dist.all_gather_object(gathered, local)
        return merge_outputs(micro, [iter(g) for g in gathered], self.world)

    def barrier(self) -> None:
        dist.barrier()


def merge_outputs(micro: list[list[int]], per_rank: list, world: int) -> list[tuple[list[int], DPOOutput]]:
    """Re-join each micro-batch from the ranks' shares (iterators over (idx, DPOOutput) in `share` order)."""
    merged = []
    for idx in micro:
        pieces = [next(per_rank[r]) for r in range(world) if len(rank_slice(len(idx), r, world))]
        assert [i for p, _ in pieces for i in p] == list(idx), "ranks disagree on the step's batches"
        merged.append((list(idx), DPOOutput(*(torch.cat(ts) for ts in zip(*(o for _, o in pieces))))))
    return merged


def _all_reduce_grads(params: Sequence[torch.Tensor]) -> None:
    """SUM-all-reduce of the gradients, one flat bucket per dtype (a rank without pairs in this step
    contributes zeros)."""
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    for dtype in {p.dtype for p in params}:
        group = [p for p in params if p.dtype == dtype]
        flat = torch.cat([p.grad.reshape(-1) for p in group])                    # [Σ numel]
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        for p, g in zip(group, flat.split([p.numel() for p in group])):
            p.grad.copy_(g.view_as(p))


@contextlib.contextmanager
def lead_first(parallel: DataParallel | None):
    """Rank 0 runs the body before the others (e.g. filling a shared cache they then read)."""
    if parallel is None:
        yield
        return
    if not parallel.lead:
        parallel.barrier()
    yield
    if parallel.lead:
        parallel.barrier()


def join_launch() -> tuple[bool, int]:
    """(launched, rank): join torchrun's / accelerate's process group when this process was launched
    by one (nccl on GPU, gloo on CPU); otherwise one process, rank 0 (also for --help)."""
    import os

    if "WORLD_SIZE" not in os.environ:
        return False, 0
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    return True, dist.get_rank()


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point for `torchrun ... -m anatomist.train.distributed` (flags as `anatomist dpo`)."""
    import os

    import typer

    from anatomist.errors import AnatomistError
    from anatomist.train.cli import dpo

    launched, rank = join_launch()
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command(help=dpo.__doc__ + "\n\nData parallel: torchrun --nproc-per-node N -m anatomist.train.distributed ...")(dpo)
    try:
        with contextlib.redirect_stdout(sys.stdout if rank == 0 else open(os.devnull, "w")):
            app(args=argv, prog_name="torchrun --nproc-per-node N -m anatomist.train.distributed")
    except AnatomistError as e:
        print(f"error: [rank {rank}] {e}", file=sys.stderr)
        sys.exit(2)
    finally:
        if launched:
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
