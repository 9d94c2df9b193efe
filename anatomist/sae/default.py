"""The default SAE recipe: trained once from the default model's own activations, then cached.

Data: the demo's two real preference files in ../shared/data (HH-RLHF harmless-base dev and the
LLaMA-Factory DPO demo). Each file's last `heldout_frac` of pairs is held out for evaluation;
training uses the first `train_pairs` of the rest. Both responses of a pair are sequences, with
the prompt as chat context, and **all** their tokens are kept (`keep="all"`): prompt tokens
are the same kind of chat text, cost nothing extra (the forward runs over them anyway as
context) and double the training tokens per second of capture, which is the bottleneck here.
Position-0 tokens (the attention sink) are excluded in training (see `anatomist.sae.data`).

Measured (benchmarks/sae_quality.py, SmolLM2-135M-Instruct, 2026-11-25): held-out FVU 0.135,
L0 33.9, dead 1.6% (0.8% over the training tokens), CE loss recovered 99.6%. Cost: capture of
≈ 198K tokens (≈ 3.3 min at FACTS.md's 1,000 tokens/s; 10× slower when the host is busy) plus
2M training tokens (976 steps of 2,048) in 4.8 min at 7,040 tokens/s (load ≈ 3).

Cache layout under `$ANATOMIST_CACHE/sae/<model>/`:
    acts-<capture hash>/   the training activations (an ActivationStore; resumable capture)
    <recipe hash>/         the SAE (SAELens format) + training.json; what `default_sae` returns
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from anatomist.capture import CaptureItem, capture, items_from_pairs
from anatomist.data.shared import shared_data_dir
from anatomist.fileio import atomic_write_text
from anatomist.models.loading import DEFAULT_MODEL, cache_root
from anatomist.sae.config import TrainConfig, stable_hash
from anatomist.sae.io import CFG_FILE, WEIGHTS_FILE
from anatomist.sae.train import SUMMARY, sae_config, train_sae

log = logging.getLogger(__name__)

DATA_FILES = ("hh-rlhf-harmless-base-test-dev.jsonl.gz", "llamafactory-dpo-en-demo.json")


@dataclass(frozen=True)
class Recipe:
    layer: int = 15
    width: str = "8x"
    k: int = 32
    architecture: str = "batchtopk"
    files: tuple[str, ...] = DATA_FILES
    train_pairs: tuple[int, ...] = (450, 110)   # per file, from the start (≈ 200K tokens)
    heldout_frac: float = 0.1                    # per file, from the end
    max_length: int = 256
    keep: str = "all"
    batch_size: int = 8
    # ≈ 10 passes over the ≈ 200K captured tokens; lr / init scale picked on a 60-step sweep
    # (lr 3e-3 > 1e-3; W_enc = 0.3·W_decᵀ starts better than 1.0).
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        tokens=2_000_000, batch_size=2048, lr=3e-3, warmup_steps=30, enc_init_scale=0.3,
        dead_tokens=200_000, buffer_tokens=1_000_000))

    def capture_key(self, model: str) -> str:
        return stable_hash([model, self.layer, self.files, self.train_pairs, self.heldout_frac, self.max_length,
                            self.keep])

    def key(self, model: str) -> str:
        return stable_hash([self.capture_key(model), asdict(self)])


DEFAULT_RECIPE = Recipe()


def recipe_items(recipe: Recipe, split: str, data_dir: str | Path | None = None) -> list[CaptureItem]:
    """The recipe's sequences: split "train" (first train_pairs per file) or "heldout" (last ones)."""
    from anatomist.data import load_pairs

    assert split in ("train", "heldout"), split
    root = Path(data_dir) if data_dir is not None else shared_data_dir()
    items = []
    for name, n_train in zip(recipe.files, recipe.train_pairs):
        pairs = list(load_pairs(root / name, on_bad_row="skip"))
        n_held = max(1, int(len(pairs) * recipe.heldout_frac))
        pool, held = pairs[:-n_held], pairs[-n_held:]
        items += items_from_pairs(pool[:n_train] if split == "train" else held)
    return items


def model_dir_name(model_name: str) -> str:
    """The cache sub-folder for `model_name`: aliases and HF ids ("org/name") as they are; anything
    else (an absolute or relative path, "..") as a slug plus a hash, so that no model name can
    point the cache outside itself (an absolute path joined to a folder replaces it)."""
    parts = Path(model_name).parts
    if 0 < len(parts) <= 2 and all(re.fullmatch(r"[A-Za-z0-9][\w.-]*", p) for p in parts):
        return model_name
    slug = re.sub(r"[^\w.-]+", "_", model_name).strip("._")[-48:] or "model"
    return f"{slug}-{hashlib.sha256(model_name.encode()).hexdigest()[:8]}"


def default_sae(model_name: str = DEFAULT_MODEL, *, recipe: Recipe = DEFAULT_RECIPE, data_dir: str | Path | None = None,
                progress: bool = True, model=None) -> Path:
    """Path of the default SAE for `model_name`: trained on first use (capture + train), then cached."""
    root = cache_root() / "sae" / model_dir_name(model_name)
    out = root / recipe.key(model_name)
    if (out / CFG_FILE).is_file() and (out / WEIGHTS_FILE).is_file() and (out / SUMMARY).is_file():
        return out
    from anatomist.models import load

    t0 = time.perf_counter()
    lm = model or load(model_name)
    items = recipe_items(recipe, "train", data_dir)
    acts = root / f"acts-{recipe.capture_key(model_name)}"
    log.warning("default SAE: capturing layer %d over %d sequences into %s (once)", recipe.layer, len(items), acts)
    store = capture(lm.model, lm.tokenizer, items, acts, recipe.layer, model_name=model_name,
                    batch_size=recipe.batch_size, max_length=recipe.max_length, keep=recipe.keep,
                    shard_tokens=1 << 15, progress=progress)
    t1 = time.perf_counter()
    cfg = sae_config(store.d_model, width=recipe.width, k=recipe.k, architecture=recipe.architecture,
                     model=model_name, layer=recipe.layer)
    train_sae(store, cfg, out, train=recipe.train, progress=progress)
    t2 = time.perf_counter()
    timing = {"capture_s": t1 - t0, "train_s": t2 - t1, "total_s": t2 - t0, "capture_tokens": store.n_tokens,
              "note": "this call's wall time; a resumed run counts only the resumed part"}
    atomic_write_text(out / "recipe.json", json.dumps({"model": model_name, "recipe": asdict(recipe), **timing}, indent=2))
    log.warning("default SAE ready in %s (capture %.0f s, training %.0f s)", out, t1 - t0, t2 - t1)
    return out
