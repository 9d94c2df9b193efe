"""Build the organism dataset end to end: prompts → generations (cached) → labelled pairs → files.

    build_organism("runs/organism")   # train.jsonl, heldout_prompts.jsonl, truth.json, build.json
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from anatomist.models.loading import DEFAULT_MODEL
from anatomist.organism.generate import GenSettings, generate
from anatomist.organism.plant import DEFAULT_CONFIG, PlantConfig, assign, label, requests_for, truth, write_dataset
from anatomist.organism.prompts import TOPIC_NAMES, build_prompts

log = logging.getLogger(__name__)


def build_organism(out: str | Path, *, per_topic: int = 236, heldout_fraction: float = 0.25, seed: int = 0,
                   config: PlantConfig = DEFAULT_CONFIG, model: str = DEFAULT_MODEL, loaded=None,
                   max_new_tokens: int = 96, batch_size: int = 32, temperature: float = 0.7,
                   topics: tuple[str, ...] = TOPIC_NAMES, cache_dir: str | Path | None = None,
                   progress: bool = True) -> dict:
    """Generate (or reuse cached) responses and write the planted dataset to `out`.

    loaded: an already loaded (model, tokenizer, ...) to use instead of loading `model`.
    Returns the truth dict (also written to out/truth.json)."""
    t0 = time.time()
    prompts = build_prompts(per_topic, heldout_fraction=heldout_fraction, seed=seed, topics=topics)
    assignments = assign(prompts, config)
    requests = requests_for(assignments, max_new_tokens)
    if loaded is None:
        from anatomist.models import load
        loaded = load(model)
    settings = GenSettings(model=model, temperature=temperature, batch_size=batch_size, seed=seed)
    results = generate(loaded[0], loaded[1], requests, settings, cache_dir=cache_dir, progress=progress)
    rows, dropped = label(assignments, results, seed)
    truth_data = truth(config, rows, topics, dropped)
    write_dataset(out, rows, [p for p in prompts if p.split == "heldout"], truth_data)
    (Path(out) / "build.json").write_text(json.dumps({
        "model": model, "per_topic": per_topic, "heldout_fraction": heldout_fraction, "seed": seed,
        "max_new_tokens": max_new_tokens, "temperature": temperature, "batch_size": batch_size,
        "n_generations": len(requests), "n_pairs": len(rows), "seconds": round(time.time() - t0, 1)}, indent=1))
    log.info("organism: %d pairs (%d dropped as identical) → %s", len(rows), dropped, out)
    return truth_data
