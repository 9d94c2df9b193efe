"""Capture residual activations of many (prompt, response) sequences into an ActivationStore.

Sequences are processed in input order, `batch_size` at a time, right-padded; only real tokens
are stored (all of them, or only response tokens with `keep="response"`). Rerunning the same
call on the same folder resumes after the last finished shard; a batch that a kill cut in two is
run again whole (only its unwritten sequences are stored), because a batch of other sequences
pads differently and the matmul kernels then round differently: a resumed store is bit-identical
to an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from anatomist.capture.hook import residual_stream
from anatomist.capture.store import ActivationStore, ShardWriter
from anatomist.errors import AnatomistError
from anatomist.models.chat import encode_response
from anatomist.models.layers import check_layer
from anatomist.progress import progress_bar

KEEP = ("all", "response")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class CaptureItem:
    id: str
    side: str                 # "chosen" | "rejected" | "text"
    messages: tuple           # chat context before the response
    response: str


def items_from_pairs(pairs) -> list[CaptureItem]:
    """Two sequences per preference pair, chosen first: sequence 2i is pair i's chosen side."""
    return [CaptureItem(p.id, side, tuple(p.prompt), getattr(p, side))
            for p in pairs for side in ("chosen", "rejected")]


def items_hash(items: Sequence[CaptureItem]) -> str:
    h = hashlib.sha256()
    for it in items:
        h.update(json.dumps([it.id, it.side, list(it.messages), it.response], sort_keys=True).encode())
    return h.hexdigest()[:16]


def collate(ids: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to [B, T] ids and attention mask (HF Llama positions count from 0 per row)."""
    width = max(map(len, ids))
    input_ids = torch.full((len(ids), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, row in enumerate(ids):
        input_ids[i, :len(row)] = torch.tensor(row)
        mask[i, :len(row)] = 1
    return input_ids, mask


def encode_batch(tokenizer, batch: Sequence[CaptureItem], max_length: int):
    """Tokenize items with response masks and right-pad them: (encoded, ids [B, T], mask [B, T])."""
    encoded = []
    for it in batch:
        try:
            encoded.append(encode_response(tokenizer, it.messages, it.response, max_length=max_length))
        except AnatomistError as e:
            raise AnatomistError(f"record {it.id!r} ({it.side}): {e}") from e
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids, mask = collate([e.input_ids for e in encoded], pad_id)
    return encoded, ids, mask


def first_batch(done: int, n: int, batch_size: int) -> int:
    """Where a resumed run starts when `done` of `n` sequences are stored: at the start of the batch
    holding sequence `done` (a batch a kill cut in two runs again whole; see the module docstring)."""
    return done if done >= n else done - done % batch_size


def capture(model, tokenizer, items: Sequence[CaptureItem], out: str | Path, layer: int, *,
            model_name: str = "", batch_size: int = 8, max_length: int = 256, keep: str = "all",
            dtype: str = "float32", shard_tokens: int = 1 << 17, progress: bool = True) -> ActivationStore:
    """Run `model` up to block `layer` over `items`, storing activations in `out` (resumable)."""
    if keep not in KEEP:
        raise AnatomistError(f"keep must be one of {KEEP}, got {keep!r}")
    if dtype not in DTYPES:
        raise AnatomistError(f"dtype must be one of {tuple(DTYPES)}, got {dtype!r}")
    if not items:
        raise AnatomistError("nothing to capture: the dataset is empty")
    layer = check_layer(model, layer)
    encode_batch(tokenizer, items[:1], max_length)  # a tokenizer without chat template fails before any file exists
    settings = dict(model=model_name or getattr(model.config, "_name_or_path", ""), layer=layer,
                    d_model=model.config.hidden_size, n_layers_model=model.config.num_hidden_layers,
                    dtype=dtype, keep=keep, max_length=max_length, n_sequences=len(items),
                    items_hash=items_hash(items))
    writer = ShardWriter(out, settings, shard_rows=shard_tokens)
    start = writer.next_seq
    with progress_bar(f"capture layer {layer}", total=len(items), completed=start, enabled=progress) as bar:
        for b in range(first_batch(start, len(items), batch_size), len(items), batch_size):
            batch = items[b:b + batch_size]
            encoded, input_ids, mask = encode_batch(tokenizer, batch, max_length)
            # shards are written from the CPU, whatever device the model runs on
            acts = residual_stream(model, input_ids, mask, layer).to("cpu", DTYPES[dtype])  # [B, T, D]
            for i, (it, enc) in enumerate(zip(batch, encoded)):
                if b + i < start:
                    continue
                n = len(enc.input_ids)
                resp = torch.tensor(enc.response_mask)
                sel = resp if keep == "response" else torch.ones(n, dtype=torch.bool)
                writer.add(b + i, it.id, it.side, acts=acts[i, :n][sel].clone(), pos=torch.arange(n)[sel].int(),
                           token=input_ids[i, :n][sel], response=resp[sel])
            bar.advance(b + len(batch) - max(b, start))
    writer.close(len(items))
    return ActivationStore(out)
