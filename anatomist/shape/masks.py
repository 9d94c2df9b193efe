"""Token filtering: per-token masks m_t = 1[c_t < τ] from a concept's per-token scores (DESIGN.md).

A token where the flagged concept fires at or above τ is dropped from the sequence log-prob, on
the policy and the reference alike, so DPO neither pushes it up nor down. Several concepts: a
token is kept only if it is below τ on every one of them.

Per-token concept score, from the audit's per-token latents (`AuditFolder.latents`). For cluster
C and response token t,
    raw_C(t) = Σ_{f∈C} w_f · a_f(t)          (w_f = 1/sd_f, the concept score's own weights)
    c_C(t)   = (raw_C(t) − mean_C) / sd_C     (the response-level standardisation, unchanged)
so with the audit's default mean pooling, mean_t c_C(t) = c_C(y) exactly: a token's score is on
the same scale as the response's score in pairs.parquet (τ = 0 is the audited mean response).
Response length (cluster LENGTH) has no per-token score, so token filtering on it is refused; so
has an audit pooled with "calmax" (a response's length-calibrated maximum, `audit.calmax`).

Masks follow `ShapedPair`'s contract: one entry per response token of `encode_response` (the
end-of-turn token included) when the training tokens are given. The audit may have cut a long
response's end (its max_length); tokens it never scored are kept.
"""

from __future__ import annotations

import numpy as np

from anatomist.audit.folder import LENGTH, AuditFolder
from anatomist.errors import AnatomistError, DataError


def _seq(audit: AuditFolder, pair_id: str, side: str) -> int:
    if side not in ("chosen", "rejected"):
        raise AnatomistError(f"side must be 'chosen' or 'rejected', got {side!r}")
    seq = 2 * audit.pair_index(pair_id) + (side == "rejected")
    assert audit.latents.ids[seq] == pair_id and audit.latents.sides[seq] == side, \
        "latents/ stores pair i's sides at sequences 2i, 2i+1 in pairs.parquet order"
    return seq


def response_tokens(audit: AuditFolder, pair_id: str, side: str) -> list[int]:
    """The response token ids the audit scored (end-of-turn included; a long one may be cut)."""
    return list(audit.latents.tokens[_seq(audit, pair_id, side)])


def token_scores(audit: AuditFolder, pair_id: str, side: str, cluster: int) -> np.ndarray:
    """c_C(t) [n_tokens] on one response: same weights and standardisation as c_C(y) (module doc)."""
    c = audit.check_cluster(cluster)
    if c == LENGTH:
        raise AnatomistError("response length has no per-token score: shape it with λ (--lam length=…), "
                             "not a token filter")
    concepts = audit.concepts
    if concepts.calibration is not None:
        # calmax scores a response by its length-calibrated maximum, a number no single token has
        raise AnatomistError(f"{audit.path}: audited with pooling 'calmax', which has no per-token score: "
                             "shape it with λ, or token-filter from an audit with --pooling mean")
    members = concepts.labels == c
    acts = audit.latents.token_acts(_seq(audit, pair_id, side), concepts.features[members])    # [T, M]
    raw = acts.astype(np.float64) @ concepts.weights[members]                                   # [T]
    return (raw - concepts.mean[c]) / concepts.sd[c]


def threshold_mask(scores: np.ndarray, tau: float) -> np.ndarray:
    """keep [T] int8 = 1 where every concept's token score scores [K, T] is below τ."""
    return (np.asarray(scores) < tau).all(0).astype(np.int8)


def fit_mask(mask: np.ndarray, n_tokens: int) -> np.ndarray:
    """The mask for a response of n_tokens: cut, or padded with 1 (keep) past the audited tokens."""
    out = np.ones(n_tokens, dtype=np.int8)
    n = min(n_tokens, len(mask))
    out[:n] = mask[:n]
    return out


def response_mask(audit: AuditFolder, pair_id: str, side: str, clusters, tau: float, *,
                  tokens: list[int] | None = None) -> tuple[int, ...]:
    """Token mask of one response from the audit's per-token latents.

    tokens: the response's token ids as the training loop encodes them (end-of-turn included);
    given, the mask gets exactly their length and the audit's tokens must agree on the overlap."""
    scores = np.stack([token_scores(audit, pair_id, side, k) for k in clusters])    # [K, T]
    mask = threshold_mask(scores, tau)
    if tokens is not None:
        seen = response_tokens(audit, pair_id, side)
        n = min(len(seen), len(tokens))
        if list(seen[:n]) != list(tokens[:n]):
            raise DataError(f"pair {pair_id!r}: the {side} response tokenizes differently from the audit's "
                            "(another tokenizer or changed data?)", field=side)
        mask = fit_mask(mask, len(tokens))
    return tuple(int(v) for v in mask)
