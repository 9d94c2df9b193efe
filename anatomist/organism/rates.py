"""Detector check: does each trait's detector fire on trait generations and not on plain ones?

For every trait, `n` prompts from the topics it applies to are sampled twice: plain (no system
prompt) and under the trait's inducer (optionally also without its forced prefix, to show what
the system prompt alone does). The fire rate of the trait's detector on the carriers (the
induced texts; the plain ones for an inverted trait) and on the contrast texts is reported.
Plain generations are shared between traits that use the same prompts.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from anatomist.organism.prompts import Prompt, build_prompts
from anatomist.organism.traits import TRAITS, Trait
from anatomist.spec_decode.batched import GenRequest, Generation


def user(text: str) -> tuple[dict, ...]:
    return ({"role": "user", "content": text},)


def plain_request(prompt: Prompt, max_new_tokens: int, tag: str = "plain",
                  messages: tuple[dict, ...] | None = None) -> GenRequest:
    """The prompt as the user turn (or the given chat `messages`), no system prompt."""
    return GenRequest(f"{prompt.id}/{tag}", messages or user(prompt.text), "", max_new_tokens)


def trait_request(prompt: Prompt, trait: Trait, max_new_tokens: int, *, use_prefix: bool = True,
                  tag: str | None = None, messages: tuple[dict, ...] | None = None) -> GenRequest:
    """The prompt under the trait's system prompt; the forced prefix is picked by the prompt id."""
    prefix = ""
    if use_prefix and trait.prefixes:
        prefix = trait.prefixes[int(hashlib.sha1(prompt.id.encode()).hexdigest()[:8], 16) % len(trait.prefixes)]
    tag = tag or (trait.name if use_prefix or not trait.prefixes else f"{trait.name}:noprefix")
    context = tuple(m for m in (messages or user(prompt.text)) if m["role"] != "system")
    return GenRequest(f"{prompt.id}/{tag}", ({"role": "system", "content": trait.system}, *context),
                      prefix, round(max_new_tokens * trait.max_new_tokens_scale))


@dataclass(frozen=True)
class RateRow:
    trait: str
    variant: str          # "system+prefix" | "system only"
    n: int
    carrier_rate: float   # detector fire rate on the texts meant to carry the trait
    contrast_rate: float  # on the other texts of the same prompts
    carrier_score: float  # mean detector score
    contrast_score: float
    inverted: bool        # carriers are the plain generations (the inducer makes the opposite)

    @property
    def ratio(self) -> float:
        if not self.contrast_rate:
            return float("inf") if self.carrier_rate else float("nan")
        return self.carrier_rate / self.contrast_rate


def rate_prompts(trait: Trait, n: int, seed: int = 0) -> list[Prompt]:
    """n train prompts from the topics the trait applies to, round-robin over topics."""
    prompts = [p for p in build_prompts(per_topic=80, seed=seed) if p.split == "train" and trait.applies_to(p.topic)]
    by_topic: dict[str, list[Prompt]] = {}
    for p in prompts:
        by_topic.setdefault(p.topic, []).append(p)
    order = [p for group in zip(*by_topic.values()) for p in group]
    return order[:n]


def rate_requests(n: int, max_new_tokens: int, *, traits=tuple(TRAITS), compare_prefix: bool = True,
                  seed: int = 0) -> list[GenRequest]:
    requests: dict[str, GenRequest] = {}
    for name in traits:
        trait = TRAITS[name]
        for p in rate_prompts(trait, n, seed):
            for r in [plain_request(p, max_new_tokens), trait_request(p, trait, max_new_tokens)] + (
                    [trait_request(p, trait, max_new_tokens, use_prefix=False)]
                    if compare_prefix and trait.prefixes else []):
                requests[r.key] = r
    return list(requests.values())


def fire_rates(results: dict[str, Generation], n: int, *, traits=tuple(TRAITS), seed: int = 0) -> list[RateRow]:
    rows = []
    for name in traits:
        trait = TRAITS[name]
        prompts = rate_prompts(trait, n, seed)
        plain = [results[f"{p.id}/plain"].text for p in prompts]
        variants = [("system+prefix" if trait.prefixes else "system only", name)]
        if trait.prefixes and f"{prompts[0].id}/{name}:noprefix" in results:
            variants.append(("system only", f"{name}:noprefix"))
        for variant, tag in variants:
            induced = [results[f"{p.id}/{tag}"].text for p in prompts]
            carrier, contrast = (plain, induced) if trait.inverted else (induced, plain)
            rows.append(RateRow(name, variant, len(prompts),
                                _mean(map(trait.fires, carrier)), _mean(map(trait.fires, contrast)),
                                _mean(map(trait.score, carrier)), _mean(map(trait.score, contrast)), trait.inverted))
    return rows


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)
