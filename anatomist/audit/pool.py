"""Feature pooling: run model + SAE over every response, keep its sparse per-token latents.

The forward stops after the SAE's layer, the SAE encodes only response tokens (the prompt is
context, not signal — DESIGN.md), and every response keeps its nonzero latents per token. From
those, `Latents.pooled()` gives the max- and mean-pooled vectors the statistics use, and
`Latents.token_acts()` the per-token activations that labels and token filtering use — without
a second forward pass. Results stream into a resumable shard store (`anatomist.capture.store`);
position-0 tokens are never in a response, so the attention-sink outlier never reaches the SAE.

Stored per sequence (rows = nonzero (token, latent) entries):
    pos [nnz] int32 (token index within the response), feat [nnz] int32, val [nnz] float32
    info {"tokens": response token ids}
    seq.prompt_emb [D]: mean residual over the prompt tokens after position 0 (for topics)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import scipy.sparse as sp
import torch

from anatomist.capture.hook import residual_stream
from anatomist.capture.run import CaptureItem, encode_batch, items_hash
from anatomist.capture.store import ShardStore, ShardWriter
from anatomist.errors import AnatomistError
from anatomist.models.layers import check_layer
from anatomist.progress import progress_bar

FORMAT = "anatomist.latents/1"


class LatentStore(ShardStore):
    format = FORMAT


@dataclass
class Pooled:
    """Pooled latents per sequence; sequence 2i / 2i+1 are pair i's chosen / rejected sides."""

    max: sp.csr_matrix        # [S, F]
    mean: sp.csr_matrix       # [S, F]
    n_tokens: np.ndarray      # [S] response tokens per sequence
    prompt_emb: np.ndarray    # [S, D] mean prompt residual (identical for a pair's two sides)
    ids: list[str]
    sides: list[str]

    def pair_delta(self, which: str = "max") -> np.ndarray:
        """Δ [P, F] = pooled(y⁺) − pooled(y⁻), dense (P × F floats)."""
        m = getattr(self, which)
        assert set(self.sides[0::2]) == {"chosen"} and set(self.sides[1::2]) == {"rejected"}, \
            "sequences must alternate chosen / rejected"
        return (m[0::2] - m[1::2]).toarray()


class Latents:
    """All sparse per-token latents of a finished pooling run, in memory."""

    def __init__(self, folder: str | Path):
        store = LatentStore(folder)
        data = store.load()
        self.d_sae = int(store.settings["d_sae"])
        self.settings = store.settings
        self.prompt_emb = data["seq.prompt_emb"].numpy()                         # [S, D]
        self.tokens = [i["tokens"] for s in store.shards for i in s.infos]        # S lists of ids
        self.ids, self.sides = (list(x) for x in zip(*store.sequences()))
        self._seq, self._pos = data["seq"].numpy(), data["pos"].numpy()
        self._feat, self._val = data["feat"].numpy(), data["val"].numpy()
        assert (np.diff(self._seq) >= 0).all(), "shards store sequences in order"
        self._start = np.searchsorted(self._seq, np.arange(len(self.tokens) + 1))  # row range per sequence

    @property
    def n_tokens(self) -> np.ndarray:
        return np.array([len(t) for t in self.tokens])

    def pooled(self) -> Pooled:
        S, F = len(self.tokens), self.d_sae
        key = self._seq.astype(np.int64) * F + self._feat                        # one key per (seq, latent)
        order = np.argsort(key, kind="stable")
        key, val = key[order], self._val[order].astype(np.float64)
        starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]) if len(key) else np.zeros(0, dtype=int)
        uniq = key[starts]
        rows, cols = uniq // F, uniq % F
        mx = np.maximum.reduceat(val, starts) if len(key) else val
        total = np.add.reduceat(val, starts) if len(key) else val
        mean = total / np.maximum(self.n_tokens[rows], 1)
        return Pooled(sp.csr_matrix((mx, (rows, cols)), shape=(S, F)),
                      sp.csr_matrix((mean, (rows, cols)), shape=(S, F)),
                      self.n_tokens, self.prompt_emb, self.ids, self.sides)

    def token_acts(self, seq: int, features: np.ndarray) -> np.ndarray:
        """Activations of `features` on each response token of sequence `seq`: [n_tokens, len(features)]."""
        a, b = self._start[seq], self._start[seq + 1]
        column = {int(f): j for j, f in enumerate(features)}
        out = np.zeros((len(self.tokens[seq]), len(features)), dtype=np.float32)
        for p, f, v in zip(self._pos[a:b], self._feat[a:b], self._val[a:b]):
            j = column.get(int(f))
            if j is not None:
                out[p, j] = v
        return out


def _response_latents(model, sae, batch, layer, tokenizer, max_length):
    """Per item: its response token ids and SAE latents [n_response, F]; and each item's prompt
    embedding [B, D] — the mean residual over prompt tokens after position 0 (the attention
    sink's huge norm would swamp the mean)."""
    encoded, ids, mask = encode_batch(tokenizer, batch, max_length)
    resid = residual_stream(model, ids, mask, layer)                     # [B, T, D]
    resp = torch.zeros_like(mask, dtype=torch.bool)
    for i, e in enumerate(encoded):
        resp[i, :len(e.response_mask)] = torch.tensor(e.response_mask)
    lat = sae.encode(resid[resp])                                        # [N_resp, F]: one matmul per batch
    prompt = mask.bool() & ~resp
    prompt[:, 0] = False
    emb = (resid * prompt[..., None]).sum(1) / prompt.sum(1, keepdim=True).clamp(min=1)  # [B, D]
    tokens = [ids[i][resp[i]].tolist() for i in range(len(encoded))]
    return tokens, list(torch.split(lat, [e.n_response for e in encoded])), emb


@torch.no_grad()
def token_activations(model, tokenizer, sae, items: Sequence[CaptureItem], features: Sequence[int], *,
                      layer: int | None = None, max_length: int = 256, batch_size: int = 8) -> list[torch.Tensor]:
    """Recompute per-token activations of the selected latents for new items: [n_response, len(features)]."""
    layer = sae.cfg.layer if layer is None else layer
    idx = torch.as_tensor(list(features), dtype=torch.long)
    out = []
    for b in range(0, len(items), batch_size):
        _, latents, _ = _response_latents(model, sae, items[b:b + batch_size], layer, tokenizer, max_length)
        out.extend(lat[:, idx] for lat in latents)
    return out


@torch.no_grad()
def pool_features(model, tokenizer, sae, items: Sequence[CaptureItem], out: str | Path, *, layer: int | None = None,
                  batch_size: int = 8, max_length: int = 256, shard_rows: int = 1 << 18,
                  progress: bool = True) -> Latents:
    """Store the SAE latents of every item's response tokens in `out` (rerun to resume)."""
    layer = sae.cfg.layer if layer is None else layer
    if layer is None:
        raise AnatomistError("the SAE config has no layer; pass layer=")
    if not items:
        raise AnatomistError("nothing to pool: the dataset is empty")
    if sae.cfg.d_in != model.config.hidden_size:
        raise AnatomistError(f"the SAE reads width d_in={sae.cfg.d_in} but the model's residual stream has "
                             f"width {model.config.hidden_size}: the SAE was trained on another model")
    check_layer(model, layer)
    encode_batch(tokenizer, items[:1], max_length)  # a tokenizer without chat template fails before any file exists
    settings = dict(layer=int(layer), d_sae=sae.cfg.d_sae, sae_model=sae.cfg.model, max_length=max_length,
                    n_sequences=len(items), items_hash=items_hash(items),
                    sae_hash=_tensor_hash(sae.W_enc), model=getattr(model.config, "_name_or_path", ""))
    writer = ShardWriter(out, settings, shard_rows=shard_rows, format=FORMAT)
    start = writer.next_seq
    with progress_bar(f"SAE latents of responses (layer {layer})", total=len(items), completed=start,
                      enabled=progress) as bar:
        for b in range(start, len(items), batch_size):
            batch = items[b:b + batch_size]
            tokens, latents, emb = _response_latents(model, sae, batch, layer, tokenizer, max_length)
            for i, lat in enumerate(latents):
                pos, feat = torch.nonzero(lat, as_tuple=True)
                writer.add(b + i, batch[i].id, batch[i].side, info={"tokens": tokens[i]},
                           per_seq={"prompt_emb": emb[i].float()},
                           pos=pos.int(), feat=feat.int(), val=lat[pos, feat].float())
            bar.advance(len(batch))
    writer.close(len(items))
    return Latents(out)


def _tensor_hash(t: torch.Tensor) -> str:
    import hashlib

    return hashlib.sha256(t.detach().contiguous().numpy().tobytes()).hexdigest()[:16]
