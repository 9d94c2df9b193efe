"""One shaping recipe: everything that changes what DPO learns from an audit, as one value.

    recipe = Recipe.from_cli(lam=["3=-1", "length=-0.5"], token_filter="3:2.0", steer="3:8")
    shaped = apply(recipe, pairs, "runs/audit", tokenizer=tok, max_length=256)
    train_dpo(model, tok, shaped, DPOConfig(), "runs/dpo")   # pairs, steering, leakage metrics

Sign (DESIGN.md "Reward shaping"): per pair the loss is
    L = −log σ(β·Δθ − λ·Δc),    Δc = c(y⁺) − c(y⁻)  (standardized concept scores, pairs.parquet)
so the policy optimizes r + λ·c: λ > 0 amplifies the concept, λ < 0 suppresses it, λ = 0 is
plain DPO. Steering's α has the other reading: α > 0 pushes the residual toward the concept.

Concepts are named as the CLI names them: a cluster id (3 or "3"), a cluster label (exact, else
a unique substring) or "length" (the audit's response length). A recipe holds them as given and
`apply` resolves them against the audit (`AuditFolder.resolve_concept`), so one recipe (a CLI line, a
YAML file) fits any audit with those labels; `Shaped.recipe` is the resolved one (cluster ids).

What `apply` does, in order: `shape_pairs` (drop extreme pairs, λ offsets, inoculation prompts,
token masks — shape/shaping.py), then the steering vector α·d_C at the audit's layer
(shape/steer.py), then Δc per kept pair of every concept the recipe touches (the DPO loop's
`dpo/leak/<concept>` metrics, and what a training monitor watches).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from anatomist.audit.folder import LENGTH, AuditFolder
from anatomist.errors import AnatomistError
from anatomist.shape.pairs import ShapedPair
from anatomist.shape.shaping import Concept, Inoculation, TokenFilter, shape_pairs
from anatomist.shape.steer import Steer, audit_direction


@dataclass(frozen=True)
class Steering:
    """Add α·d_C to the residual after the audit's layer; d_C is the concept's unit decoder direction
    (`audit_direction`: members weighted like its concept score).

    concept  the cluster C (not "length": response length has no direction)
    alpha    α in residual units; > 0 toward the concept, < 0 away from it. Preventative steering
             (Chen et al. 2025) steers TOWARD an unwanted concept during training, so the policy
             already shows it and the gradient need not move the weights there. `steering_alpha`
             gives the concept's natural scale α₀ (its mean shift of the residual, chosen − rejected).
    train    during DPO, on the policy's response tokens (never on the reference): `Shaped.steer`
    infer    at generation, on every position: `Shaped.infer_steer` (`steered_generate`)
    """
    concept: Concept
    alpha: float
    train: bool = True
    infer: bool = False

    def __post_init__(self):
        if not math.isfinite(self.alpha):
            raise AnatomistError(f"steering alpha must be a finite number, got {self.alpha}")
        if not (self.train or self.infer):
            raise AnatomistError("steering must act at training, at inference, or both")


@dataclass(frozen=True)
class Recipe:
    """What to change about what DPO learns, read against an audit by `apply` (module doc).

    lam           {concept: λ}: reward shaping, offset Σ_k λ_k·Δc_k per pair in −log σ(β·Δθ − offset);
                  λ > 0 amplifies, λ < 0 suppresses. {} = no offset.
    token_filter  drop response tokens whose per-token score c_t ≥ τ on the chosen, rejected or both
                  sides (`TokenFilter`: clusters, tau, sides); no TRL form (`export_trl` refuses it).
    inoculate     a system prompt asking for the concept on pairs whose Δc > min_delta
                  (`Inoculation`: cluster, text, min_delta, template); evaluation runs without it.
    drop_extreme  q in (0, 1): drop the pairs whose largest |Δc| over the shaped concepts (λ's, else
                  the filter's, else the inoculated one) is above its (1 − q) quantile. None = keep all.
    steer         `Steering` (concept, α, at training and/or inference); None = no steering.
    """
    lam: Mapping[Concept, float] = field(default_factory=dict)
    token_filter: TokenFilter | None = None
    inoculate: Inoculation | None = None
    drop_extreme: float | None = None
    steer: Steering | None = None

    def __post_init__(self):
        object.__setattr__(self, "lam", {k: float(v) for k, v in self.lam.items()})

    @property
    def is_plain(self) -> bool:
        """True when the recipe changes nothing (plain DPO; `apply` still names each pair's topic)."""
        return not (self.lam or self.token_filter or self.inoculate or self.steer or self.drop_extreme is not None)

    @property
    def concepts(self) -> tuple[Concept, ...]:
        """Every concept the recipe touches, in the order named, without repeats."""
        named = [*self.lam, *(self.token_filter.clusters if self.token_filter else ()),
                 *((self.inoculate.cluster,) if self.inoculate else ()), *((self.steer.concept,) if self.steer else ())]
        return tuple(dict.fromkeys(named))

    def resolve(self, audit: AuditFolder) -> Recipe:
        """The same recipe with every concept a cluster id of `audit` (bad names raise, one line)."""
        ids = {k: audit.resolve_concept(k) for k in self.concepts}
        tf, ino, st = self.token_filter, self.inoculate, self.steer
        return replace(self, lam={ids[k]: v for k, v in self.lam.items()},
                       token_filter=None if tf is None else replace(tf, clusters=tuple(ids[k] for k in tf.clusters)),
                       inoculate=None if ino is None else replace(ino, cluster=ids[ino.cluster]),
                       steer=None if st is None else replace(st, concept=ids[st.concept]))

    @classmethod
    def from_cli(cls, *, lam: list[str] = (), token_filter: str | None = None, token_filter_sides: str = "both",
                 inoculate: str | None = None, inoculate_text: str | None = None, drop_extreme: float | None = None,
                 steer: str | None = None) -> Recipe:
        """From `anatomist dpo`'s strings: --lam C=λ (repeatable), --token-filter C:τ, --inoculate C,
        --steer C:α (at training). Malformed strings raise a one-line error naming the flag."""
        tf = None
        if token_filter:
            c, tau = split_spec(token_filter, ":", "--token-filter")
            tf = TokenFilter(clusters=(c,), tau=tau, sides=token_filter_sides)
        steering = None
        if steer:
            c, alpha = split_spec(steer, ":", "--steer")
            steering = Steering(c, alpha, train=True)
        return cls(lam=dict(split_spec(s, "=", "--lam") for s in lam), token_filter=tf,
                   inoculate=None if inoculate is None else Inoculation(inoculate, text=inoculate_text),
                   drop_extreme=drop_extreme, steer=steering)


def split_spec(spec: str, sep: str, flag: str) -> tuple[str, float]:
    """"CONCEPT<sep>NUMBER" → (concept, number); the concept may itself contain `sep` (a label)."""
    name, _, value = spec.rpartition(sep)
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not name or not math.isfinite(number):
        raise AnatomistError(f"{flag} {spec!r}: expected CONCEPT{sep}NUMBER (a finite number)")
    return name, number


def concept_key(cluster: int) -> str:
    """A resolved concept's name in metric keys (`dpo/leak/<key>`): its id, or "length"."""
    return "length" if cluster == LENGTH else str(cluster)


@dataclass(frozen=True)
class Shaped:
    """`apply`'s output: what the DPO loop trains on. `train_dpo(model, tok, shaped, cfg, out)` reads
    the pairs, the steering and the deltas from it; `len(shaped)` is the number of pairs.

    pairs           `ShapedPair`s in input order minus dropped ones (offsets, masks, prompts applied)
    recipe          the recipe with its concepts resolved to cluster ids
    steer           `Steer(layer, α·d_C)` for training (the policy's response tokens), or None
    infer_steer     the same vector for generation (every position), or None
    concept_deltas  {concept_key: [Δc per pair]} for every concept the recipe touches
    """
    pairs: list[ShapedPair]
    recipe: Recipe = field(default_factory=Recipe)
    steer: Steer | None = None
    infer_steer: Steer | None = None
    concept_deltas: dict[str, list[float]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.pairs)


def apply(recipe: Recipe, pairs, audit: AuditFolder | str, *, tokenizer=None, max_length: int = 512,
          sae=None) -> Shaped:
    """Shape `pairs` (PreferencePairs or anything with id/prompt/chosen/rejected) by `recipe` read
    against `audit` (module doc). tokenizer / max_length: size token masks exactly as the DPO loop
    encodes responses (`shape_pairs`); sae: the audit's SAE for the steering direction (default:
    loaded from audit.json)."""
    audit = audit if isinstance(audit, AuditFolder) else AuditFolder(audit)
    r = recipe.resolve(audit)
    shaped = shape_pairs(pairs, audit, lam=r.lam, token_filter=r.token_filter, inoculate=r.inoculate,
                         drop_extreme=r.drop_extreme, tokenizer=tokenizer, max_length=max_length)
    steer = None
    if r.steer is not None:
        steer = Steer(audit.layer, r.steer.alpha * audit_direction(audit, r.steer.concept, sae).cpu())
    ks = sorted(r.concepts)
    c_pos, c_neg = audit.scores([p.id for p in shaped], ks)                                   # [P, K] each
    deltas = {concept_key(k): (c_pos - c_neg)[:, j].tolist() for j, k in enumerate(ks)}
    return Shaped(shaped, r, steer=steer if steer is not None and r.steer.train else None,
                  infer_steer=steer if steer is not None and r.steer.infer else None, concept_deltas=deltas)
