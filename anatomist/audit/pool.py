"""Feature pooling: run model + SAE over every response, keep its sparse per-token latents.

The forward stops after the SAE's layer, the SAE encodes only response tokens (the prompt is
context, not signal — DESIGN.md), and every response keeps its nonzero latents per token. From
those, `Latents.pooled()` gives the pooled vectors the statistics use (POOLINGS), and
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

from anatomist.audit.calmax import MaxCalibration, fit_max_calibration
from anatomist.capture.hook import residual_stream
from anatomist.capture.run import CaptureItem, encode_batch, first_batch, items_hash
from anatomist.capture.store import ShardStore, ShardWriter
from anatomist.errors import AnatomistError
from anatomist.models.layers import check_layer
from anatomist.progress import progress_bar

FORMAT = "anatomist.latents/1"
# How a response's per-token latents a_f(t), t = 1..n, become one vector (audit.run's `pooling`):
#   mean  (1/n)·Σ_t a_f(t)               dilutes a short trait (a flattering opener) over a long answer
#   max   max_t a_f(t)                   keeps it, but grows with length (more tokens, more chances)
#   topk  (1/m)·Σ of the m = min(k, n) largest a_f(t): a short span of k tokens at full strength,
#         a single outlier token at 1/k; k = 1 is max, k ≥ n is mean
#   calmax F_f(max_t a_f(t))^n: the max as the chance that n tokens like the audit's own stay below
#         it, so a short span counts at full strength and a long answer gains nothing from its extra
#         tokens (`audit.calmax`; needs the audit's reference table, a `MaxCalibration`)
POOLINGS = ("mean", "max", "topk", "calmax")


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
    topk: sp.csr_matrix | None = None   # [S, F], only when `Latents.pooled(topk=k)` was asked for it

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

    def pooled(self, topk: int | None = None) -> Pooled:
        """Max- and mean-pooled latents of every sequence; with topk=k also the top-k mean (POOLINGS)."""
        S, F = len(self.tokens), self.d_sae
        key = self._seq.astype(np.int64) * F + self._feat                        # one key per (seq, latent)
        # by (seq, latent), largest value first within each: the top-k mean reads a group's head
        order = np.lexsort((-self._val, key)) if topk is not None else np.argsort(key, kind="stable")
        key, val = key[order], self._val[order].astype(np.float64)
        starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]) if len(key) else np.zeros(0, dtype=int)
        uniq = key[starts]
        rows, cols = uniq // F, uniq % F
        mx = np.maximum.reduceat(val, starts) if len(key) else val
        total = np.add.reduceat(val, starts) if len(key) else val
        n = np.maximum(self.n_tokens[rows], 1)
        matrix = lambda v: sp.csr_matrix((v, (rows, cols)), shape=(S, F))  # noqa: E731
        top = None
        if topk is not None:
            if topk < 1:
                raise AnatomistError(f"topk must be >= 1, got {topk}")
            # SAE latents are ≥ 0 (ReLU / JumpReLU / TopK), so a token where latent f is off (not
            # stored) is a 0, never among the k largest ahead of a stored value
            assert not len(val) or val.min() >= 0, "top-k pooling assumes non-negative latents"
            rank = np.arange(len(key)) - np.repeat(starts, np.diff(np.r_[starts, len(key)]))
            head = np.add.reduceat(np.where(rank < topk, val, 0.0), starts) if len(key) else val
            top = matrix(head / np.minimum(n, topk))
        return Pooled(matrix(mx), matrix(total / n), self.n_tokens, self.prompt_emb, self.ids, self.sides, top)

    def pool(self, pooling: str, topk: int | None = None, calibration: MaxCalibration | None = None) -> sp.csr_matrix:
        """The [S, F] matrix of one pooling by name (POOLINGS); "topk" needs k, "calmax" the
        audit's calibration (it scores only the calibrated latents)."""
        if pooling not in POOLINGS:
            raise AnatomistError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        if pooling == "topk" and not topk:
            raise AnatomistError("pooling 'topk' needs k (topk=…)")
        if pooling == "calmax":
            if calibration is None:
                raise AnatomistError("pooling 'calmax' needs the audit's calibration (concepts.json 'calibration')")
            return calibration.pooled(self.pooled().max, self.n_tokens)
        return getattr(self.pooled(topk=topk if pooling == "topk" else None), pooling)

    def max_calibration(self, features: np.ndarray) -> MaxCalibration:
        """The reference F_f of `features` over every response token of this store (`audit.calmax`)."""
        return fit_max_calibration(self._feat, self._val, int(self.n_tokens.sum()), features)

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
    sink's huge norm would swamp the mean). The model and the SAE share a device (any); what is
    returned is on the CPU, where the shard writer and the scorers read it."""
    encoded, ids, mask = encode_batch(tokenizer, batch, max_length)
    resid = residual_stream(model, ids, mask, layer)                     # [B, T, D] on the model's device
    resp = torch.zeros_like(mask, dtype=torch.bool)
    for i, e in enumerate(encoded):
        resp[i, :len(e.response_mask)] = torch.tensor(e.response_mask)
    lat = sae.encode(resid[resp.to(resid.device)]).cpu()                 # [N_resp, F]: one matmul per batch
    prompt = mask.bool() & ~resp
    prompt[:, 0] = False
    prompt = prompt.to(resid.device)
    emb = ((resid * prompt[..., None]).sum(1) / prompt.sum(1, keepdim=True).clamp(min=1)).cpu()  # [B, D]
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
def check_pool_inputs(model, tokenizer, sae, items: Sequence[CaptureItem], *, layer: int | None = None,
                      max_length: int = 256) -> int:
    """Refuse, in one line and before any file exists, what `pool_features` cannot pool; returns the layer."""
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
    return int(layer)


def pool_features(model, tokenizer, sae, items: Sequence[CaptureItem], out: str | Path, *, layer: int | None = None,
                  batch_size: int = 8, max_length: int = 256, shard_rows: int = 1 << 18,
                  progress: bool = True) -> Latents:
    """Store the SAE latents of every item's response tokens in `out` (rerun to resume)."""
    layer = check_pool_inputs(model, tokenizer, sae, items, layer=layer, max_length=max_length)
    settings = dict(layer=int(layer), d_sae=sae.cfg.d_sae, sae_model=sae.cfg.model, max_length=max_length,
                    n_sequences=len(items), items_hash=items_hash(items),
                    sae_hash=tensor_hash(sae.W_enc), model=getattr(model.config, "_name_or_path", ""))
    writer = ShardWriter(out, settings, shard_rows=shard_rows, format=FORMAT)
    start = writer.next_seq
    with progress_bar(f"SAE latents of responses (layer {layer})", total=len(items), completed=start,
                      enabled=progress) as bar:
        for b in range(first_batch(start, len(items), batch_size), len(items), batch_size):  # as capture
            batch = items[b:b + batch_size]
            tokens, latents, emb = _response_latents(model, sae, batch, layer, tokenizer, max_length)
            for i, lat in enumerate(latents):
                if b + i < start:
                    continue
                pos, feat = torch.nonzero(lat, as_tuple=True)
                writer.add(b + i, batch[i].id, batch[i].side, info={"tokens": tokens[i]},
                           per_seq={"prompt_emb": emb[i].float()},
                           pos=pos.int(), feat=feat.int(), val=lat[pos, feat].float())
            bar.advance(b + len(batch) - max(b, start))
    writer.close(len(items))
    return Latents(out)


def tensor_hash(t: torch.Tensor) -> str:
    """A short content hash of a tensor (e.g. the SAE encoder, to key cached latents)."""
    import hashlib

    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]
