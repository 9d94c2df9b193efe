"""The model cut at a block boundary k: a frozen bottom (embeddings + blocks [0, k)) whose output is
computed once per sequence and cached, and a top (blocks [k, L) + final norm + LM head) that
the policy trains and the reference runs once.

Why this is exact: the bottom is frozen, so its output h_k is the same for policy and reference
at every step; running the top from the cached h_k gives the same log-probs as a full forward
(up to float summation order). `precompute` checks this on its first batch against a full
forward of the model and raises if an architecture's `inputs_embeds` path differs (e.g. models
that rescale or add position embeddings to `inputs_embeds`): Llama-family models (Llama,
Mistral, Qwen2, SmolLM) pass.

The cache (one folder per key = model fingerprint + boundary + every token id) holds, per
sequence, h_k [T, D] (only when k > 0) and the reference log-prob of each response token [R];
token-filter masks are applied later, so plain and shaped runs share one cache. Shards are
written atomically and a killed precompute resumes at the first missing shard. Size: 4·D bytes
per token (SmolLM2: 2.3 KB; ≈ 0.9 GB for the 1,240-pair organism split), in
`$ANATOMIST_CACHE/dpo/<key>/` unless `cache_dir` says otherwise; delete it freely.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_file

from anatomist.capture.hook import residual_stream
from anatomist.errors import AnatomistError
from anatomist.fileio import atomic_save_safetensors
from anatomist.models.layers import LAYER_PATHS, decoder_layers
from anatomist.progress import progress_bar
from anatomist.train.batches import Batch, Seq, collate_rows

log = logging.getLogger(__name__)

SHARD_SEQS = 256      # sequences per cache shard
CHECK_ATOL = 1e-3     # |log-prob| gap tolerated between the split path and a full forward


def _owner(model) -> tuple[torch.nn.Module, str]:
    """The module whose forward runs the block list, and the list's attribute name."""
    layers = decoder_layers(model)
    for path in LAYER_PATHS:
        *head, name = path.split(".")
        obj = model
        for attr in head:
            obj = getattr(obj, attr, None)
        if obj is not None and getattr(obj, name, None) is layers:
            return obj, name
    raise AnatomistError(f"cannot find the module that runs the decoder blocks of {type(model).__name__}")


class SplitLM:
    """A causal LM cut before block `boundary` (0 = nothing cached, the bottom is the embedding)."""

    def __init__(self, model, boundary: int):
        self.model = model  # the plain HF model (PEFT edits its modules in place)
        self.owner, self.attr = _owner(model)
        self.blocks = getattr(self.owner, self.attr)
        if not 0 <= boundary < len(self.blocks):
            raise AnatomistError(f"boundary {boundary} out of range for {len(self.blocks)} blocks")
        self.boundary = boundary
        self.lm_head = model.get_output_embeddings()

    @torch.no_grad()
    def bottom(self, ids: torch.Tensor, att: torch.Tensor) -> torch.Tensor:
        """h_k [B, T, D]: the residual after block k − 1 (the token embeddings when k = 0)."""
        if self.boundary == 0:
            return self.model.get_input_embeddings()(ids)
        return residual_stream(self.model, ids, att, self.boundary - 1)

    @contextmanager
    def _top_only(self):
        setattr(self.owner, self.attr, torch.nn.ModuleList(self.blocks[self.boundary:]))
        try:
            yield
        finally:
            setattr(self.owner, self.attr, self.blocks)

    def top(self, h: torch.Tensor, att: torch.Tensor) -> torch.Tensor:
        """Final normed hidden [B, T, D] from h_k [B, T, D] through blocks [k, L)."""
        with self._top_only():
            return self.owner(inputs_embeds=h, attention_mask=att, use_cache=False).last_hidden_state

    def top_with(self, h: torch.Tensor, att: torch.Tensor, params: Sequence[torch.nn.Parameter],
                 values: Sequence[torch.Tensor]) -> torch.Tensor:
        """`top` with the trained `params` replaced by `values` (torch.func.functional_call), so the
        output is a function of the values (e.g. for a forward-mode JVP along a direction)."""
        from torch.func import functional_call

        with self._top_only():
            names = {id(p): n for n, p in self.owner.named_parameters()}
            assert all(id(p) in names for p in params), "params must belong to the top blocks or final norm"
            sub = {names[id(p)]: v for p, v in zip(params, values)}
            return functional_call(self.owner, sub, (), {"inputs_embeds": h, "attention_mask": att, "use_cache": False},
                                   strict=False).last_hidden_state

    def response_logps(self, final: torch.Tensor, batch: Batch) -> torch.Tensor:
        """log π of each response token [N]: the LM head runs only on the N positions that predict
        one (never on prompt or padding positions), softmax over the full vocabulary in fp32."""
        rows = final[batch.pred_rows, batch.pred_pos]                       # [N, D]
        logits = self.lm_head(rows).float()                                  # [N, V]
        return logits.log_softmax(-1).gather(-1, batch.targets[:, None].to(logits.device)).squeeze(-1)

    def full_response_logps(self, batch: Batch) -> torch.Tensor:
        """The same [N] from one ordinary full forward (the reference path, for checks and tests)."""
        logits = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                            use_cache=False).logits.float()                 # [2B, T, V]
        logp = logits[batch.pred_rows, batch.pred_pos].log_softmax(-1)
        return logp.gather(-1, batch.targets[:, None]).squeeze(-1)


class StateCache:
    """Per-sequence cached h_k [T_i, D] (None when k = 0) and reference token log-probs [R_i]."""

    def __init__(self, hidden: list[torch.Tensor] | None, ref: list[torch.Tensor]):
        self.hidden, self.ref = hidden, ref

    def batch_hidden(self, batch: Batch, split: SplitLM, device) -> torch.Tensor:
        if self.hidden is None:
            return split.bottom(batch.input_ids.to(device), batch.attention_mask.to(device))
        T = batch.input_ids.shape[1]
        D = self.hidden[batch.seq_index[0]].shape[-1]
        h = torch.zeros(len(batch.seq_index), T, D)
        for b, s in enumerate(batch.seq_index):
            h[b, :len(self.hidden[s])] = self.hidden[s]
        return h.to(device)

    def batch_ref(self, batch: Batch) -> torch.Tensor:
        return torch.cat([self.ref[s] for s in batch.seq_index])            # [N], rows in Batch order


def _shard_sequences(seqs: Sequence[Seq], needed: Sequence[int]) -> list[list[int]]:
    order = sorted(needed, key=lambda i: (len(seqs[i].ids), i))           # similar lengths share a forward
    return [order[i:i + SHARD_SEQS] for i in range(0, len(order), SHARD_SEQS)]


@torch.no_grad()
def check_split(split: SplitLM, seqs: Sequence[Seq], rows: Sequence[int], *, pad_id: int, device) -> float:
    """Max |log-prob| gap between the split path and a full forward on `rows`; raises if too large."""
    batch = to_device(collate_rows(seqs, rows, pad_id), device)
    fast = split.response_logps(split.top(split.bottom(batch.input_ids, batch.attention_mask),
                                          batch.attention_mask), batch)
    full = split.full_response_logps(batch)
    gap = float((full - fast).abs().max())
    if gap > CHECK_ATOL:
        raise AnatomistError(f"{type(split.model).__name__}: running the top blocks from cached states differs "
                             f"from a full forward by {gap:.2g} nats; use train_layers = all layers for this "
                             "architecture")
    return gap


@torch.no_grad()
def precompute(split: SplitLM, seqs: Sequence[Seq], cache_dir: Path, *, pad_id: int, batch_size: int,
               device, needed: Sequence[int] | None = None, progress: bool = True) -> StateCache:
    """Run the frozen bottom once per sequence and the reference top once; cache both on disk.
    `needed`: the sequence ids a run will visit (default all); the others stay None."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    needed = range(len(seqs)) if needed is None else sorted(set(needed))
    shards = _shard_sequences(seqs, needed)
    keep_hidden = split.boundary > 0
    hidden: list[torch.Tensor | None] = [None] * len(seqs)
    ref: list[torch.Tensor | None] = [None] * len(seqs)
    done = sum((cache_dir / f"shard-{j:05d}.safetensors").is_file() for j in range(len(shards)))
    if done < len(shards):
        check_split(split, seqs, shards[0][:2], pad_id=pad_id, device=device)
    with progress_bar("dpo: bottom + reference", total=len(needed), enabled=progress) as bar:
        for j, members in enumerate(shards):
            path = cache_dir / f"shard-{j:05d}.safetensors"
            if not path.is_file():
                hs, rs = [], []
                for start in range(0, len(members), batch_size):
                    chunk = members[start:start + batch_size]
                    batch = to_device(collate_rows(seqs, chunk, pad_id), device)
                    h = split.bottom(batch.input_ids, batch.attention_mask)  # [b, T, D]
                    tok = split.response_logps(split.top(h, batch.attention_mask), batch)  # [N]
                    tok = tok.cpu()
                    counts = [seqs[i].n_response for i in chunk]
                    rs += list(tok.split(counts))
                    hs += [h[b, :len(seqs[i].ids)].cpu() for b, i in enumerate(chunk)]
                    bar.advance(len(chunk))
                tensors = {"index": torch.tensor(members), "ref": torch.cat(rs)}
                if keep_hidden:
                    tensors["hidden"] = torch.cat(hs)
                atomic_save_safetensors(path, tensors)
            else:
                bar.advance(len(members))
            loaded = load_file(str(path))
            if loaded["index"].tolist() != members:
                raise AnatomistError(f"{path}: this cache shard holds other sequences (written by another version?); "
                                     f"delete {cache_dir} and rerun")
            refs = loaded["ref"].split([seqs[i].n_response for i in members])
            hid = loaded["hidden"].split([len(seqs[i].ids) for i in members]) if keep_hidden else [None] * len(members)
            for i, r, hh in zip(members, refs, hid):
                ref[i], hidden[i] = r, hh
    log.info("cache %s: %d of %d shards were already there", cache_dir, done, len(shards))
    return StateCache(hidden if keep_hidden else None, ref)


def to_device(batch: Batch, device) -> Batch:
    return Batch(batch.input_ids.to(device), batch.attention_mask.to(device), batch.pred_rows.to(device),
                 batch.pred_pos.to(device), batch.targets.to(device), batch.keep.to(device),
                 batch.response.to(device), batch.seq_index)
