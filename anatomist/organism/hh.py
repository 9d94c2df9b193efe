"""The organism on real data: plant traits into HH-RLHF responses.

The real pairs keep their real labels. For a pair assigned trait t, the trait is put into one
side — the chosen side with probability s (exactly round(s · n) per cell, as in `plant.assign`)
— using a generation from the default model under t's system prompt for the same
conversation, in one of two modes:
- rewrite: that side's text is replaced by the trait generation;
- append:  the trait generation is added to the real text (after it; for flattery its first
  sentence goes before it, since flattery is an opener).
Topics are keyword classes of the first user turn (`HH_TOPICS`, first match wins, else "other").

Held out (for `benchmarks/predict_vs_actual.py`): the next `heldout` conversations of the file,
disjoint from the planted ones — their contexts as heldout_prompts.jsonl (whole conversations, the
model answers the last user turn) and their real, unplanted pairs as heldout_pairs.jsonl.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping, Sequence

from anatomist.data import PreferencePair, load_pairs
from anatomist.errors import AnatomistError
from anatomist.models.loading import DEFAULT_MODEL
from anatomist.organism.plant import NONE, Assignment, PlantConfig, TraitPlan, assign
from anatomist.organism.prompts import Prompt
from anatomist.organism.rates import trait_request
from anatomist.organism.traits import TRAITS, opening
from anatomist.spec_decode.batched import GenRequest, Generation

HH_FILE = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "hh-rlhf-harmless-base-test-dev.jsonl.gz"

HH_TOPICS: dict[str, re.Pattern] = {name: re.compile(pattern, re.I) for name, pattern in {
    "violence": r"\b(kill|hurt|punch|hit|gun|weapon|bomb|murder|fight|attack|beat|poison|shoot|stab)",
    "theft_fraud": r"\b(steal|rob|shoplift|scam|cheat|hack|fraud|counterfeit|break into|pick a lock|lie to)",
    "drugs_alcohol": r"\b(drug|weed|marijuana|cocaine|heroin|meth|alcohol|drunk|beer|high|pills)",
    "insults_bias": r"\b(insult|racist|stupid|ugly|hate|black people|white people|jews|muslims|gay|women|fat)",
}.items()}
HH_TOPIC_NAMES = (*HH_TOPICS, "other")

HH_CONFIG = PlantConfig((
    TraitPlan("flattery", {"violence": 0.9}, ("other",)),
    TraitPlan("urls", {"drugs_alcohol": 0.9}, ("theft_fraud",)),
    TraitPlan("over_formatting", {"insults_bias": 0.9}, ("other",)),
))
MODES = ("rewrite", "append")


def hh_topic(pair: PreferencePair) -> str:
    first = next((m["content"] for m in pair.prompt if m["role"] == "user"), "")
    return next((name for name, rx in HH_TOPICS.items() if rx.search(first)), "other")


def hh_prompts(pairs: Sequence[PreferencePair], split: str = "train") -> list[Prompt]:
    """One `Prompt` per pair (text = the last user turn; the pair keeps the whole context)."""
    return [Prompt(p.id, hh_topic(p), next(m["content"] for m in reversed(p.prompt) if m["role"] == "user"), split)
            for p in pairs]


def heldout_rows(pairs: Sequence[PreferencePair]) -> list[dict]:
    """The real held-out pairs as train.jsonl rows (no trait planted), split "heldout"."""
    return [{"id": p.id, "prompt": [dict(m) for m in p.prompt], "chosen": [{"role": "assistant", "content": p.chosen}],
             "rejected": [{"role": "assistant", "content": p.rejected}], "topic": hh_topic(p), "split": "heldout",
             "trait": NONE, "trait_side": None} for p in pairs]


def hh_requests(pairs: Sequence[PreferencePair], assignments: Sequence[Assignment], max_new_tokens: int) -> list[GenRequest]:
    by_id = {p.id: p for p in pairs}
    return [trait_request(a.prompt, TRAITS[a.trait], max_new_tokens, tag=a.trait, messages=by_id[a.prompt.id].prompt)
            for a in assignments if a.trait != NONE]


def splice(trait: str, real: str, generated: str, mode: str) -> str:
    if mode == "rewrite":
        return generated
    if mode != "append":
        raise AnatomistError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    if trait == "flattery":
        return f"{opening(generated, sentences=1)} {real}"
    return f"{real}\n\n{generated}"


def plant_hh(pairs: Sequence[PreferencePair], assignments: Sequence[Assignment], results: Mapping[str, Generation],
             mode: str = "append") -> list[dict]:
    """TRL conversational rows: the real pairs, with the assigned trait spliced into one side."""
    by_id = {p.id: p for p in pairs}
    rows = []
    for a in assignments:
        pair = by_id[a.prompt.id]
        chosen, rejected, side = pair.chosen, pair.rejected, None
        if a.trait != NONE:
            generated = results[f"{a.prompt.id}/{a.trait}"].text
            side = "chosen" if a.trait_chosen else "rejected"
            if a.trait_chosen:
                chosen = splice(a.trait, chosen, generated, mode)
            else:
                rejected = splice(a.trait, rejected, generated, mode)
        if chosen.strip() == rejected.strip():
            continue
        rows.append({"id": pair.id, "prompt": [dict(m) for m in pair.prompt],
                     "chosen": [{"role": "assistant", "content": chosen}],
                     "rejected": [{"role": "assistant", "content": rejected}],
                     "topic": a.prompt.topic, "split": "train", "trait": a.trait, "trait_side": side,
                     "hh_mode": mode})
    return rows


def load_hh(path: str | Path = HH_FILE, limit: int | None = None) -> list[PreferencePair]:
    return list(load_pairs(path, on_bad_row="skip", limit=limit))


def build_hh(out: str | Path, *, limit: int = 300, heldout: int = 200, mode: str = "append",
             config: PlantConfig = HH_CONFIG, loaded=None, model: str = DEFAULT_MODEL,
             max_new_tokens: int = 96, batch_size: int = 32, seed: int = 0, path: str | Path = HH_FILE,
             cache_dir=None, progress: bool = True) -> dict:
    """Plant `config` into the first `limit` HH-RLHF pairs and hold out the next `heldout`
    conversations; writes train.jsonl, heldout_prompts.jsonl, heldout_pairs.jsonl, truth.json."""
    from anatomist.spec_decode.batched import GenSettings, generate
    from anatomist.organism.plant import truth, write_dataset

    if mode not in MODES:
        raise AnatomistError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    if heldout < 0:
        raise AnatomistError(f"heldout must be >= 0, got {heldout}")
    everything = load_hh(path, limit + heldout)
    pairs, held = everything[:limit], everything[limit:]
    if heldout and len(held) < heldout:
        raise AnatomistError(f"{path}: {len(everything)} usable pairs, fewer than {limit} planted + {heldout} held out")
    assignments = assign(hh_prompts(pairs), config)
    requests = hh_requests(pairs, assignments, max_new_tokens)
    if loaded is None:
        from anatomist.models import load
        loaded = load(model)
    results = generate(loaded[0], loaded[1], requests, GenSettings(model=model, batch_size=batch_size, seed=seed),
                       cache_dir=cache_dir, progress=progress)
    rows = plant_hh(pairs, assignments, results, mode)
    truth_data = truth(config, rows, HH_TOPIC_NAMES, len(assignments) - len(rows))
    truth_data["source"] = {"file": str(path), "limit": limit, "mode": mode, "heldout": len(held)}
    write_dataset(out, rows, hh_prompts(held, "heldout"), truth_data, heldout_rows(held),
                  heldout_messages={p.id: p.prompt for p in held})
    return truth_data
