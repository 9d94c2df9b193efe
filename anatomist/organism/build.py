"""Build the organism dataset end to end: prompts → generations (cached) → labelled pairs → files.

    build_organism("runs/organism")   # train.jsonl, heldout_pairs.jsonl, heldout_prompts.jsonl,
                                      # truth.json, build.json

The train and held-out pairs are two separate `generate` calls with separate caches, so adding
or dropping held-out pairs never invalidates the (larger) train cache. A different planting
config over the same prompts reuses both caches: which responses are generated depends only on
each prompt's trait role, never on the strength (see `plant.assign`).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from anatomist.fileio import atomic_write_text
from anatomist.models.loading import DEFAULT_MODEL
from anatomist.organism.plant import (DEFAULT_CONFIG, HELDOUT_PAIRS, PlantConfig, assign, label, requests_for, truth,
                                      write_dataset)
from anatomist.organism.prompts import TOPIC_NAMES, build_prompts
from anatomist.spec_decode.batched import GenSettings, generate

log = logging.getLogger(__name__)


def build_organism(out: str | Path, *, per_topic: int = 236, heldout_fraction: float = 0.25, seed: int = 0,
                   config: PlantConfig = DEFAULT_CONFIG, model: str = DEFAULT_MODEL, loaded=None,
                   max_new_tokens: int = 96, batch_size: int = 64, temperature: float = 0.7,
                   topics: tuple[str, ...] = TOPIC_NAMES, cache_dir: str | Path | None = None,
                   heldout_pairs: bool = True, progress: bool = True, workers: int | None = None,
                   device: str = "cpu") -> dict:
    """Generate (or reuse cached) responses and write the planted dataset to `out`.

    loaded: an already loaded (model, tokenizer, ...) to use instead of loading `model`.
    cache_dir: train generations go to cache_dir/"train", held-out ones to cache_dir/"heldout"
        (default: the content-addressed cache of `generate`).
    heldout_pairs: also generate pairs for the held-out prompts (heldout_pairs.jsonl).
    workers: sampling processes (None: `generate`'s choice; the output is the same for any number).
    device: where `model` is loaded when `loaded` is not given ("cuda": one process samples).
    Returns the truth dict (also written to out/truth.json)."""
    t0 = time.time()
    prompts = build_prompts(per_topic, heldout_fraction=heldout_fraction, seed=seed, topics=topics)
    assignments = assign(prompts, config)
    requests = requests_for(assignments, max_new_tokens)
    if loaded is None:
        from anatomist.models import load
        loaded = load(model, device=device)
    settings = GenSettings(model=model, temperature=temperature, batch_size=batch_size, seed=seed)
    sub = (lambda name: Path(cache_dir) / name) if cache_dir is not None else (lambda name: None)
    results = generate(loaded[0], loaded[1], requests, settings, cache_dir=sub("train"), progress=progress,
                       workers=workers)
    rows, dropped = label(assignments, results, seed)
    t_train = time.time() - t0
    truth_data = truth(config, rows, topics, dropped)

    held_rows, n_held = None, 0
    if heldout_pairs:
        held_assign = assign(prompts, config, split="heldout")
        held_requests = requests_for(held_assign, max_new_tokens)
        n_held = len(held_requests)
        held_results = generate(loaded[0], loaded[1], held_requests, settings, cache_dir=sub("heldout"),
                                progress=progress, workers=workers)
        held_rows, held_dropped = label(held_assign, held_results, seed, split="heldout")
        truth_data["heldout"] = {"file": HELDOUT_PAIRS, "n_pairs": len(held_rows), "dropped_identical": held_dropped,
                                 "cells": truth(config, held_rows, topics, held_dropped, measure=False)["cells"]}
    write_dataset(out, rows, [p for p in prompts if p.split == "heldout"], truth_data, held_rows)
    atomic_write_text(Path(out) / "build.json", json.dumps({
        "model": model, "per_topic": per_topic, "heldout_fraction": heldout_fraction, "seed": seed,
        "max_new_tokens": max_new_tokens, "temperature": temperature, "batch_size": batch_size,
        "n_generations": len(requests), "n_pairs": len(rows), "n_heldout_generations": n_held,
        "n_heldout_pairs": len(held_rows or []), "seconds_train": round(t_train, 1),
        "seconds": round(time.time() - t0, 1)}, indent=1))
    log.info("organism: %d pairs (%d dropped as identical), %d held-out pairs → %s",
             len(rows), dropped, len(held_rows or []), out)
    return truth_data


def relabel_organism(organism: str | Path, out: str | Path, config: PlantConfig, *, tokenizer,
                     cache_dir: str | Path | None = None) -> dict:
    """The organism in `organism` (its build.json) planted under another `config`, from cached
    generations only (train pairs; no held-out pairs). Raises if a generation is not cached,
    instead of sampling thousands of them."""
    from anatomist.errors import AnatomistError

    b = json.loads((Path(organism) / "build.json").read_text())
    truth_old = json.loads((Path(organism) / "truth.json").read_text())
    topics = tuple(truth_old["topics"])
    prompts = build_prompts(b["per_topic"], heldout_fraction=b["heldout_fraction"], seed=b["seed"], topics=topics)
    assignments = assign(prompts, config)
    requests = requests_for(assignments, b["max_new_tokens"])
    settings = GenSettings(model=b["model"], temperature=b["temperature"], batch_size=b["batch_size"], seed=b["seed"])
    cache = Path(cache_dir) / "train" if cache_dir is not None else None
    results = generate(None, tokenizer, requests, settings, cache_dir=cache, progress=False, max_batches=0)
    if len(results) != len(requests):
        raise AnatomistError(f"{organism}: {len(requests) - len(results)} of {len(requests)} generations are not "
                             "cached for this config (its trait roles differ); build it with build_organism")
    rows, dropped = label(assignments, results, b["seed"])
    truth_data = truth(config, rows, topics, dropped)
    write_dataset(out, rows, [p for p in prompts if p.split == "heldout"], truth_data)
    atomic_write_text(Path(out) / "build.json", json.dumps({**b, "relabelled_from": str(organism),
                                                            "n_pairs": len(rows), "n_heldout_pairs": 0}, indent=1))
    return truth_data
