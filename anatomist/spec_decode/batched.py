"""Batched sampling from a chat model with a resumable on-disk cache (what the organism builder and
the behaviour / safety evaluations sample with).

    results = generate(model, tokenizer, requests, GenSettings(model=DEFAULT_MODEL))

Each `GenRequest` is a chat context (with the trait's system prompt, or none for a plain
generation), an optional forced response prefix and a token budget. Requests are grouped by
budget, sorted by prompt length (less padding) and cut into batches of `batch_size`; batch b
is sampled under seed hash(seed, b), so a run's output depends only on the settings and the
request list — not on how often it was interrupted, nor on how many worker processes sampled it.

Sampling is the product's own KV-cached loop (`anatomist.spec_decode.generate` without a drafter, the
loop RL rollouts use): 1.22× HF `generate`'s rate at batch 64 on a 2-core CPU, whose
`torch.multinomial` draws one exponential per vocabulary entry. `workers=2` samples batches in
two processes (one thread each) and writes them in order: 1.46× HF in all, since much of a decode
step is single-threaded (`benchmarks/organism_build.py` measures all three).

Cache: `$ANATOMIST_CACHE/organism/<hash of settings + requests>/generations.jsonl` (the folder
keeps the name it had when this module lived in `anatomist.organism`, so existing caches stay
valid), one line per request, each batch appended in one write and fsynced. On restart the file
is cut back to its last complete batch and generation continues from there, so a killed run
resumes to exactly what an uninterrupted run writes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch

from anatomist.errors import AnatomistError
from anatomist.fileio import atomic_write_text
from anatomist.models.chat import apply_chat_template
from anatomist.models.loading import cache_root
from anatomist.progress import progress_bar
from anatomist.spec_decode.generate import generate as sample

log = logging.getLogger(__name__)

FILE = "generations.jsonl"
CACHE_FOLDER = "organism"   # under $ANATOMIST_CACHE; the module's old home, kept so old caches stay valid
SAMPLER = "anatomist.spec_decode.generate/1"   # in the cache key: another sampler draws other samples


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
    # the token ids themselves, so log-probs can be taken of exactly what was sampled (re-tokenised
    # text can differ); empty in caches written before they were kept
    prompt_ids: tuple[int, ...] = ()   # chat-templated prompt + forced prefix
    token_ids: tuple[int, ...] = ()    # the sampled continuation (EOS included when reached)

    @classmethod
    def from_json(cls, d: dict) -> "Generation":
        return cls(**{**d, "prompt_ids": tuple(d.get("prompt_ids", ())), "token_ids": tuple(d.get("token_ids", ()))})


def run_hash(settings: GenSettings, requests: Sequence[GenRequest]) -> str:
    h = hashlib.sha256(json.dumps({**asdict(settings), "sampler": SAMPLER}, sort_keys=True).encode())
    for r in requests:
        h.update(json.dumps([r.key, list(r.messages), r.prefix, r.max_new_tokens], sort_keys=True).encode())
    return h.hexdigest()[:16]


def default_cache_dir(settings: GenSettings, requests: Sequence[GenRequest]) -> Path:
    return cache_root() / CACHE_FOLDER / run_hash(settings, requests)


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
def sample_tokens(model, prompts: list[list[int]], budget: int, settings: GenSettings, index: int,
                  eos: int) -> list[list[int]]:
    """Sampled continuations of batch `index` (EOS included where reached), under the batch's seed."""
    g = torch.Generator().manual_seed(_batch_seed(settings.seed, index))
    return sample(model, prompts, temperature=settings.temperature, top_p=settings.top_p, max_new_tokens=budget,
                  eos_token_id=eos, generator=g).tokens


def _decode(tokenizer, batch: list[tuple[GenRequest, list[int]]], rows: list[list[int]],
            index: int) -> list[Generation]:
    """Generations of a sampled batch: text = forced prefix + continuation, special tokens removed."""
    eos = tokenizer.eos_token_id
    results = []
    for (request, ids), row in zip(batch, rows):
        finished = eos in row
        row = row[:row.index(eos) + 1] if finished else row
        prefix_ids = ids[len(ids) - len(tokenizer(request.prefix, add_special_tokens=False)["input_ids"]):] \
            if request.prefix else []
        text = tokenizer.decode(prefix_ids + row, skip_special_tokens=True).strip()
        results.append(Generation(request.key, text, len(row), finished, index, tuple(ids), tuple(row)))
    return results


def _worker(model, tasks, results, parent: int, threads: int) -> None:
    """A sampling process: (index, sample_tokens args) in, (index, rows or error text) out."""
    torch.set_num_threads(threads)
    while True:
        try:
            task = tasks.get(timeout=1.0)
        except queue.Empty:
            if os.getppid() != parent:  # the parent was killed: nobody will read what we sample
                return
            continue
        if task is None:
            return
        index, args = task
        try:
            results.put((index, sample_tokens(model, *args)))
        except Exception as e:  # the parent raises it, naming the batch
            results.put((index, f"{type(e).__name__}: {e}"))


def _sampled_in_order(model, tokenizer, batches, todo: list[int], settings: GenSettings, workers: int):
    """Yield (index, rows) for each batch in `todo`, in order; sampled in `workers` processes."""
    def args(i):
        return [ids for _, ids in batches[i]], batches[i][0][0].max_new_tokens, settings, i, tokenizer.eos_token_id

    if workers <= 1:
        for i in todo:
            yield i, sample_tokens(model, *args(i))
        return
    ctx = torch.multiprocessing.get_context("spawn")  # not fork: the parent's OpenMP pool does not survive it
    tasks, results = ctx.Queue(), ctx.Queue()
    threads = max(1, (os.cpu_count() or 1) // workers)
    procs = [ctx.Process(target=_worker, args=(model, tasks, results, os.getpid(), threads), daemon=True)
             for _ in range(workers)]
    for p in procs:
        p.start()
    try:
        for i in todo:
            tasks.put((i, args(i)))
        for _ in procs:
            tasks.put(None)
        ready: dict[int, list] = {}
        for i in todo:
            while i not in ready:
                try:
                    j, rows = results.get(timeout=5.0)
                except queue.Empty:
                    if not all(p.is_alive() or p.exitcode == 0 for p in procs):
                        raise AnatomistError(f"a sampling worker died (exit codes {[p.exitcode for p in procs]})")
                    continue
                if isinstance(rows, str):
                    raise AnatomistError(f"sampling batch {j} failed in a worker: {rows}")
                ready[j] = rows
            yield i, ready.pop(i)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
            p.join()


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
            pending.append(Generation.from_json(json.loads(line)))
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
             max_batches: int | None = None, workers: int | None = None) -> dict[str, Generation]:
    """Sample every request (resuming from the cache); returns {key: Generation}.

    max_batches: stop after sampling this many new batches (for tests of resume); the result
    then holds only the finished requests.
    workers: sampling processes (CPU models only; the output is the same for any number). None:
        2 on a CPU with ≥ 2 cores when ≥ 8 batches are left (starting one costs ~4 s)."""
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
    todo = list(range(first, len(batches)))[:max_batches]
    if not todo:
        return done
    if next(model.parameters()).device.type != "cpu":
        workers = 1
    elif workers is None:
        workers = 2 if (os.cpu_count() or 1) >= 2 and len(todo) >= 8 else 1
    with progress_bar("generate", total=len(batches), completed=first, enabled=progress) as bar, \
            path.open("ab") as f:
        for index, rows in _sampled_in_order(model, tokenizer, batches, todo, settings, workers):
            results = _decode(tokenizer, batches[index], rows, index)
            f.write("".join(json.dumps(asdict(g), ensure_ascii=False) + "\n" for g in results).encode())
            f.flush()
            os.fsync(f.fileno())
            done.update((g.key, g) for g in results)
            bar.advance()
    return done
