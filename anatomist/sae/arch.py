"""SAE activation functions, as pure functions of pre-activations, behind a registry.

Notation: x̃ = x·s (input scaled by `norm_scale`), pre = (x̃ − b_dec) W_enc + b_enc  [B, F].
Every architecture has `activate(pre, threshold, k)` → dense latents [.., F] (what
`SAE.encode` returns) and one training path:
  - TopK-style: `select(pre, k)` picks the active (row, latent) pairs from detached
    pre-activations; `gather_latents` makes their values differentiable with a sparse backward,
    and the decoder is a gather (embedding_bag). No [B, F] gradient and no dense decoder
    product is ever formed, which is where the speed over a dense implementation comes from.
  - dense (ReLU, JumpReLU): `train_acts(pre, threshold, k, tc)` → (Latents, sparsity penalty).

Inference semantics match SAELens: topk = ReLU of the k largest pre-activations; jumprelu =
ReLU(pre)·1[pre > θ]; relu = ReLU(pre). BatchTopK (Bussmann et al. 2024) selects the B·k
largest pre-activations of the whole batch in training and, at inference, is a JumpReLU with
one shared threshold θ (set after training so that mean L0 = k, see
`anatomist.sae.train.calibrate_threshold`); SAELens saves it the same way, as a "jumprelu"
with a constant threshold vector.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F


class Latents(NamedTuple):
    """Training-time latents. Sparse form: one entry per active (row, latent), grouped by row;
    dense form: `values` [B, F] and the other fields None."""

    values: torch.Tensor               # [nnz] (sparse) or [B, F] (dense)
    indices: torch.Tensor | None       # [nnz] latent ids
    rows: torch.Tensor | None          # [nnz] batch row of each entry, non-decreasing
    offsets: torch.Tensor | None       # [B] start of each row's entries


class Selection(NamedTuple):
    rows: torch.Tensor                 # [nnz]
    cols: torch.Tensor                 # [nnz] latent ids
    offsets: torch.Tensor              # [B]


def decode_latents(lat: Latents, W_dec: torch.Tensor) -> torch.Tensor:
    """Σ values · W_dec[indices] per row (no bias): [B, D]. Sparse form decodes by gather."""
    if lat.indices is None:
        return lat.values @ W_dec                                                    # [B, D]
    return F.embedding_bag(lat.indices, W_dec, lat.offsets, per_sample_weights=lat.values, mode="sum")


class _GatherPre(torch.autograd.Function):
    """values = pre[rows, cols] for pre = x W_enc + c, differentiable in W_enc and c.

    The backward touches only the selected entries: ∂W_enc = xᵀ G with G sparse ([B, F], nnz
    entries), one sparse matmul instead of the dense [D, B] × [B, F] product autograd would do.
    """

    @staticmethod
    def forward(ctx, W_enc, c, x, pre, rows, cols):
        ctx.save_for_backward(x, rows, cols)
        ctx.n_latents = W_enc.shape[1]
        return pre[rows, cols]                                                       # [nnz]

    @staticmethod
    def backward(ctx, g):
        x, rows, cols = ctx.saved_tensors
        G_t = torch.sparse_coo_tensor(torch.stack([cols, rows]), g, (ctx.n_latents, x.shape[0]),
                                      check_invariants=False)                       # [F, B]
        grad_W = torch.sparse.mm(G_t, x).t()                                         # [D, F]
        grad_c = g.new_zeros(ctx.n_latents).index_add_(0, cols, g)                  # [F]
        return grad_W, grad_c, None, None, None, None


def gather_latents(sel: Selection, W_enc: torch.Tensor, c: torch.Tensor, x: torch.Tensor,
                   pre: torch.Tensor) -> Latents:
    """ReLU(pre[sel]) with gradients to W_enc and c = b_enc − b_dec W_enc (pre: detached [B, F])."""
    values = _GatherPre.apply(W_enc, c, x, pre, sel.rows, sel.cols).relu()          # [nnz]
    return Latents(values, sel.cols, sel.rows, sel.offsets)


# --- TopK -----------------------------------------------------------------------------------

def topk_select(pre: torch.Tensor, k: int) -> Selection:
    """Each row's k largest pre-activations."""
    B = pre.shape[0]
    cols = pre.topk(k, dim=-1, sorted=False).indices                                 # [B, k]
    return Selection(torch.arange(B).repeat_interleave(k), cols.flatten(), torch.arange(0, B * k, k))


def batchtopk_select(pre: torch.Tensor, k: int, sample_rows: int = 128, margin: float = 0.8) -> Selection:
    """The B·k largest positive pre-activations of the whole batch (exact, no per-row cap).

    The cutoff is found without sorting [B, F]: the exact cutoff of the first `sample_rows`
    rows, times `margin`, gives a candidate set `pre ≥ t` a bit larger than B·k; the exact cutoff
    is then the (B·k)-th largest candidate. If the sample was unrepresentative (fewer than B·k
    candidates) it falls back to a full sort of the batch.
    """
    B, n_latents = pre.shape
    n_keep = B * k
    head = pre[:sample_rows].flatten()
    t = head.kthvalue(max(1, head.numel() - min(sample_rows, B) * k + 1)).values
    t = t * margin if t > 0 else t / margin
    cand = (pre >= t).nonzero()                                                      # [n, 2] row-major
    if cand.shape[0] < n_keep:
        cand = torch.ones_like(pre, dtype=torch.bool).nonzero()
    values = pre[cand[:, 0], cand[:, 1]]                                              # [n]
    if values.numel() > n_keep:
        cutoff = values.kthvalue(values.numel() - n_keep + 1).values
        keep = (values >= cutoff) & (values > 0)                                      # ties may keep a few extra
    else:
        keep = values > 0
    rows, cols = cand[keep, 0], cand[keep, 1]
    counts = torch.bincount(rows, minlength=B)
    return Selection(rows, cols, torch.cumsum(counts, 0) - counts)


def topk_sparse(pre: torch.Tensor, k: int) -> Latents:
    """ReLU of each row's k largest pre-activations (no gradient path): sparse Latents."""
    sel = topk_select(pre, k)
    return Latents(pre[sel.rows, sel.cols].relu(), sel.cols, sel.rows, sel.offsets)


def min_active(lat: Latents) -> torch.Tensor | None:
    """Smallest positive latent value in the batch (the BatchTopK threshold's EMA target)."""
    positive = lat.values[lat.values > 0]
    return positive.min() if positive.numel() else None


# --- JumpReLU straight-through estimators (Rajamanoharan et al. 2024, Eqs. 11-12) ---------

def _rect(u: torch.Tensor) -> torch.Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class _JumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre, threshold, bandwidth):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold)

    @staticmethod
    def backward(ctx, grad):
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        grad_pre = grad * (pre > threshold)
        # ∂/∂θ JumpReLU = −(θ/ε)·K((z − θ)/ε)
        grad_theta = (-(threshold / eps) * _rect((pre - threshold) / eps) * grad).sum(0)
        return grad_pre, grad_theta, None


class _Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre, threshold, bandwidth):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad):
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        # ∂/∂θ H(z − θ) = −(1/ε)·K((z − θ)/ε); no gradient to z
        grad_theta = (-(1.0 / eps) * _rect((pre - threshold) / eps) * grad).sum(0)
        return torch.zeros_like(pre), grad_theta, None


# --- registry -------------------------------------------------------------------------------

def _jump(pre: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    return pre.relu() * (pre > threshold)                                           # [.., F]


@dataclass(frozen=True)
class Architecture:
    name: str
    activate: Callable                 # (pre [.., F], threshold [F] | None, k) -> [.., F]
    select: Callable | None = None     # sparse training: (pre [B, F] detached, k) -> Selection
    train_acts: Callable | None = None  # dense training: (pre [B, F], threshold, k, tc) -> (Latents, penalty)
    has_threshold: bool = False        # saves `threshold` [F]
    learns_threshold: bool = False
    saelens_name: str = ""             # the SAELens inference architecture it saves as


def _topk_activate(pre, threshold, k):
    values, indices = pre.topk(k, dim=-1, sorted=False)
    return torch.zeros_like(pre).scatter_(-1, indices, values.relu())


def _jumprelu_train(pre, threshold, k, tc):
    acts = _JumpReLU.apply(pre.relu(), threshold, tc.bandwidth)                     # [B, F]
    l0 = _Step.apply(pre, threshold, tc.bandwidth).sum(-1).mean()
    return Latents(acts, None, None, None), tc.l0_coeff * l0


def _relu_train(pre, threshold, k, tc):
    acts = pre.relu()                                                               # [B, F]
    # Decoder rows are unit-norm, so plain L1 equals the norm-weighted L1 of Bricken et al.
    return Latents(acts, None, None, None), tc.l1_coeff * acts.sum(-1).mean()


ARCHITECTURES: dict[str, Architecture] = {
    "batchtopk": Architecture("batchtopk", lambda pre, th, k: _jump(pre, th), select=batchtopk_select,
                              has_threshold=True, saelens_name="jumprelu"),
    "topk": Architecture("topk", _topk_activate, select=topk_select, saelens_name="topk"),
    "jumprelu": Architecture("jumprelu", lambda pre, th, k: _jump(pre, th), train_acts=_jumprelu_train,
                             has_threshold=True, learns_threshold=True, saelens_name="jumprelu"),
    "relu": Architecture("relu", lambda pre, th, k: pre.relu(), train_acts=_relu_train, saelens_name="standard"),
}
