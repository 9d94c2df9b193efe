"""The log-probability of a sampled continuation under the distribution it was sampled from.

    lp = continuation_logps(model, prompt_ids, token_ids, temperature=0.7)   # [N] float64

log π_T(y|x) = Σ_t log softmax(z_t / T)[y_t] over the continuation's tokens, with z_t the model's
logits after prompt + y_<t (`verify.sampling_logits`, the sampler's own transform, so T and top-p
mean what they meant when the tokens were drawn). One forward of the decoder over prompt +
continuation per batch, right-padded, and the LM head on the continuation's positions only (as
the sampler's `trunk_forward` does): any causal LM with `get_decoder()` (a PEFT-wrapped policy
included), in eval mode, without gradients. Scoring the same token ids under two models gives importance weights
(`anatomist.stats.snis_prompt_shift`); the ids must be the sampled ones, not re-tokenised text.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from anatomist.errors import AnatomistError
from anatomist.spec_decode.verify import sampling_logits

__all__ = ["continuation_logps"]


@torch.no_grad()
def continuation_logps(model, prompt_ids: Sequence[Sequence[int]], token_ids: Sequence[Sequence[int]], *,
                       temperature: float, top_p: float = 1.0, batch_size: int = 8, pad_id: int = 0) -> np.ndarray:
    """log π_T(y_i | x_i) [N] of each continuation `token_ids[i]` after `prompt_ids[i]`."""
    if not temperature > 0:
        raise AnatomistError(f"temperature must be > 0, got {temperature}")
    if len(prompt_ids) != len(token_ids):
        raise AnatomistError(f"{len(prompt_ids)} prompts but {len(token_ids)} continuations")
    empty = next((i for i, (p, t) in enumerate(zip(prompt_ids, token_ids)) if not len(p) or not len(t)), None)
    if empty is not None:
        raise AnatomistError(f"sequence {empty}: empty prompt or continuation token ids")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = np.empty(len(token_ids), dtype=np.float64)
    try:
        for start in range(0, len(token_ids), batch_size):
            rows = range(start, min(start + batch_size, len(token_ids)))
            seqs = [list(prompt_ids[i]) + list(token_ids[i]) for i in rows]
            T = max(map(len, seqs))
            ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
            att = torch.zeros(len(seqs), T, dtype=torch.long)
            for b, s in enumerate(seqs):
                ids[b, :len(s)], att[b, :len(s)] = torch.tensor(s), 1
            h = model.get_decoder()(input_ids=ids.to(device), attention_mask=att.to(device),
                                    use_cache=False).last_hidden_state                          # [B, T, D]
            for b, i in enumerate(rows):
                n_prompt, tok = len(prompt_ids[i]), torch.tensor(list(token_ids[i]), device=device)
                logits = model.get_output_embeddings()(h[b, n_prompt - 1:n_prompt - 1 + len(tok)])   # [n, V]
                z = sampling_logits(logits, temperature, 0, top_p)
                out[i] = z.log_softmax(-1).gather(-1, tok[:, None]).sum().item()
    finally:
        model.train(was_training)
    return out
