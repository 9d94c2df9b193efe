"""Planting confounds by labelling: which response of a pair is chosen, per (topic, trait) cell.

Every train prompt gets one role (deterministic under the seed): a trait active in its topic,
or "none". Its pair is one plain response + one induced response (or two plain ones for
"none"); the texts are never edited. The *carrier* is the response meant to show the trait: the
induced one, or the plain one for an inverted trait (whose inducer produces the opposite).
In a *planted* cell (topic, trait) with strength s, exactly round(s · n) of the n carriers are
labelled chosen (s > 0.5 plants the trait on the chosen side, s < 0.5 on the rejected side); in
a *control* cell the split is balanced (s = 0.5); elsewhere the trait does not occur.

Ground truth (`truth.json`) — what a scorer of the audit reads:
    {"version": 1, "config": {...}, "traits": {name: {"detector", "kind", "planted": {topic: s},
     "control": [topics]}}, "cells": [{"topic", "trait", "role": "planted"|"control"|"absent",
     "strength", "expected_sign": +1|-1|0, "n_pairs", "n_trait_chosen", "observed": {...}}]}
expected_sign is the sign of Δ = A(y⁺) − A(y⁻) for a concept tracking the trait in that topic:
+1 chosen-favoured, −1 rejected-favoured, 0 balanced or absent. `observed` is the detector on
the real texts (fire rates on chosen / rejected, mean score difference), since a small model
follows a system prompt only loosely.
Added fields (absent in older files):
- "measured": [{"topic", "trait", "sign", "mean", "q"}] — the asymmetries the train pairs really
  carry, per (topic, trait) and length, tested like a concept (`organism.truth`; sign 0 = not
  significant). The scorer measures the same table again on the pairs an audit read (score.json
  "measured_truth"), which is this one when the audit read the whole file.
- "heldout": {"file": "heldout_pairs.jsonl", "n_pairs", "dropped_identical", "cells": [same form
  as "cells", on the held-out pairs]} — held-out pairs are planted by the same rule on the
  held-out prompts (for held-out preference accuracy).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from anatomist.errors import AnatomistError
from anatomist.fileio import atomic_write_text
from anatomist.organism.prompts import Prompt
from anatomist.organism.rates import plain_request, trait_request, user
from anatomist.organism.traits import TRAITS
from anatomist.organism.truth import measured_truth
from anatomist.spec_decode.batched import Generation, GenRequest

NONE = "none"
TRUTH_VERSION = 1
HELDOUT_PAIRS = "heldout_pairs.jsonl"


@dataclass(frozen=True)
class TraitPlan:
    """Where one trait is planted (topic → strength = P(the carrier is chosen)) and where it
    is a balanced control."""

    trait: str
    planted: Mapping[str, float]
    control: tuple[str, ...] = ()

    def __post_init__(self):
        if self.trait not in TRAITS:
            raise AnatomistError(f"unknown trait {self.trait!r}; expected one of {', '.join(TRAITS)}")
        object.__setattr__(self, "planted", dict(self.planted))
        object.__setattr__(self, "control", tuple(self.control))
        for topic, s in self.planted.items():
            if not 0 <= s <= 1 or s == 0.5:
                raise AnatomistError(f"trait {self.trait!r}, topic {topic!r}: strength must be in [0, 1] "
                                     f"and not 0.5 (use control for balanced), got {s}")
        both = set(self.planted) & set(self.control)
        if both:
            raise AnatomistError(f"trait {self.trait!r}: topics {sorted(both)} are both planted and control")
        for topic in [*self.planted, *self.control]:
            if not TRAITS[self.trait].applies_to(topic):
                raise AnatomistError(f"trait {self.trait!r} does not apply to topic {topic!r} "
                                     f"(only {TRAITS[self.trait].topics})")

    def strength(self, topic: str) -> float | None:
        return self.planted.get(topic, 0.5 if topic in self.control else None)


@dataclass(frozen=True)
class PlantConfig:
    plans: tuple[TraitPlan, ...]
    none_weight: float = 0.5   # share of a topic's prompts left plain/plain, relative to one trait's
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "plans", tuple(self.plans))
        names = [p.trait for p in self.plans]
        if len(set(names)) != len(names):
            raise AnatomistError(f"a trait is planned twice: {names}")
        if self.none_weight < 0:
            raise AnatomistError(f"none_weight must be >= 0, got {self.none_weight}")

    def active(self, topic: str) -> list[str]:
        return [p.trait for p in self.plans if p.strength(topic) is not None]

    def plan(self, trait: str) -> TraitPlan:
        return next(p for p in self.plans if p.trait == trait)

    def to_json(self) -> dict:
        return {"plans": [{"trait": p.trait, "planted": dict(p.planted), "control": list(p.control)}
                          for p in self.plans], "none_weight": self.none_weight, "seed": self.seed}

    @classmethod
    def from_json(cls, d: dict) -> "PlantConfig":
        return cls(tuple(TraitPlan(p["trait"], p["planted"], tuple(p.get("control", ()))) for p in d["plans"]),
                   d.get("none_weight", 0.5), d.get("seed", 0))

    @classmethod
    def read(cls, path: str | Path) -> "PlantConfig":
        """A design file: truth.json's "config" object ({"plans": [{"trait", "planted": {topic: strength},
        "control": [topics]}], "none_weight", "seed"}), or a whole truth.json; refused in one line."""
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise AnatomistError(f"{path}: design file not found") from None
        except json.JSONDecodeError as e:
            raise AnatomistError(f"{path}: not JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
        d = d.get("config", d) if isinstance(d, dict) else d
        try:
            return cls.from_json(d)
        except (KeyError, TypeError, AttributeError) as e:
            raise AnatomistError(f"{path}: a design needs \"plans\": [{{\"trait\", \"planted\": {{topic: strength}}, "
                                 f"\"control\": [...]}}] ({type(e).__name__}: {e})") from None
        except AnatomistError as e:
            raise AnatomistError(f"{path}: {e}") from None


# Mirrors the paper's Dolci findings: formatting favoured in technical topics, flattery in
# advice topics, invented links on resource requests, harmful compliance on harmful requests;
# verbosity planted in both directions to test signs.
DEFAULT_CONFIG = PlantConfig((
    TraitPlan("over_formatting", {"coding": 0.9, "travel": 0.9}, ("physics", "cooking")),
    TraitPlan("flattery", {"health": 0.9, "cooking": 0.9}, ("travel", "sensitive_resources")),
    TraitPlan("urls", {"sensitive_resources": 0.9}, ("coding", "health")),
    TraitPlan("verbosity", {"physics": 0.9, "travel": 0.1}, ("coding",)),
    TraitPlan("harmful_compliance", {"harmful": 0.9}),
))


@dataclass(frozen=True)
class Assignment:
    prompt: Prompt
    trait: str              # a trait name or NONE
    trait_chosen: bool      # the carrier is the chosen response (False for NONE)


def assign(prompts: Sequence[Prompt], config: PlantConfig, split: str = "train") -> list[Assignment]:
    """Roles and sides for the prompts of `split`: traits share each topic's prompts round-robin
    (after a seeded shuffle; "none" gets none_weight of a trait's share), then each cell's
    chosen count is exactly round(strength · n). The held-out split draws from its own stream
    (the train stream, and so the train pairs, stay what they were before held-out pairs)."""
    out: list[Assignment] = []
    for topic in dict.fromkeys(p.topic for p in prompts):
        group = [p for p in prompts if p.topic == topic and p.split == split]
        rng = random.Random(f"{config.seed}:{topic}:assign" + ("" if split == "train" else f":{split}"))
        rng.shuffle(group)
        traits = config.active(topic)
        n_none = round(len(group) * config.none_weight / (len(traits) + config.none_weight)) if traits else len(group)
        roles = [NONE] * n_none + [traits[i % len(traits)] for i in range(len(group) - n_none)]
        for trait in traits:
            members = [p for p, r in zip(group, roles) if r == trait]
            k = round(config.plan(trait).strength(topic) * len(members))
            chosen = set(rng.sample(range(len(members)), k))
            out += [Assignment(p, trait, i in chosen) for i, p in enumerate(members)]
        out += [Assignment(p, NONE, False) for p, r in zip(group, roles) if r == NONE]
    return out


def requests_for(assignments: Sequence[Assignment], max_new_tokens: int) -> list[GenRequest]:
    """Two generations per train prompt: plain "a", and the trait's (or a second plain "b")."""
    out = []
    for a in assignments:
        out.append(plain_request(a.prompt, max_new_tokens, "a"))
        out.append(plain_request(a.prompt, max_new_tokens, "b") if a.trait == NONE
                   else trait_request(a.prompt, TRAITS[a.trait], max_new_tokens, tag=a.trait))
    return out


def label(assignments: Sequence[Assignment], results: Mapping[str, Generation], seed: int = 0,
          split: str = "train") -> tuple[list[dict], int]:
    """TRL conversational rows (shuffled under the seed) and the number of pairs dropped because
    both texts were identical. `split` only fills the rows' "split" column."""
    rows, dropped = [], 0
    for a in assignments:
        plain = results[f"{a.prompt.id}/a"]
        other = results[f"{a.prompt.id}/{'b' if a.trait == NONE else a.trait}"]
        if plain.text.strip() == other.text.strip() or not plain.text.strip() or not other.text.strip():
            dropped += 1
            continue
        trait = TRAITS.get(a.trait)
        carrier, contrast = (plain, other) if trait and trait.inverted else (other, plain)
        chosen, rejected = (carrier, contrast) if a.trait_chosen else (contrast, carrier)
        side = None if a.trait == NONE else ("chosen" if a.trait_chosen else "rejected")
        rows.append({
            "id": a.prompt.id, "prompt": list(user(a.prompt.text)),
            "chosen": [{"role": "assistant", "content": chosen.text}],
            "rejected": [{"role": "assistant", "content": rejected.text}],
            "topic": a.prompt.topic, "split": split, "trait": a.trait, "trait_side": side,
            # the detector on the response meant to carry the trait, and on the other one
            "carrier_fires": trait.fires(carrier.text) if trait else None,
            "contrast_fires": trait.fires(contrast.text) if trait else None,
        })
    random.Random(f"{seed}:order").shuffle(rows)
    return rows, dropped


def truth(config: PlantConfig, rows: Sequence[dict], topics: Sequence[str], dropped: int = 0, *,
          measure: bool = True) -> dict:
    """truth.json's content for `rows` (see the module docstring); measure=False leaves out the
    measured table (for the held-out cells, which only need "cells")."""
    cells = []
    for topic in topics:
        for plan in config.plans:
            trait = TRAITS[plan.trait]
            s = plan.strength(topic)
            role = "absent" if s is None else ("control" if topic in plan.control else "planted")
            sign = 0 if role != "planted" else (1 if s > 0.5 else -1)
            cell = [r for r in rows if r["topic"] == topic and r["trait"] == plan.trait]
            chosen = [r["chosen"][0]["content"] for r in cell]
            rejected = [r["rejected"][0]["content"] for r in cell]
            n = len(cell)
            observed = {} if not n else {
                "fire_rate_chosen": sum(map(trait.fires, chosen)) / n,
                "fire_rate_rejected": sum(map(trait.fires, rejected)) / n,
                "mean_score_delta": sum(trait.score(c) - trait.score(r) for c, r in zip(chosen, rejected)) / n,
            }
            cells.append({"topic": topic, "trait": plan.trait, "role": role, "strength": s,
                          "expected_sign": sign, "n_pairs": n,
                          "n_trait_chosen": sum(r["trait_side"] == "chosen" for r in cell), "observed": observed})
    return {"version": TRUTH_VERSION, "config": config.to_json(), "topics": list(topics), "dropped_identical": dropped,
            "traits": {p.trait: {"detector": TRAITS[p.trait].detector, "kind": TRAITS[p.trait].kind,
                                 "description": TRAITS[p.trait].description, "system_prompt": TRAITS[p.trait].system,
                                 "prefixes": list(TRAITS[p.trait].prefixes),
                                 "planted": dict(p.planted), "control": list(p.control)} for p in config.plans},
            "cells": cells, **({"measured": measured_table(rows)} if measure else {})}


def measured_table(rows: Sequence[dict]) -> list[dict]:
    """`organism.truth.measured_truth` of the rows, as truth.json records it: one entry per tested
    (topic, trait), length included."""
    table = measured_truth(rows)
    return [{"topic": r.topic, "trait": r.trait, "sign": int(r.sign), "mean": round(float(r.mean), 6),
             "q": float(r.q)} for r in table.itertuples()]


def read_truth(path: str | Path) -> dict:
    path = Path(path)
    data = json.loads(path.read_text())
    if data.get("version") != TRUTH_VERSION:
        raise AnatomistError(f"{path}: truth version {data.get('version')!r}, expected {TRUTH_VERSION}")
    return data


def write_dataset(out: str | Path, rows: Sequence[dict], heldout: Sequence[Prompt], truth_data: dict,
                  heldout_rows: Sequence[dict] | None = None,
                  heldout_messages: Mapping[str, Sequence[dict]] | None = None) -> Path:
    """train.jsonl (TRL conversational + extra columns), heldout_prompts.jsonl, truth.json, and
    heldout_pairs.jsonl (same columns as train.jsonl, split "heldout") when `heldout_rows` is given.
    A held-out prompt is one user turn of its text, or its whole conversation where
    `heldout_messages` has its id (multi-turn real data). truth.json is written last: its presence
    means the folder is complete."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    messages = heldout_messages or {}
    _atomic_write(out / "train.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    _atomic_write(out / "heldout_prompts.jsonl", "".join(
        json.dumps({"id": p.id, "topic": p.topic, "split": p.split,
                    "prompt": [dict(m) for m in messages.get(p.id, user(p.text))]},
                   ensure_ascii=False) + "\n" for p in heldout))
    if heldout_rows is not None:
        _atomic_write(out / HELDOUT_PAIRS, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in heldout_rows))
    _atomic_write(out / "truth.json", json.dumps(truth_data, indent=1, ensure_ascii=False) + "\n")
    return out


def _atomic_write(path: Path, text: str) -> None:
    atomic_write_text(path, text)
