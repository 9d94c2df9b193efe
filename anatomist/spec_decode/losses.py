"""Draft-head losses (DESIGN.md, "Draft losses").

Shapes: B batch, T chain start positions, γ draft depths, V (draft) vocabulary.

* ``p``  [B, T, γ, V]: the target model's own next-token distribution at the position each draft
  depth predicts, detached (the target is the model, not the data label). With a reduced draft
  vocabulary p is *restricted* (not renormalised) to the draft vocabulary: mass outside it can
  never be matched by q, and leaving it out of Σ min(p, q) keeps α the true acceptance rate.
* ``q_logits`` [B, T, γ, V]: the draft head's logits; softmax is taken in fp32 here.
* ``mask`` [B, T] bool: the chain mask, true where all γ depths of the chain starting at t
  have a target (incomplete chains at the end of a sequence do not count).

Every loss returns ``(loss, metrics)`` with per-depth metrics ``mtp/alpha_i``, ``mtp/tv_i``,
``mtp/ce_i`` (i = 1..γ) averaged over counted chains. α_i = Σ_v min(p_i, q_i) is the expected
acceptance rate of depth i under rejection sampling given the previous depth was accepted.
"""

from __future__ import annotations

from typing import Callable

import torch

__all__ = ["LOSSES", "ce_loss", "kl_loss", "tv_loss", "e2e_tv_loss", "depth_stats"]

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], "tuple[torch.Tensor, dict[str, float]]"]


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """x [B, T, ...] averaged over positions where mask [B, T] holds → [...]."""
    w = mask.to(x.dtype).reshape(*mask.shape, *([1] * (x.dim() - mask.dim())))
    return (x * w).sum((0, 1)) / w.sum((0, 1)).clamp(min=1.0)


def depth_stats(p: torch.Tensor, q_logits: torch.Tensor, mask: torch.Tensor) -> tuple[
        torch.Tensor, torch.Tensor, dict[str, float]]:
    """α [B, T, γ] (differentiable), soft CE [B, T, γ] and per-depth metrics (Bebop Eq. 10)."""
    dt = torch.promote_types(q_logits.dtype, torch.float32)  # fp32 softmax at least
    p = p.to(dt)
    logq = torch.log_softmax(q_logits.to(dt), dim=-1)  # [B, T, γ, V]
    alpha = torch.minimum(p, logq.exp()).sum(-1)  # [B, T, γ]
    ce = -(p * logq).sum(-1)  # [B, T, γ]
    a_mean, ce_mean = _masked_mean(alpha.detach(), mask), _masked_mean(ce.detach(), mask)
    metrics: dict[str, float] = {}
    for i in range(alpha.shape[-1]):
        metrics[f"mtp/alpha_{i + 1}"] = float(a_mean[i])
        metrics[f"mtp/tv_{i + 1}"] = float(1 - a_mean[i])
        metrics[f"mtp/ce_{i + 1}"] = float(ce_mean[i])
    return alpha, ce, metrics


def ce_loss(p, q_logits, mask):
    """Soft cross-entropy −Σ_v p log q, averaged over depths and counted chains."""
    _, ce, m = depth_stats(p, q_logits, mask)
    return _masked_mean(ce, mask).mean(), m


def kl_loss(p, q_logits, mask):
    """Forward KL(p‖q) = CE − H(p); same gradient as CE, value 0 at q = p."""
    _, ce, m = depth_stats(p, q_logits, mask)
    p = p.to(ce.dtype)
    neg_h = torch.where(p > 0, p * p.clamp(min=1e-30).log(), torch.zeros_like(p)).sum(-1)
    return _masked_mean(ce + neg_h, mask).mean(), m


def tv_loss(p, q_logits, mask):
    """Mean per-depth total variation TV_i = 1 − Σ_v min(p_i, q_i) (Bebop Eq. 10).

    ∂TV/∂q_v = −1[q_v < p_v]: bounded, unlike CE's −p_v/q_v.
    """
    alpha, _, m = depth_stats(p, q_logits, mask)
    return _masked_mean(1 - alpha, mask).mean(), m


def e2e_tv_loss(p, q_logits, mask):
    """End-to-end TV: L = 1 − (1/γ) Σ_j Π_{i≤j} α_i (Bebop Eq. 13).

    Π_{i≤j} α_i is the probability that the first j drafts are all accepted, so γ·(1 − L) is
    the expected number of accepted drafts: the loss is the acceptance length itself.
    """
    alpha, _, m = depth_stats(p, q_logits, mask)
    reach = alpha.cumprod(-1)  # [B, T, γ]
    return 1 - _masked_mean(reach, mask).mean(), m


LOSSES: dict[str, LossFn] = {"ce": ce_loss, "kl": kl_loss, "tv": tv_loss, "e2e_tv": e2e_tv_loss}
