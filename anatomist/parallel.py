"""torch.distributed helpers and the one torchrun launcher every `-m anatomist.<stage>.distributed` uses.

A ground-floor module: it imports torch, the stdlib and `anatomist.errors`, never a stage, so any
stage (capture, sae, audit, train) can spread its work over ranks without importing another stage.

    with distributed_main() as par:        # joins torchrun's / accelerate's group, or one process
        run_my_stage(rank=par.rank, world=par.world, barrier=par.barrier)

Launched by torchrun / accelerate (WORLD_SIZE set), `distributed_main` joins the process group
(nccl with one GPU per rank on CUDA, gloo on CPU); run as plain `python -m ...` it falls back to one
process, rank 0 of 1, so every entry point also works without a launcher. Ranks other than 0 print
nothing on stdout (the results are rank 0's); a user error prints one line naming its rank and
exits 2; the process group is destroyed however the body ends.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.distributed as dist

from anatomist.errors import AnatomistError


def rank_slice(n: int, rank: int, world: int) -> range:
    """Contiguous, balanced slice of n items for `rank` (sizes differ by at most one)."""
    assert 0 <= rank < world, (rank, world)
    return range(n * rank // world, n * (rank + 1) // world)


@dataclass(frozen=True)
class DataParallel:
    """This process's place among `world` ranks doing one job on shares of the same global batch."""

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
        """Rank 0: the one process that writes files and prints."""
        return self.rank == 0

    def share(self, micro: list[list[int]]) -> list[list[int]]:
        """This rank's contiguous part of each micro-batch (item indices); empty parts are dropped."""
        parts = [[idx[i] for i in rank_slice(len(idx), self.rank, self.world)] for idx in micro]
        return [p for p in parts if p]

    def sync(self, params: Sequence[torch.Tensor], micro: list[list[int]],
             outs: list[tuple[list[int], NamedTuple]]) -> list[tuple[list[int], NamedTuple]]:
        """Sum the gradients over ranks (in place) and return every rank's outputs as one process's
        `outs` for `micro`: per micro-batch, its items in order with their outputs (a NamedTuple of
        per-item tensors [b, ...], e.g. `DPOOutput`)."""
        all_reduce_grads(params)
        local = [(idx, type(o)(*(t.detach().cpu() for t in o))) for idx, o in outs]
        gathered: list = [None] * self.world
        dist.all_gather_object(gathered, local)
        return merge_outputs(micro, [iter(g) for g in gathered], self.world)

    def barrier(self) -> None:
        """Wait for every rank; nothing to wait for in one process."""
        if self.world > 1:
            dist.barrier()


def merge_outputs(micro: list[list[int]], per_rank: list, world: int) -> list[tuple[list[int], NamedTuple]]:
    """Re-join each micro-batch from the ranks' shares (iterators over (idx, outputs) in `share` order):
    the outputs' fields [b_r, ...] are concatenated over ranks → [B, ...]."""
    merged = []
    for idx in micro:
        pieces = [next(per_rank[r]) for r in range(world) if len(rank_slice(len(idx), r, world))]
        assert [i for p, _ in pieces for i in p] == list(idx), "ranks disagree on the step's batches"
        kind = type(pieces[0][1])
        merged.append((list(idx), kind(*(torch.cat(ts) for ts in zip(*(o for _, o in pieces))))))
    return merged


def all_reduce_grads(params: Sequence[torch.Tensor]) -> None:
    """SUM-all-reduce of the gradients, one flat bucket per dtype (a rank without items in this step
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


def join_launch(backend: str | None = None) -> DataParallel | None:
    """Join torchrun's / accelerate's process group when this process was launched by one and return
    its place; None when it was not (one process). `backend` None: nccl with this rank's GPU
    (LOCAL_RANK) when CUDA is there, else gloo; "gloo" for stages whose ranks compute on the CPU."""
    if "WORLD_SIZE" not in os.environ:
        return None
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
    return DataParallel(dist.get_rank(), dist.get_world_size())


@contextlib.contextmanager
def distributed_main(backend: str | None = None) -> Iterator[DataParallel]:
    """The body of a `-m anatomist.<stage>.distributed` entry point, once per rank (see the module
    docstring): yields this rank's place, `DataParallel(0, 1)` when not launched by torchrun."""
    joined = join_launch(backend)
    par = joined or DataParallel(0, 1)
    try:
        with contextlib.ExitStack() as stack:
            if not par.lead:  # one report, rank 0's; the others' progress and summaries would repeat it
                stack.enter_context(contextlib.redirect_stdout(stack.enter_context(open(os.devnull, "w"))))
            yield par
    except AnatomistError as e:
        print(f"error: [rank {par.rank}] {e}" if joined else f"error: {e}", file=sys.stderr)
        sys.exit(2)
    finally:
        if joined is not None:
            dist.destroy_process_group()
