"""Activation steering: add α·d to the residual stream after decoder block L (DESIGN.md).

    with add_to_residual(model, layer=15, vector=alpha * d):          # every position
        model.generate(...)
    with add_to_residual(model, 15, alpha * d, positions=response_mask):  # [B, T] bool: only these
        loss = ...

`d` is usually a concept's unit decoder direction (`concept_direction`). During DPO the hook goes
on the policy only, on response tokens (preventative steering); at inference on every position.
`Steer(layer, vector)` names one such intervention; `steering_alpha` sizes α from the audit.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import NamedTuple

import numpy as np
import torch

from anatomist.audit.lens import concept_direction
from anatomist.errors import AnatomistError
from anatomist.models.layers import check_layer, decoder_layers


class Steer(NamedTuple):
    """What `train_dpo(steer=)` adds to the policy's response tokens (and generation, everywhere)."""
    layer: int             # residual after this block (0-based)
    vector: torch.Tensor   # [D], α·d_C


@contextmanager
def add_to_residual(model: torch.nn.Module, layer: int, vector: torch.Tensor, positions: torch.Tensor | None = None):
    """Add `vector` [D] to block `layer`'s output while the context is open.

    positions: None (all positions) or a bool/0-1 mask [B, T] matching the forward's input; a
    cached decode step (T = 1) with a mask given is steered only if the mask's last column is set."""
    block = decoder_layers(model)[check_layer(model, layer)]

    def hook(_module, _inputs, output):
        hidden = output[0] if isinstance(output, tuple) else output          # [B, T, D]
        add = vector.to(hidden.dtype).to(hidden.device)
        if positions is None:
            hidden = hidden + add
        else:
            m = positions.to(hidden.device)
            if m.shape[1] != hidden.shape[1]:
                m = m[:, -hidden.shape[1]:]
            hidden = hidden + m[..., None].to(hidden.dtype) * add
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    handle = block.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def audit_direction(audit, cluster: int, sae=None) -> torch.Tensor:
    """d_C [D]: unit decoder direction of an audit cluster, members weighted like its concept score
    (w_f = 1/sd_f). `sae` defaults to the audit's own (audit.json)."""
    from anatomist.sae import load_sae

    sae = load_sae(audit.sae_path) if sae is None else sae
    c = audit.check_cluster(cluster)
    if c < 0:
        raise AnatomistError(f"concept {c} (response length) has no decoder direction to steer along; "
                             "shape it with λ instead")
    members = audit.concepts.labels == c
    return concept_direction(sae.decoder_directions(), audit.concepts.features[members], audit.concepts.weights[members])


def steering_alpha(audit, cluster: int, sae, pair_ids: list[str], limit: int = 64) -> float:
    """α₀: the shift a concept makes in the residual, in the residual's own units — a natural scale
    for α (preventative steering uses a small multiple of it).

    α₀ = mean over the first `limit` pairs whose Δc favours `cluster` of
         [mean_t proj(chosen) − mean_t proj(rejected)],   proj_t = Σ_f a_f(t) (W_dec[f] · d_C) / s
    over the cluster's member features f, with a_f(t) the audit's per-token latents, d_C its
    `audit_direction` and s the SAE's norm_scale (sae/model.py: x̂ = (f W_dec + b_dec) / s)."""
    d = audit_direction(audit, cluster, sae).double().cpu()                    # [D]
    members = audit.concepts.features[audit.concepts.labels == cluster]         # [M]
    along = (sae.W_dec.detach().double().cpu()[members] @ d).numpy() / sae.cfg.norm_scale   # [M]
    c_pos, c_neg = audit.scores(pair_ids, [cluster])
    favoured = [p for p, dc in zip(pair_ids, (c_pos - c_neg)[:, 0]) if dc > 0][:limit]
    if not favoured:
        raise AnatomistError(f"no training pair favours cluster {cluster} (Δc > 0): cannot size the steering vector")
    diffs = []
    for pid in favoured:
        i = audit.pair_index(pid)        # latents/ holds pair i's chosen at sequence 2i, rejected at 2i + 1
        chosen, rejected = (audit.latents.token_acts(2 * i + s, members) @ along for s in (0, 1))   # [T] each
        diffs.append(chosen.mean() - rejected.mean())
    return float(np.mean(diffs))


@torch.no_grad()
def steered_generate(model, tokenizer, prompts: list[str], *, layer: int, vector: torch.Tensor,
                     max_new_tokens: int = 64, do_sample: bool = False, seed: int = 0) -> list[str]:
    """Chat-templated generation for each user prompt with `vector` added at every position of layer L."""
    from anatomist.models.chat import apply_chat_template

    out = []
    for text in prompts:    # one at a time: no padding, so every position steered is a real token
        ids = torch.tensor([apply_chat_template(tokenizer, [{"role": "user", "content": text}])],
                           device=next(model.parameters()).device)
        torch.manual_seed(seed)
        with add_to_residual(model, layer, vector):
            gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=do_sample, pad_token_id=tokenizer.eos_token_id)
        out.append(tokenizer.decode(gen[0, ids.shape[1]:], skip_special_tokens=True))
    return out
