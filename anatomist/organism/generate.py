"""Batched sampling from a chat model with a resumable on-disk cache.

    results = generate(model, tokenizer, requests, GenSettings(model="smollm2-135m-instruct"))

Each `GenRequest` is a chat context (with the trait's system prompt, or none for a plain
generation), an optional forced response prefix and a token budget. Requests are grouped by
budget, sorted by prompt length (less padding) and cut into batches of `batch_size`; batch b
is sampled under seed hash(seed, b), so a run's output depends only on the settings and the
request list — not on how often it was interrupted.

Cache: `$ANATOMIST_CACHE/organism/<hash of settings + requests>/generations.jsonl`, one line
per request, each batch appended in one write and fsynced. On restart the file is cut back to
its last complete batch and generation continues from there, so a killed run resumes to
exactly what an uninterrupted run writes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch

from anatomist.errors import AnatomistError
from anatomist.fileio import atomic_write_text
from anatomist.models.chat import apply_chat_template
from anatomist.models.loading import cache_root
from anatomist.progress import progress_bar

log = logging.getLogger(__name__)

FILE = "generations.jsonl"


@dataclass(frozen=True)
class GenRequest:
    key: str                    # unique within a run; results are returned by key
    messages: tuple[dict, ...]  # chat context, system prompt included when there is one
    prefix: str = ""            # forced opening of the response; part of the returned text
    max_new_tokens: int = 96


@dataclass(frozen=True)
class GenSettings:
    model: str                  # name recorded in the cache key (the caller loads the model)
    temperature: float = 0.7
    top_p: float = 1.0
    batch_size: int = 32
    seed: int = 0

    def __post_init__(self):
        if not self.temperature > 0:
            raise AnatomistError(f"temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise AnatomistError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.batch_size < 1:
            raise AnatomistError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclass(frozen=True)
class Generation:
    key: str
    text: str          # prefix + sampled continuation, special tokens removed
    n_tokens: int      # sampled tokens (EOS included when reached)
    finished: bool     # EOS reached within the budget (False = cut at max_new_tokens)
    batch: int


def run_hash(settings: GenSettings, requests: Sequence[GenRequest]) -> str:
    h = hashlib.sha256(json.dumps(asdict(settings), sort_keys=True).encode())
    for r in requests:
        h.update(json.dumps([r.key, list(r.messages), r.prefix, r.max_new_tokens], sort_keys=True).encode())
    return h.hexdigest()[:16]


def default_cache_dir(settings: GenSettings, requests: Sequence[GenRequest]) -> Path:
    return cache_root() / "organism" / run_hash(settings, requests)


def plan_batches(tokenizer, requests: Sequence[GenRequest], batch_size: int) -> list[list[tuple[GenRequest, list[int]]]]:
    """Batches of (request, prompt ids incl. prefix): same budget within a batch, similar lengths."""
    encoded = [(r, apply_chat_template(tokenizer, r.messages, add_generation_prompt=True)
                + (tokenizer(r.prefix, add_special_tokens=False)["input_ids"] if r.prefix else []))
               for r in requests]
    encoded.sort(key=lambda e: (e[0].max_new_tokens, len(e[1]), e[0].key))
    batches, current = [], []
    for item in encoded:
        if current and (len(current) == batch_size or current[0][0].max_new_tokens != item[0].max_new_tokens):
            batches.append(current)
            current = []
        current.append(item)
    if current:
        batches.append(current)
    return batches


def _batch_seed(seed: int, batch: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{batch}".encode()).digest()[:6], "little")


@torch.no_grad()
def sample_batch(model, tokenizer, batch: list[tuple[GenRequest, list[int]]], settings: GenSettings,
                 index: int) -> list[Generation]:
    """Left-pad the prompts to [B, T], sample, and decode each row's continuation."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = tokenizer.eos_token_id
    width = max(len(ids) for _, ids in batch)
    input_ids = torch.full((len(batch), width), pad, dtype=torch.long)       # [B, T]
    mask = torch.zeros((len(batch), width), dtype=torch.long)                # [B, T]
    for i, (_, ids) in enumerate(batch):
        input_ids[i, width - len(ids):] = torch.tensor(ids)
        mask[i, width - len(ids):] = 1
    budget = batch[0][0].max_new_tokens
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_batch_seed(settings.seed, index))
        out = model.generate(input_ids=input_ids.to(device), attention_mask=mask.to(device), do_sample=True,
                             temperature=settings.temperature, top_p=settings.top_p, top_k=0,
                             max_new_tokens=budget, eos_token_id=eos, pad_token_id=pad)
    new = out[:, width:].cpu()                                               # [B, ≤ budget]
    results = []
    for i, (request, ids) in enumerate(batch):
        row = new[i].tolist()
        finished = eos in row
        row = row[:row.index(eos) + 1] if finished else row
        prefix_ids = ids[len(ids) - len(tokenizer(request.prefix, add_special_tokens=False)["input_ids"]):] \
            if request.prefix else []
        text = tokenizer.decode(prefix_ids + row, skip_special_tokens=True).strip()
        results.append(Generation(request.key, text, len(row), finished, index))
    return results


def _load_done(path: Path, batches: list[list]) -> dict[str, Generation]:
    """Complete batches from the cache file (in order); cut the file after the last one."""
    done: dict[str, Generation] = {}
    if not path.exists():
        return done
    keep = 0
    with path.open("rb") as f:
        data = f.read()
    offset, b, pending = 0, 0, []
    for line in data.split(b"\n")[:-1]:  # a last piece without "\n" is an unfinished write
        offset += len(line) + 1
        try:
            pending.append(Generation(**json.loads(line)))
        except (ValueError, TypeError):
            break
        if b < len(batches) and len(pending) == len(batches[b]):
            if [g.key for g in pending] != [r.key for r, _ in batches[b]]:
                break
            done.update((g.key, g) for g in pending)
            keep, b, pending = offset, b + 1, []
    if keep != len(data):
        log.warning("%s: dropping an incomplete batch (%d bytes) before resuming", path, len(data) - keep)
        with path.open("r+b") as f:
            f.truncate(keep)
    return done


def generate(model, tokenizer, requests: Sequence[GenRequest], settings: GenSettings, *,
             cache_dir: str | Path | None = None, progress: bool = True,
             max_batches: int | None = None) -> dict[str, Generation]:
    """Sample every request (resuming from the cache); returns {key: Generation}.

    max_batches: stop after sampling this many new batches (for tests of resume); the result
    then holds only the finished requests."""
    keys = [r.key for r in requests]
    if len(set(keys)) != len(keys):
        raise AnatomistError("generation requests must have unique keys")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir(settings, requests)
    cache.mkdir(parents=True, exist_ok=True)
    atomic_write_text(cache / "settings.json", json.dumps(
        {"settings": asdict(settings), "n_requests": len(requests), "hash": run_hash(settings, requests)}, indent=1))
    batches = plan_batches(tokenizer, requests, settings.batch_size)
    path = cache / FILE
    done = _load_done(path, batches)
    first = sum(1 for batch in batches if batch[0][0].key in done)
    if first:
        log.info("resuming %s: %d of %d batches cached", path, first, len(batches))
    new = 0
    with progress_bar("generate", total=len(batches), completed=first, enabled=progress) as bar, \
            path.open("ab") as f:
        for index in range(first, len(batches)):
            if max_batches is not None and new >= max_batches:
                break
            results = sample_batch(model, tokenizer, batches[index], settings, index)
            f.write("".join(json.dumps(asdict(g), ensure_ascii=False) + "\n" for g in results).encode())
            f.flush()
            os.fsync(f.fileno())
            done.update((g.key, g) for g in results)
            new += 1
            bar.advance()
    return done
