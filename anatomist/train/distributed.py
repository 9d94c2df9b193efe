"""Data-parallel DPO under torchrun / accelerate launch: each rank takes its share of every batch.

    torchrun --nproc-per-node 2 -m anatomist.train.distributed --data train.jsonl --out runs/dpo --train-layers 4
    accelerate launch --num_processes 2 -m anatomist.train.distributed --data train.jsonl --out runs/dpo
    (every flag of `anatomist dpo`, shaping included: this runs that command on each rank)

How (DDP-style, no wrapper module): `train_dpo` picks up the process group
(`anatomist.parallel.DataParallel.current()`) and in every optimizer step
  - rank r of W takes the contiguous share `anatomist.parallel.rank_slice(B, r, W)` of each of
    the step's micro-batches (the global batch is the single-process one: same pairs, same
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
Run without torchrun, it is `anatomist dpo` in one process.
"""

from __future__ import annotations

from collections.abc import Sequence

from anatomist.parallel import distributed_main


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point for `torchrun ... -m anatomist.train.distributed` (flags as `anatomist dpo`);
    without torchrun, one process (as `anatomist dpo`)."""
    import typer

    from anatomist.train.cli import dpo

    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command(help=dpo.__doc__ + "\n\nData parallel: torchrun --nproc-per-node N -m anatomist.train.distributed ...")(dpo)
    with distributed_main():
        app(args=argv, prog_name="torchrun --nproc-per-node N -m anatomist.train.distributed")


if __name__ == "__main__":
    main()
