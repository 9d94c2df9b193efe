"""Held-out preference accuracy: does the policy's implicit reward rank held-out pairs right?

DPO's implicit reward (Rafailov et al. 2023) of a response y to prompt x is
    r(x, y) = β · (log π(y|x) − log π_ref(y|x)),   log π(y|x) = Σ_t log π(y_t | x, y_<t)
summed over the response tokens (the chat template's end-of-turn token included, as in
training: `anatomist.models.chat.encode_response`). A pair is ranked right when
r(x, y⁺) > r(x, y⁻); ties count one half. β > 0 scales every margin alike, so the accuracy does
not depend on it (it only scales the reported margins).

Before training the policy *is* the reference and every r is 0, so for a model evaluated without
a reference (`reference=None`) the ranking is by plain log-probability instead:
    method "logprob":  log π(y⁺|x) > log π(y⁻|x)
(summed log-probs favour shorter responses; the per-token mean ranking is reported beside it as
`accuracy_per_token`). A shift from "logprob" (before) to "implicit_reward" (after) is therefore
not a like-for-like comparison; the implicit-reward accuracy of the base model is 0.5 by
definition.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from anatomist.errors import AnatomistError
from anatomist.progress import progress_bar


@torch.no_grad()
def response_logps(model, tokenizer, prompts: Sequence[Sequence[dict]], responses: Sequence[str], *,
                   max_length: int = 512, batch_size: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """log π(y|x) [N] summed over response tokens, and the number of those tokens [N]."""
    from anatomist.capture.run import collate
    from anatomist.models.chat import encode_response
    from anatomist.shape.losses import sequence_logps

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    logps, counts = [], []
    for b in range(0, len(responses), batch_size):
        enc = [encode_response(tokenizer, tuple(p), r, max_length=max_length)
               for p, r in zip(prompts[b:b + batch_size], responses[b:b + batch_size])]
        ids, attn = collate([e.input_ids for e in enc], pad)                  # [B, T]
        resp = torch.zeros_like(ids, dtype=torch.bool)                          # [B, T]
        for i, e in enumerate(enc):
            resp[i, :len(e.response_mask)] = torch.tensor(e.response_mask)
        logits = model(input_ids=ids.to(device), attention_mask=attn.to(device)).logits.cpu()  # [B, T, V]
        # logits[:, t] predicts token t + 1: align by dropping the last position and the first label
        logps.append(sequence_logps(logits[:, :-1], ids[:, 1:], resp[:, 1:]))
        counts.append(resp.sum(1))
    return torch.cat(logps).double().numpy(), torch.cat(counts).numpy()


def pair_logps(model, tokenizer, pairs, **kw) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(logp chosen [P], logp rejected [P], tokens chosen [P], tokens rejected [P])."""
    prompts = [p.prompt for p in pairs for _ in range(2)]
    responses = [r for p in pairs for r in (p.chosen, p.rejected)]
    lp, n = response_logps(model, tokenizer, prompts, responses, **kw)
    return lp[0::2], lp[1::2], n[0::2], n[1::2]


def ranked(margin: np.ndarray) -> np.ndarray:
    """1 where the chosen side wins, 0 where it loses, 0.5 on a tie."""
    return np.where(margin > 0, 1.0, np.where(margin < 0, 0.0, 0.5))


def preference_accuracy(policy, tokenizer, pairs, *, reference=None, reference_logps=None, beta: float = 0.1,
                        max_length: int = 512, batch_size: int = 4, progress: bool = True) -> tuple[pd.DataFrame, dict]:
    """Per-pair table and summary of how the policy ranks held-out `pairs` (see module docstring).

    reference: the frozen π_ref (the model before DPO). None ranks by the policy's log-probs.
    reference_logps: π_ref's (log π_ref(y⁺|x) [N], log π_ref(y⁻|x) [N]) from `pair_logps`, computed
        once and shared by every policy ranked against the same reference (instead of `reference`)."""
    pairs = list(pairs)
    if reference is not None and reference_logps is not None:
        raise AnatomistError("pass reference or reference_logps, not both")
    if not pairs:
        raise AnatomistError("no held-out pairs to rank")
    if not beta > 0:
        raise AnatomistError(f"beta must be > 0, got {beta}")
    kw = {"max_length": max_length, "batch_size": batch_size}
    ranked_by_reward = reference is not None or reference_logps is not None
    with progress_bar("preference log-probs", total=2 if ranked_by_reward else 1, enabled=progress) as bar:
        lp_c, lp_r, n_c, n_r = pair_logps(policy, tokenizer, pairs, **kw)
        bar.advance()
        frame = pd.DataFrame({"pair_id": [p.id for p in pairs],
                              "topic": [str(p.extra.get("topic", "all")) for p in pairs],
                              "logp_chosen": lp_c, "logp_rejected": lp_r,
                              "n_tokens_chosen": n_c, "n_tokens_rejected": n_r})
        if ranked_by_reward:
            if reference_logps is None:
                ref_c, ref_r, _, _ = pair_logps(reference, tokenizer, pairs, **kw)
            else:
                ref_c, ref_r = (np.asarray(x, dtype=lp_c.dtype) for x in reference_logps)
                assert ref_c.shape == lp_c.shape == ref_r.shape, "reference_logps: one value per pair and side"
            bar.advance()
            frame["ref_logp_chosen"], frame["ref_logp_rejected"] = ref_c, ref_r
            frame["reward_chosen"] = beta * (lp_c - ref_c)
            frame["reward_rejected"] = beta * (lp_r - ref_r)
            frame["margin"] = frame.reward_chosen - frame.reward_rejected
        else:
            frame["margin"] = lp_c - lp_r
    frame["correct"] = ranked(frame.margin.to_numpy())
    return frame, summarize_preference(frame, method="implicit_reward" if ranked_by_reward else "logprob",
                                       beta=beta)


def summarize_preference(frame: pd.DataFrame, *, method: str, beta: float) -> dict:
    from anatomist.evaluate.refusal import wilson

    def block(f: pd.DataFrame) -> dict:
        n, k = len(f), float(f.correct.sum())
        lo, hi = wilson(k, n)
        return {"n": n, "accuracy": k / n, "ci_low": lo, "ci_high": hi,
                "ties": int((f.margin == 0).sum()), "mean_margin": float(f.margin.mean())}

    out = {"method": method, "beta": beta if method == "implicit_reward" else None, **block(frame),
           "by_topic": {t: block(g) for t, g in frame.groupby("topic", sort=True)}}
    if method == "logprob":
        per_token = (frame.logp_chosen / frame.n_tokens_chosen.clip(lower=1)
                     - frame.logp_rejected / frame.n_tokens_rejected.clip(lower=1))
        out["accuracy_per_token"] = float(ranked(per_token.to_numpy()).mean())
    assert not math.isnan(out["accuracy"])
    return out
