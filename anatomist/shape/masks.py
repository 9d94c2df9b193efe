"""Token filtering: per-token masks m_t = 1[c_t < τ] from a concept's per-token scores (DESIGN.md).

A token where the flagged concept fires at or above τ is dropped from the sequence log-prob, on
the policy and the reference alike, so DPO neither pushes it up nor down. c_t is the per-token
concept score of `anatomist.shape.audit` (same weights and standardisation as the response
score c(y): with mean pooling, the mean of c_t over a response is c(y)). Several concepts: a
token is kept only if it is below τ on every one of them.

Masks follow `ShapedPair`'s contract: one entry per response token of `encode_response` (the
end-of-turn token included) when the training tokens are given. The audit may have cut a long
response's end (its max_length); tokens it never scored are kept.
"""

from __future__ import annotations

import numpy as np

from anatomist.errors import DataError


def threshold_mask(scores: np.ndarray, tau: float) -> np.ndarray:
    """keep [T] int8 = 1 where every concept's token score scores [K, T] is below τ."""
    return (np.asarray(scores) < tau).all(0).astype(np.int8)


def fit_mask(mask: np.ndarray, n_tokens: int) -> np.ndarray:
    """The mask for a response of n_tokens: cut, or padded with 1 (keep) past the audited tokens."""
    out = np.ones(n_tokens, dtype=np.int8)
    n = min(n_tokens, len(mask))
    out[:n] = mask[:n]
    return out


def response_mask(audit, pair_id: str, side: str, clusters, tau: float, *,
                  tokens: list[int] | None = None) -> tuple[int, ...]:
    """Token mask of one response from the audit's per-token latents.

    tokens: the response's token ids as the training loop encodes them (end-of-turn included);
    given, the mask gets exactly their length and the audit's tokens must agree on the overlap."""
    scores = np.stack([audit.token_scores(pair_id, side, k) for k in clusters])    # [K, T]
    mask = threshold_mask(scores, tau)
    if tokens is not None:
        seen = audit.response_tokens(pair_id, side)
        n = min(len(seen), len(tokens))
        if list(seen[:n]) != list(tokens[:n]):
            raise DataError(f"pair {pair_id!r}: the {side} response tokenizes differently from the audit's "
                            "(another tokenizer or changed data?)", field=side)
        mask = fit_mask(mask, len(tokens))
    return tuple(int(v) for v in mask)
