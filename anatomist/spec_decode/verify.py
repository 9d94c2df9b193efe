"""Pure sampling and verification math for speculative decoding.

Everything here is a function of tensors; randomness comes in as uniforms so the samplers are
testable by hand. The contract (DESIGN.md, "Rejection sampling"):

* accept draft x̃_i iff u_i · q_i(x̃_i) < p_i(x̃_i);
* at the first rejection i, sample from norm(max(p_i − q_i, 0));
* if all γ drafts are accepted, sample a bonus token from p_{γ+1}.

p and q are the *final* sampling distributions (same temperature / top-k / top-p, via
`sampling_probs`). Greedy drafting passes ``draft_probs=None``: q is one-hot at the draft
token, so acceptance is u < p(x̃) and the residual is p with x̃ removed. Either way the emitted
tokens are distributed exactly as plain sampling from p (Leviathan et al. 2023, Thm. 1).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch

__all__ = ["RSResult", "uniforms", "sampling_logits", "sampling_probs", "sample_from_probs", "residual_probs",
           "rejection_sample"]


def uniforms(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device | str) -> torch.Tensor:
    """U(0, 1) draws on `device`, taken from `generator` on the generator's own device, so a CPU
    generator gives the same stream whether the model runs on CPU or GPU."""
    src = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=src).to(device)


def sampling_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0,
                    top_p: float = 1.0) -> torch.Tensor:
    """Logits of the final sampling distribution, in fp32: its softmax is what is sampled
    (`sampling_probs`), its log_softmax the log-probs of what was sampled (what RL trains on).

    logits: [..., V] → [..., V]: logits / T, with -inf on tokens that top-k / top-p drop.
    ``temperature == 0`` gives 0 at the argmax and -inf elsewhere (greedy; ties go to the lowest
    index, like ``torch.argmax``). ``top_k == 0`` and ``top_p == 1`` disable those filters.
    Tokens with logit -inf (e.g. outside a reduced draft vocabulary) stay at -inf.
    """
    logits = logits.float()
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature == 0:
        return torch.full_like(logits, float("-inf")).scatter_(-1, logits.argmax(-1, keepdim=True), 0.0)
    logits = logits / temperature
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # [..., 1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        sorted_probs = sorted_logits.softmax(-1)
        # Drop a token when the mass strictly before it already reaches top_p (keeps ≥ 1 token).
        drop_sorted = (sorted_probs.cumsum(-1) - sorted_probs) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sampling_probs(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0,
                   top_p: float = 1.0) -> torch.Tensor:
    """Final sampling distribution from logits, in fp32: [..., V] → probs [..., V] (one-hot at
    ``temperature == 0``); see `sampling_logits`."""
    return sampling_logits(logits, temperature, top_k, top_p).softmax(-1)


def residual_probs(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """What to sample at the first rejection: max(p − q, 0), unnormalised (Leviathan et al. 2023,
    Alg. 1). p, q [B, V] → [B, V]. If p == q up to rounding the residual can vanish; a rejection
    is then (numerically) impossible and p itself is exact."""
    residual = (p - q).clamp(min=0)
    return torch.where(residual.sum(-1, keepdim=True) > 0, residual, p)


def sample_from_probs(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sampling. probs [..., V] (need not be normalised), uniforms [...] in [0, 1).

    Returns token ids [...]. A token with zero mass is never returned (right-sided search).
    """
    cdf = probs.float().cumsum(-1)  # [..., V]
    target = (uniforms.float() * cdf[..., -1]).unsqueeze(-1)  # [..., 1]
    idx = torch.searchsorted(cdf.contiguous(), target.contiguous(), right=True).squeeze(-1)
    return idx.clamp_(max=probs.shape[-1] - 1)


class RSResult(NamedTuple):
    """Outcome of verifying one block of γ drafts per row.

    tokens:   [B, γ+1] emitted tokens; row b holds its n_b accepted drafts, then the
              correction (or bonus) token at index n_b, then -1 padding.
    n_accepted: [B] number of accepted drafts n_b ∈ [0, γ]; n_b + 1 tokens are emitted.
    accepted: [B, γ] bool, drafts i accepted (i.e. i < n_b).
    """

    tokens: torch.Tensor
    n_accepted: torch.Tensor
    accepted: torch.Tensor


def rejection_sample(draft_tokens: torch.Tensor, draft_probs: torch.Tensor | None,
                     target_probs: torch.Tensor, uniforms: torch.Tensor, *,
                     residual: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = residual_probs) -> RSResult:
    """Verify drafts against the target by rejection sampling (pure; no RNG inside).

    draft_tokens: [B, γ] long; draft_probs: [B, γ, V] (the q each draft was sampled from) or
    None for greedy drafts (q = one-hot(x̃)); target_probs: [B, γ+1, V] (p at each draft
    position plus the bonus position); uniforms: [B, γ+1] in [0, 1): u[:, :γ] for the accept
    tests, u[:, γ] for the correction / bonus token (inverse CDF). `residual(p, q)` [B, V] is
    the distribution sampled at the first rejection (an argument so that the statistical tests
    can show they reject a wrong one).
    """
    B, gamma = draft_tokens.shape
    assert target_probs.shape[:2] == (B, gamma + 1), (target_probs.shape, draft_tokens.shape)
    assert uniforms.shape == (B, gamma + 1), uniforms.shape
    p = target_probs.float()
    idx = draft_tokens.unsqueeze(-1)  # [B, γ, 1]
    p_draft = p[:, :gamma].gather(-1, idx).squeeze(-1)  # [B, γ]
    if draft_probs is None:
        q_draft = torch.ones_like(p_draft)
    else:
        q_draft = draft_probs.float().gather(-1, idx).squeeze(-1)  # [B, γ]
    ok = uniforms[:, :gamma].float() * q_draft < p_draft  # [B, γ]
    accepted = ok.cumprod(-1).bool()  # accepted up to the first rejection
    n = accepted.sum(-1)  # [B]

    # Distribution of the final token: residual at the first rejection, p_{γ+1} if none.
    rows = torch.arange(B, device=p.device)
    p_final = p[rows, n]  # [B, V]
    rejected = n < gamma
    if rejected.any():
        n_r = n.clamp(max=gamma - 1)
        if draft_probs is None:
            q_final = torch.zeros_like(p_final).scatter_(-1, draft_tokens[rows, n_r, None], 1.0)
        else:
            q_final = draft_probs[rows, n_r].float()
        p_final = torch.where(rejected[:, None], residual(p_final, q_final), p_final)
    final = sample_from_probs(p_final, uniforms[:, gamma])  # [B]

    tokens = torch.full((B, gamma + 1), -1, dtype=torch.long, device=p.device)
    tokens[:, :gamma] = torch.where(accepted, draft_tokens, -1)
    tokens[rows, n] = final
    return RSResult(tokens=tokens, n_accepted=n, accepted=accepted)
