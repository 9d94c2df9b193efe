"""Which training pairs drive a predicted shift: per-pair attribution from the first-order kernel.

The first-order shift of concept C (evaluate/firstorder.py) is linear in the update direction d:

    x_C = mean_x Cov_x(c_C, D_d log π_T) = Σ_y w_y·∇log π_T(y)·d = d·v_C,
    w_y = (c_C(y) − c̄_x) / (n_x − 1) / X    (y a sample of prompt x; X prompts with n_x ≥ 2),
    v_C = ∇_θ Σ_y w_y log π_T(y)              (one backward over the generations).

Plain gradient: d = g = (1/P) Σ_i g_i with g_i = −∇L_i, so x_C = (1/P) Σ_i a_i, a_i = g_i·v_C.
Adam's first step d = sign(g) = g/|g| elementwise; holding |g| at the full-data gradient,
x_C = (1/P) Σ_i g_i·(v_C/|g|): the same decomposition along v_C/|g|. Both are exact: the
attributions average to the prediction. Every a_i comes from one forward-mode pass over the pairs
(a JVP of the per-pair losses along v), no per-pair gradients. A pair with a large a_i of the
prediction's sign drives it; `benchmarks/attribution.py` drops the top pairs, retrains and
compares with dropping random pairs (the causal check).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from anatomist.errors import AnatomistError
from anatomist.evaluate.firstorder import (
    PRECONDITIONERS,
    dpo_direction,
    eager_attention,
    generation_seqs,
    tempered_sequence_logps,
)
from anatomist.shape.pairs import ShapedPair
from anatomist.shape.steer import Steer
from anatomist.train.batches import Seq, collate, collate_rows
from anatomist.train.dpo import DPOConfig, batch_dpo, make_trainable, prepare
from anatomist.train.split import SplitLM, StateCache, to_device

__all__ = ["concept_weights", "concept_gradient", "pair_attribution", "run_attribution"]


def concept_weights(c: np.ndarray, prompt: np.ndarray) -> np.ndarray:
    """w [N] with Σ_y w_y·δ(y) = mean over prompts of the unbiased within-prompt Cov(c, δ), for
    any δ; c [N] one concept's scores, prompt [N]. Prompts with one sample get weight 0."""
    c, prompt = np.asarray(c, np.float64), np.asarray(prompt)
    w = np.zeros(len(c))
    groups = [np.flatnonzero(prompt == x) for x in np.unique(prompt)]
    groups = [g for g in groups if len(g) >= 2]
    for g in groups:
        w[g] = (c[g] - c[g].mean()) / (len(g) - 1) / len(groups)
    return w


def concept_gradient(split: SplitLM, gen: Sequence[Seq], weights: np.ndarray, params: Sequence[torch.Tensor], *,
                     temperature: float, pad_id: int = 0, batch_size: int = 16, device="cpu") -> list[torch.Tensor]:
    """v = ∇_θ Σ_y w_y log π_T(y) over the sequences `gen` [N] (weights [N]), one tensor per param."""
    params = list(params)
    for p in params:
        p.grad = None
    w = torch.as_tensor(np.asarray(weights), dtype=torch.float32)
    for start in range(0, len(gen), batch_size):
        rows = list(range(start, min(start + batch_size, len(gen))))
        if not w[rows].abs().sum():
            continue
        batch = to_device(collate_rows(gen, rows, pad_id), device)
        h = split.bottom(batch.input_ids, batch.attention_mask)                    # [R, T, D], no grad
        lp = tempered_sequence_logps(split, split.top(h, batch.attention_mask), batch, temperature)   # [R]
        (lp * w[rows].to(lp.device)).sum().backward()
    v = [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in params]
    for p in params:
        p.grad = None
    return v


def pair_attribution(split: SplitLM, cache: StateCache, seqs: Sequence[Seq], offsets: torch.Tensor, cfg: DPOConfig,
                     params: Sequence[torch.Tensor], vector: Sequence[torch.Tensor], *, pad_id: int, device="cpu",
                     batch_size: int = 8, steer: Steer | None = None) -> np.ndarray:
    """a_i = −∇L_i·vector for every pair [P] (L_i the run's own per-pair loss at the reference),
    by forward-mode AD along `vector`."""
    params = list(params)
    assert len(params) == len(vector) and all(p.shape == v.shape for p, v in zip(params, vector))
    primals = tuple(p.detach() for p in params)
    vector = tuple(v.to(p.device, p.dtype) for p, v in zip(params, vector))
    P = len(seqs) // 2
    out = np.empty(P)
    with eager_attention(split.model):
        for start in range(0, P, batch_size):
            idx = list(range(start, min(start + batch_size, P)))
            batch = collate(seqs, idx, pad_id)

            def losses(*values, batch=batch, idx=idx):
                def top(h, att):
                    return split.top_with(h, att, params, values)

                return batch_dpo(split, cache, batch, offsets[idx], cfg, device, steer, top=top).loss   # [B]

            out[start:start + len(idx)] = -torch.func.jvp(losses, primals, vector)[1].double().cpu().numpy()
    return out


def run_attribution(model, tokenizer, pairs: Sequence[ShapedPair], cfg: DPOConfig, base: pd.DataFrame, cluster: int,
                    *, temperature: float, precondition: str = "plain", topic: str | None = None,
                    steer: Steer | None = None, cache_dir=None, device="cpu", batch_size: int = 8,
                    progress: bool = True) -> pd.DataFrame:
    """Per training pair: its share a_i of concept `cluster`'s first-order shift (over all of
    `base`'s prompts, or `topic`'s), under the plain or Adam direction. Columns: pair_id,
    attribution (mean over pairs = the unscaled prediction x_first), sorted by attribution,
    largest first. `base`: the predictor's half of the base generations (an eval table)."""
    if precondition not in PRECONDITIONERS:
        raise AnatomistError(f"precondition must be one of {', '.join(PRECONDITIONERS)}, got {precondition!r}")
    col = f"c_{cluster}"
    if col not in base.columns:
        raise AnatomistError(f"base generations have no column {col}: evaluate them with the audit")
    sel = base if topic is None else base[base["topic"].astype(str) == topic]
    if sel.empty:
        raise AnatomistError(f"no base generations of topic {topic!r}")
    weights = concept_weights(sel[col].to_numpy(), sel["prompt_id"].astype(str).to_numpy())
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    try:
        prep = prepare(model, tokenizer, pairs, cfg, cache_dir=cache_dir, device=device, steer=steer, progress=progress)
        make_trainable(model, prep.split, cfg)
        params = [p for p in model.parameters() if p.requires_grad]
        offsets = torch.tensor([float(p.offset) for p in pairs], dtype=torch.float32)
        v = concept_gradient(prep.split, generation_seqs(sel), weights, params, temperature=temperature,
                             pad_id=prep.pad_id, batch_size=batch_size, device=device)
        if precondition == "adam":   # sign(g) = g/|g|: attribute along v/|g| (0 where g = 0)
            g = dpo_direction(prep.split, prep.cache, prep.seqs, offsets, cfg, params, pad_id=prep.pad_id,
                              device=device, batch_size=batch_size, steer=steer)
            v = [torch.where(gi != 0, vi / gi.abs().clamp_min(1e-30), torch.zeros_like(vi)) for vi, gi in zip(v, g)]
        a = pair_attribution(prep.split, prep.cache, prep.seqs, offsets, cfg, params, v, pad_id=prep.pad_id,
                             device=device, batch_size=batch_size, steer=steer)
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(flags[n])
    frame = pd.DataFrame({"pair_id": [p.id for p in pairs], "attribution": a})
    return frame.sort_values("attribution", ascending=False, kind="stable").reset_index(drop=True)
