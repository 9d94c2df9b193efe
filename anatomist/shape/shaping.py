"""`shape_pairs`: preference pairs + an audit → `ShapedPair`s the DPO loop trains on.

    audit = AuditFolder("runs/audit")
    shaped = shape_pairs(pairs, audit, lam={3: -1.0},                  # suppress cluster 3
                         token_filter=TokenFilter(clusters=(3,), tau=2.0),
                         inoculate=Inoculation(cluster=3),
                         drop_extreme=0.05)

The pairs must hold the texts the audit scored (`AuditFolder.check_data`: per-pair text hashes,
or the dataset hash of an older audit): pairs are matched to the audit by id, and an id outlives
an edit of its texts, or a swap of its sides, which would flip the sign of every λ. The four
options, applied in this order (DESIGN.md "Reward shaping", "Token filtering",
"Inoculation prompting"):
1. drop_extreme q: drop the pairs whose largest |Δc_k| over the shaped clusters is above its
   (1 − q) quantile (numpy's linear quantile, strict >): the coarse form of token filtering.
2. lam {k: λ_k}: offset = Σ_k λ_k · Δc_k with Δc = c(y⁺) − c(y⁻) as pairs.parquet stores it;
   the loss −log σ(β·Δθ − offset) makes the policy optimize r + Σ λ_k c_k (λ > 0 amplifies).
3. inoculate: pairs with Δc_k > min_delta on the flagged cluster get a system prompt asking for
   the concept (shape/inoculate.py); the others keep their prompt.
4. token_filter: per-token masks m_t = 1[c_t < τ] (shape/masks.py) on the chosen and/or
   rejected response (responses are tokenized apart from the prompt, so inoculation leaves
   their tokens unchanged).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from anatomist.audit.folder import AuditFolder
from anatomist.errors import AnatomistError
from anatomist.shape.inoculate import (
    DEFAULT_TEMPLATE,
    inoculate_prompt,
    inoculation_text,
)
from anatomist.shape.masks import response_mask
from anatomist.shape.pairs import ShapedPair, plain

SIDES = {"chosen": ("chosen",), "rejected": ("rejected",), "both": ("chosen", "rejected")}


Concept = int | str   # a cluster id, or what `AuditFolder.resolve_concept` reads: "3", a label, "length"


def _concept(value) -> Concept:
    return int(value) if isinstance(value, (int, np.integer)) else str(value)


def _clusters(value) -> tuple[Concept, ...]:
    out = (_concept(value),) if isinstance(value, (int, np.integer, str)) else tuple(_concept(k) for k in value)
    if not out:
        raise AnatomistError("name at least one cluster")
    return out


@dataclass(frozen=True)
class TokenFilter:
    """Drop tokens whose per-token concept score c_t (standardized like c(y)) is >= tau.

    clusters  the concepts scored per token (a token is dropped if any of them reaches tau)
    tau       threshold on c_t; c_t is on the scale of c(y), so τ = 0 is the audited mean response
    sides     which responses lose tokens: "chosen" | "rejected" | "both" (policy and reference alike)
    """
    clusters: tuple[Concept, ...]
    tau: float
    sides: str = "both"

    def __post_init__(self):
        object.__setattr__(self, "clusters", _clusters(self.clusters))
        if self.sides not in SIDES:
            raise AnatomistError(f"token filter sides must be one of {tuple(SIDES)}, got {self.sides!r}")


@dataclass(frozen=True)
class Inoculation:
    """Ask for `cluster`'s concept in the training prompt of pairs whose Δc > min_delta."""
    cluster: Concept
    text: str | None = None        # None: `template` filled with the cluster label
    min_delta: float = 0.0
    template: str = DEFAULT_TEMPLATE

    def __post_init__(self):
        object.__setattr__(self, "cluster", _concept(self.cluster))


def _offsets(audit: AuditFolder, ids: list[str], lam: dict[int, float]) -> np.ndarray:
    if not lam:
        return np.zeros(len(ids))
    ks = list(lam)
    c_pos, c_neg = audit.scores(ids, ks)                                   # [P, K] each
    return (c_pos - c_neg) @ np.array([lam[k] for k in ks], dtype=np.float64)


def _keep(audit: AuditFolder, ids: list[str], clusters: tuple[int, ...], q: float) -> np.ndarray:
    """bool [P]: False for the fraction ~q of pairs with the most extreme Δc."""
    if not 0 < q < 1:
        raise AnatomistError(f"drop_extreme must be a fraction in (0, 1), got {q}")
    if not clusters:
        raise AnatomistError("drop_extreme needs a cluster: give lam, token_filter or inoculate")
    c_pos, c_neg = audit.scores(ids, clusters)
    extreme = np.abs(c_pos - c_neg).max(1)                                 # [P]
    return extreme <= np.quantile(extreme, 1 - q)


def shape_pairs(pairs, audit: AuditFolder | str, *, lam: dict[int, float] | None = None,
                token_filter: TokenFilter | None = None, inoculate: Inoculation | None = None,
                drop_extreme: float | None = None, tokenizer=None, max_length: int = 512) -> list[ShapedPair]:
    """Shaped pairs (module doc) in input order, minus dropped ones. Concepts are cluster ids or
    anything `AuditFolder.resolve_concept` reads (`anatomist.shape.recipe.apply` bundles this with steering).

    tokenizer: when given, token masks get exactly the length `encode_response(tokenizer, prompt,
    response, max_length=max_length)` gives (checked against the audit's tokens; tokens the audit
    never scored are kept); otherwise one entry per token the audit scored."""
    audit = audit if isinstance(audit, AuditFolder) else AuditFolder(audit)
    lam = {audit.resolve_concept(k): float(v) for k, v in (lam or {}).items()}
    if token_filter is not None:
        token_filter = replace(token_filter, clusters=tuple(audit.resolve_concept(k) for k in token_filter.clusters))
    if inoculate is not None:
        inoculate = replace(inoculate, cluster=audit.resolve_concept(inoculate.cluster))
    # a pair the audit never saw, or whose texts it did not score, is an error, named, before any work
    out = plain(audit.check_data(pairs))
    ids = [p.id for p in out]
    out = [p if p.topic is not None else replace(p, topic=audit.topic(p.id)) for p in out]   # for per-topic eval

    if drop_extreme is not None:
        flagged = tuple(lam) or (token_filter.clusters if token_filter else ()) or \
            ((inoculate.cluster,) if inoculate else ())
        keep = _keep(audit, ids, flagged, drop_extreme)
        out, ids = [p for p, k in zip(out, keep) if k], [i for i, k in zip(ids, keep) if k]

    offsets = _offsets(audit, ids, lam)                                    # [P]
    out = [replace(p, offset=float(o)) for p, o in zip(out, offsets)]

    if inoculate is not None:
        k = inoculate.cluster
        if not (inoculate.text or audit.label(k)):
            raise AnatomistError(f"cluster {k} has no label in the audit: give the inoculation text")
        text = inoculate.text or inoculation_text(audit.label(k), inoculate.template)
        c_pos, c_neg = audit.scores(ids, [k])
        favours = (c_pos - c_neg)[:, 0] > inoculate.min_delta              # [P]
        out = [replace(p, prompt=inoculate_prompt(p.prompt, text)) if f else p for p, f in zip(out, favours)]

    if token_filter is not None:
        out = [_filtered(p, audit, token_filter, tokenizer, max_length) for p in out]
    return out


def _filtered(p: ShapedPair, audit: AuditFolder, tf: TokenFilter, tokenizer, max_length: int) -> ShapedPair:
    masks = {}
    for side in SIDES[tf.sides]:
        tokens = None
        if tokenizer is not None:
            from anatomist.models.chat import encode_response

            enc = encode_response(tokenizer, p.prompt, getattr(p, side), max_length=max_length)
            tokens = enc.input_ids[len(enc.input_ids) - enc.n_response:]
        masks[f"{side}_token_mask"] = response_mask(audit, p.id, side, tf.clusters, tf.tau, tokens=tokens)
    return replace(p, **masks)
