"""Data-parallel SAE training under torchrun / accelerate launch: each rank takes its share of every batch.

    torchrun --nproc-per-node 2 -m anatomist.sae.distributed --data runs/acts --out runs/sae --tokens 2M
    (every flag of `anatomist sae train`; --data must be an activation store: capture it first, e.g. with
    `torchrun ... -m anatomist.capture.distributed`, since ranks capturing into one folder would race)

How: `train_sae` picks up the process group (`SAEParallel.current()`); every rank draws the same global
batch [B, D] (the batch at step t is a pure function of the data and seed) and in each step
  - takes the contiguous rows `rank_slice(B, r, W)` and scales its mean loss by b/B, so the SUM
    all-reduce of the gradients is the one-process gradient of the global-batch mean (up to float
    summation order); decoder-gradient projection, Adam and renormalisation then run identically on
    every rank on the summed gradient;
  - BatchTopK keeps the B·k largest positive pre-activations of the GLOBAL batch: each rank sends
    its B·k largest, the exact cutoff is the (B·k)-th largest of the union (the global top B·k lie
    in it), and each rank keeps its entries ≥ the cutoff, as one process does (same tie rule);
  - which latents fired (→ dead-latent mask, hence aux-k) is OR-reduced and the BatchTopK
    threshold's EMA target (smallest kept value) MIN-reduced over ranks; metrics are global sums.
Every rank starts from the same deterministic initialisation and resumes from rank 0's checkpoint;
rank 0 alone writes checkpoints, the SAE and training.json. Backend: gloo on CPU, nccl on CUDA.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from anatomist.parallel import DataParallel, all_reduce_grads, distributed_main, rank_slice
from anatomist.sae.arch import Selection, batchtopk_select


@dataclass(frozen=True)
class SAEParallel(DataParallel):
    """The hooks `train_sae` calls; `ONE` (world 1) makes each of them the identity."""

    @classmethod
    def current(cls) -> SAEParallel:
        dp = DataParallel.current()
        return ONE if dp is None else cls(dp.rank, dp.world)

    def share(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous rows of the global batch x [B, D] → [b, D]."""
        rows = rank_slice(x.shape[0], self.rank, self.world)
        return x[rows.start:rows.stop]

    def select(self, fn):
        """The training selector: batch-global ones (BatchTopK) see the global batch."""
        return fn if self.world == 1 or fn is not batchtopk_select else self._batchtopk

    def _batchtopk(self, pre: torch.Tensor, k: int) -> Selection:
        B = pre.shape[0]                                                              # pre [b, F]
        n_keep = self.sum(torch.tensor(B)).item() * k
        flat = pre.flatten()
        top = torch.full((n_keep,), -torch.inf, dtype=pre.dtype)
        m = min(n_keep, flat.numel())
        top[:m] = flat.topk(m, sorted=False).values
        gathered = [torch.empty_like(top) for _ in range(self.world)]
        dist.all_gather(gathered, top)
        union = torch.cat(gathered)                                                   # [W·B·k]
        n_real = int(torch.isfinite(union).sum())
        keep = pre > 0
        if n_real > n_keep:   # as one process: more candidates than B·k → keep those ≥ the (B·k)-th largest
            keep &= pre >= union.topk(n_keep).values[-1]
        rows, cols = keep.nonzero().unbind(1)                                         # row-major, as batchtopk_select
        counts = torch.bincount(rows, minlength=B)
        return Selection(rows, cols, torch.cumsum(counts, 0) - counts)

    def backward(self, loss: torch.Tensor, b: int, B: int, params: Sequence[torch.Tensor]) -> None:
        """Backpropagate this rank's mean loss weighted b/B, then sum the gradients over ranks."""
        (loss * (b / B) if self.world > 1 else loss).backward()
        if self.world > 1:
            all_reduce_grads(list(params))

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        return self._reduce(t, dist.ReduceOp.SUM)

    def any(self, t: torch.Tensor) -> torch.Tensor:
        return self._reduce(t.to(torch.uint8), dist.ReduceOp.MAX).bool()

    def min(self, t: torch.Tensor | None) -> torch.Tensor | None:
        """Global min of per-rank values, None (no value on a rank) counted as +inf."""
        if self.world == 1:
            return t
        v = self._reduce(torch.tensor(torch.inf) if t is None else t.detach().clone(), dist.ReduceOp.MIN)
        return None if torch.isinf(v) else v

    def mean(self, value: torch.Tensor, b: int, B: int) -> torch.Tensor:
        """Global-batch mean from this rank's mean over its b of B rows."""
        return value if self.world == 1 else self.sum(value.detach() * (b / B))

    def fvu(self, x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
        """`anatomist.sae.train.fvu` of the global batch, from this rank's rows x, x̂ [b, D]."""
        mu = x.mean(0) if self.world == 1 else self.sum(x.sum(0)) / self.sum(torch.tensor(float(x.shape[0])))  # [D]
        num = self.sum((x - x_hat).pow(2).sum())
        return num / self.sum((x - mu).pow(2).sum()).clamp_min(1e-12)

    def _reduce(self, t: torch.Tensor, op) -> torch.Tensor:
        if self.world > 1:
            t = t.clone()
            dist.all_reduce(t, op=op)
        return t


ONE = SAEParallel(0, 1)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point for `torchrun ... -m anatomist.sae.distributed` (flags as `anatomist sae train`)."""
    import typer

    from anatomist.errors import AnatomistError
    from anatomist.sae.cli import is_activation_store, train

    def store_only_train(**kwargs):
        # several ranks capturing raw pairs into one folder would race; one process may capture
        if DataParallel.current() is not None and not (len(kwargs["data"]) == 1 and is_activation_store(kwargs["data"][0])):
            raise AnatomistError("--data must be one activation store folder under torchrun (capture first: "
                                 "torchrun ... -m anatomist.capture.distributed)")
        train(**kwargs)
    store_only_train.__signature__ = inspect.signature(train, eval_str=True)  # typer reads train's options
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command(help=train.__doc__ + "\n\nData parallel: torchrun --nproc-per-node N -m anatomist.sae.distributed "
                "--data STORE ...")(store_only_train)
    with distributed_main():
        app(args=argv, prog_name="torchrun --nproc-per-node N -m anatomist.sae.distributed")


if __name__ == "__main__":
    main()
