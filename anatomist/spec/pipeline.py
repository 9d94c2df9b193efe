"""Cached steps shared by the CLI and the benchmarks: self-samples → trunk states → trained heads.

Everything lands under `$ANATOMIST_CACHE/spec/` (default `~/.cache/anatomist/spec/`), keyed by
the settings that produced it, so re-running a benchmark never regenerates or retrains.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch

from anatomist.fileio import atomic_path
from anatomist.models.loading import cache_root
from anatomist.spec.head import CONFIG_NAME, MTPHead, load_head
from anatomist.spec.prompts import chat_prompts
from anatomist.spec.train import Samples, TrainConfig, self_samples, target_stats, train_head, trunk_states

log = logging.getLogger(__name__)

__all__ = ["spec_cache", "cached_samples", "cached_states", "cached_head"]


def spec_cache() -> Path:
    return cache_root() / "spec"


def _key(**kw) -> str:
    return hashlib.sha256(json.dumps(kw, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _atomic_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def cached_samples(model, tokenizer, *, model_name: str, n_prompts: int = 192, temperature: float = 1.0,
                   max_new_tokens: int = 96, batch_size: int = 32, seed: int = 0) -> Samples:
    """The model's own responses to the first n training prompts (generated once, then cached)."""
    key = _key(model=model_name, n=n_prompts, t=temperature, new=max_new_tokens, seed=seed)
    path = spec_cache() / "samples" / f"{key}.pt"
    if path.is_file():
        d = torch.load(path, weights_only=True)
        return Samples(d["sequences"], d["prompt_lens"])
    prompts = chat_prompts(tokenizer, "train", n_prompts)
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task(f"self-samples T={temperature}", total=len(prompts))
        s = self_samples(model, prompts, temperature=temperature, max_new_tokens=max_new_tokens,
                         batch_size=batch_size, seed=seed, eos_token_id=tokenizer.eos_token_id,
                         progress=lambda k: bar.update(task, advance=k))
    _atomic_save({"sequences": s.sequences, "prompt_lens": s.prompt_lens}, path)
    return s


def cached_states(model, samples: Samples, *, model_name: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Trunk hidden states and (lse, entropy) target statistics per sequence, cached."""
    key = _key(model=model_name, seqs=hashlib.sha256(json.dumps(samples.sequences).encode()).hexdigest(), v=2)
    path = spec_cache() / "states" / f"{key}.pt"
    if path.is_file():
        d = torch.load(path, weights_only=True)
        return d["states"], d["stats"]
    states = trunk_states(model, samples.sequences)
    stats = target_stats(model, states)
    _atomic_save({"states": states, "stats": stats}, path)
    return states, stats


def cached_head(model, samples: Samples, cfg: TrainConfig, *, model_name: str, eos_token_id: int | None,
                states=None, stats=None, temperature: float = 1.0) -> tuple[MTPHead, Path]:
    """Train a head once per (model, data, config); later calls load it from the cache."""
    from dataclasses import asdict

    key = _key(model=model_name, data=hashlib.sha256(json.dumps(samples.sequences).encode()).hexdigest(),
               cfg=asdict(cfg))
    folder = spec_cache() / "heads" / f"{cfg.loss}-{key}"
    if (folder / CONFIG_NAME).is_file():
        return load_head(folder, model), folder
    head = train_head(model, samples, cfg, folder, states=states, stats=stats, base_model=model_name,
                      eos_token_id=eos_token_id, extra={"data_temperature": temperature})
    return head, folder
