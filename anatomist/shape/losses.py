"""DPO losses with the concept offset of reward shaping (DESIGN.md "Reward shaping").

Pure functions of tensors. Notation for a batch of B pairs:
    logp(y|x) = Σ_t m_t · log π(y_t | x, y_<t)   summed over response tokens (m = mask)
    Δθ        = [logp_π(y⁺) − logp_ref(y⁺)] − [logp_π(y⁻) − logp_ref(y⁻)]
    offset    = Σ_k λ_k · Δc_k,  Δc_k = c_k(x, y⁺) − c_k(x, y⁻)   (standardized concept scores)
    sigmoid:  L = −log σ(β·Δθ − offset)                    λ = 0 is plain DPO exactly
    ipo:      L = (Δθ − offset/β − 1/(2β))²                  (Azar et al. 2023, shifted the same way)
The policy then optimizes r + λ·c: λ > 0 amplifies a concept, λ < 0 suppresses it.

TRL equivalence: shifting the precomputed reference log-probs by λ·c(y)/β,
    ref_chosen_logps += λ·c(y⁺)/β,  ref_rejected_logps += λ·c(y⁻)/β,
turns TRL's Δθ into Δθ − offset/β, i.e. the same loss (`shift_reference`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

LOSS_TYPES = ("sigmoid", "ipo")


class DPOOutput(NamedTuple):
    loss: torch.Tensor            # [B] per-pair loss
    chosen_reward: torch.Tensor   # [B] β·(logp_π(y⁺) − logp_ref(y⁺)), detached
    rejected_reward: torch.Tensor # [B] β·(logp_π(y⁻) − logp_ref(y⁻)), detached


def token_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log π(labels_t | ·) [B, T] from logits [B, T, V] already aligned with labels (logits[:, t]
    predicts labels[:, t]). Softmax in fp32."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return logp.gather(-1, labels.unsqueeze(-1)).squeeze(-1)


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ_t mask_t · log π(labels_t) [B]: logits [B, T, V] aligned with labels [B, T], mask [B, T]
    (response tokens, times a token-filter mask where one applies)."""
    return (token_logps(logits, labels) * mask.to(torch.float32)).sum(-1)


def concept_offset(c_chosen: torch.Tensor, c_rejected: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """offset [B] = Σ_k λ_k · (c_k(y⁺) − c_k(y⁻)) for concept scores [B, K] and λ [K]."""
    return ((c_chosen - c_rejected) * lam).sum(-1)


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, *, beta: float, offset: torch.Tensor | None = None,
             loss_type: str = "sigmoid") -> DPOOutput:
    """Per-pair shaped DPO loss from sequence log-probs [B] of policy and reference."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    chosen_ratio = policy_chosen - ref_chosen
    rejected_ratio = policy_rejected - ref_rejected
    delta = chosen_ratio - rejected_ratio                                   # Δθ [B]
    if offset is None:
        offset = torch.zeros_like(delta)
    if loss_type == "sigmoid":
        loss = -F.logsigmoid(beta * delta - offset)
    else:
        loss = (delta - offset / beta - 1 / (2 * beta)) ** 2
    return DPOOutput(loss, (beta * chosen_ratio).detach(), (beta * rejected_ratio).detach())


def shift_reference(ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, c_chosen: torch.Tensor,
                    c_rejected: torch.Tensor, lam: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference log-probs [B] shifted so that plain DPO on them equals the shaped loss (TRL export)."""
    return ref_chosen + (c_chosen * lam).sum(-1) / beta, ref_rejected + (c_rejected * lam).sum(-1) / beta
