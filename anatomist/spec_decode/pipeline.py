"""Cached steps shared by the CLI and the benchmarks: self-samples → trunk states → trained heads.

Everything lands under `$ANATOMIST_CACHE/spec/` (default `~/.cache/anatomist/spec/`), keyed by
the settings that produced it and by the model's weights (`model_fingerprint`; the name alone
would hand a changed model at the same path the old model's samples and heads), so re-running a
benchmark never regenerates or retrains.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch

from anatomist.errors import AnatomistError
from anatomist.fileio import atomic_path
from anatomist.models.fingerprint import model_fingerprint
from anatomist.models.loading import cache_root
from anatomist.spec_decode.head import CONFIG_NAME, MTPHead
from anatomist.spec_decode.prompts import PROMPT_SETS
from anatomist.spec_decode.heads import load_any_head
from anatomist.spec_decode.train import Samples, TrainConfig, config_key, self_samples, target_stats, train_head, trunk_states

log = logging.getLogger(__name__)

__all__ = ["spec_cache", "cached_samples", "cached_states", "cached_head", "cached_heads", "e2e_tv_head"]


def spec_cache() -> Path:
    return cache_root() / "spec"


def _key(**kw) -> str:
    return hashlib.sha256(json.dumps(kw, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _atomic_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def cached_samples(model, tokenizer, *, model_name: str, n_prompts: int = 192, temperature: float = 1.0,
                   max_new_tokens: int = 96, batch_size: int = 32, seed: int = 0,
                   samples_per_prompt: int = 1, prompt_set: str = "chat") -> Samples:
    """The model's own responses to the first n prompts of a prompt set (`PROMPT_SETS`: "chat"
    training prompts, or "grpo" task problems), `samples_per_prompt` each (independent draws),
    generated once, then cached."""
    if prompt_set not in PROMPT_SETS:
        raise AnatomistError(f"prompt set must be one of {', '.join(PROMPT_SETS)}, got {prompt_set!r}")
    extra = {} if samples_per_prompt == 1 else {"spp": samples_per_prompt}  # old cache keys stay valid
    extra |= {} if prompt_set == "chat" else {"prompts": prompt_set}
    key = _key(model=model_name, weights=model_fingerprint(model), n=n_prompts, t=temperature, new=max_new_tokens,
               seed=seed, **extra)
    path = spec_cache() / "samples" / f"{key}.pt"
    if path.is_file():
        d = torch.load(path, weights_only=True)
        return Samples(d["sequences"], d["prompt_lens"])
    prompts = PROMPT_SETS[prompt_set](tokenizer, n_prompts) * samples_per_prompt
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task(f"self-samples ({prompt_set}) T={temperature}", total=len(prompts))
        s = self_samples(model, prompts, temperature=temperature, max_new_tokens=max_new_tokens,
                         batch_size=batch_size, seed=seed, eos_token_id=tokenizer.eos_token_id,
                         progress=lambda k: bar.update(task, advance=k))
    _atomic_save({"sequences": s.sequences, "prompt_lens": s.prompt_lens}, path)
    return s


def cached_states(model, samples: Samples, *, model_name: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Trunk hidden states and (lse, entropy) target statistics per sequence, cached."""
    key = _key(model=model_name, weights=model_fingerprint(model),
               seqs=hashlib.sha256(json.dumps(samples.sequences).encode()).hexdigest(), v=2)
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
    key = _key(model=model_name, weights=model_fingerprint(model),
               data=hashlib.sha256(json.dumps(samples.sequences).encode()).hexdigest(), cfg=config_key(cfg))
    folder = spec_cache() / "heads" / f"{cfg.loss}-{key}"
    if (folder / CONFIG_NAME).is_file():
        return load_any_head(folder, model), folder
    if cfg.head != "mtp":  # cached states hold h only; other kinds pack extra trunk layers
        states = stats = None
    with torch.enable_grad():  # callers often sample under no_grad; training the head needs grads
        head = train_head(model, samples, cfg, folder, states=states, stats=stats, base_model=model_name,
                          eos_token_id=eos_token_id, extra={"data_temperature": temperature})
    return head, folder


def e2e_tv_head(lm, *, model_name: str, prompt_set: str = "chat", n_prompts: int = 192, steps: int = 200,
                max_new_tokens: int = 96) -> tuple[MTPHead, Path]:
    """The cached e2e-TV head (CPU recipe: 200 steps × 8, 8192-token draft vocabulary) trained on
    the model's own T=1 answers to a prompt set, and its folder; what `anatomist grpo` and the GRPO
    benchmark draft with. The "grpo" set matches the RL prompts (a head trained on chat replies
    drafts arithmetic poorly)."""
    return cached_heads(lm, ["e2e_tv"], model_name=model_name, steps=steps, n_prompts=n_prompts,
                        max_new_tokens=max_new_tokens, prompt_set=prompt_set)["e2e_tv"]


def cached_heads(lm, losses, *, model_name: str, steps: int = 200, batch_size: int = 8, lr: float = 1e-3,
                 draft_vocab: int = 8192, n_prompts: int = 192, samples_per_prompt: int = 1,
                 max_new_tokens: int = 96, gen_batch: int = 32, prompt_set: str = "chat"
                 ) -> dict[str, tuple[MTPHead, Path]]:
    """One cached (head, folder) per loss, all trained on the same self-samples of a prompt set;
    prints each head's data, training time and train α."""
    import time

    samples = cached_samples(lm.model, lm.tokenizer, model_name=model_name, n_prompts=n_prompts,
                             samples_per_prompt=samples_per_prompt, max_new_tokens=max_new_tokens,
                             batch_size=gen_batch, prompt_set=prompt_set)
    states, stats = cached_states(lm.model, samples, model_name=model_name)
    n_tok = sum(len(s) - p for s, p in zip(samples.sequences, samples.prompt_lens))
    heads = {}
    for loss in losses:
        cfg = TrainConfig(loss=loss, gamma=3, steps=steps, batch_size=batch_size, lr=lr, draft_vocab=draft_vocab)
        t = time.perf_counter()
        head, folder = cached_head(lm.model, samples, cfg, model_name=model_name,
                                   eos_token_id=lm.tokenizer.eos_token_id, states=states, stats=stats)
        alphas = [round(head.config.extra.get(f"mtp/alpha_{i}", float("nan")), 3) for i in (1, 2, 3)]
        print(f"{loss:7s} head {folder}: {len(samples.sequences)} {prompt_set} samples, {n_tok} response tokens, "
              f"{steps} steps × {batch_size} ({time.perf_counter() - t:.0f} s to train or load); "
              f"train α1..3 = {alphas}")
        heads[loss] = head, folder
    return heads
