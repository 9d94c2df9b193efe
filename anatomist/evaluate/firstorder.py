"""First-order prediction of how a DPO run moves concept scores (DESIGN.md "First-order prediction").

For any score c of a response and a small change δ(y) of the policy's log-probs (π' ∝ π·e^δ),

    E_{π'}[c] − E_π[c] = Cov_{y∼π}(c(y), δ(y)) + O(δ²),

and a parameter step η·d moves log π(y) by δ(y) = η·D_d log π(y) + O(η²), with D_d the
directional derivative ∇_θ log π(y)·d. DPO's first step goes along d = g = −∇L at the
reference, so per held-out prompt x of topic k and concept C

    ΔB_{k,C} ≈ s · mean_{x∈k} Cov_{y∼π(·|x)}(c_C(y), D_g log π_T(y)),

one scale s per run (it absorbs lr, steps and the optimizer's scaling; cross-fitted, never
carried from another run). What this needs: ONE gradient pass over the pairs (`dpo_direction`)
and one forward-mode (JVP) pass over the base model's own generations (`directional_logps`), no
per-sequence gradients.

Details that decide whether the numbers mean anything:
- the gradient is the run's own loss (`anatomist.train.dpo.batch_dpo`: the same shaped offsets,
  token masks, steering and trained blocks) at the reference, whose log-probs are the cached
  constants (a live reference would cancel the policy and the gradient would vanish);
- generations are scored on the token ids that were sampled (never re-tokenised text) under the
  distribution they were sampled from, log_softmax(z/T);
- c is centred within each prompt (`covariance_shift`): the covariance is over responses to one
  prompt, then averaged over a topic's prompts;
- AdamW's first step is m̂/(√v̂ + ε) = g/|g| elementwise, a sign step: `PRECONDITIONERS["adam"]`
  is that direction, pre-registered beside the plain gradient;
- over a whole epoch sequence log-probs move far past the linear regime; `tilt_shift` is the
  exponential-tilt form E_{π·e^{sδ}}[c] − E_π[c] with self-normalised weights within a prompt;
- the multi-step variant (`steps_logps`, predictor "first_steps") replaces the JVP by k real
  optimizer steps of the run's own DPO on a subsample, δ = log π_k − log π_0 on the same
  generations (two plain forwards): Adam's actual trajectory instead of its first step, and no
  forward-mode pass. Measured as a separate predictor, as the issue asks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import time
from contextlib import contextmanager

import numpy as np
import pandas as pd
import torch

from anatomist.errors import AnatomistError
from anatomist.shape.pairs import ShapedPair
from anatomist.shape.steer import Steer
from anatomist.train.batches import Seq, collate, collate_rows
from anatomist.train.dpo import DPOConfig, batch_dpo, make_trainable, prepare, sequence_sums
from anatomist.train.split import SplitLM, StateCache, to_device

__all__ = ["PRECONDITIONERS", "delta_agreement", "dpo_direction", "tempered_sequence_logps", "eager_attention",
           "directional_logps", "per_prompt_shift", "covariance_shift", "tilt_shift", "generation_seqs",
           "run_directional_logps", "generation_logps", "steps_logps", "first_order_columns", "first_order_rows"]


def _plain(grads: list[torch.Tensor]) -> list[torch.Tensor]:
    return grads


def _adam_first_step(grads: list[torch.Tensor]) -> list[torch.Tensor]:
    # Adam's bias-corrected first update: m̂ = g, v̂ = g², so m̂/√v̂ = sign(g) (ε ≪ |g| ignored).
    return [g.sign() for g in grads]


PRECONDITIONERS: dict[str, Callable[[list[torch.Tensor]], list[torch.Tensor]]] = {
    "plain": _plain,
    "adam": _adam_first_step,
}


def dpo_direction(split: SplitLM, cache: StateCache, seqs: Sequence[Seq], offsets: torch.Tensor,
                  cfg: DPOConfig, params: Sequence[torch.Tensor], *, pad_id: int, device="cpu",
                  pairs: Sequence[int] | None = None, batch_size: int = 8, steer: Steer | None = None
                  ) -> list[torch.Tensor]:
    """The descent direction of DPO's first step at the reference: g = −∇_θ mean_i L_i over
    `pairs` (default all), L the run's own (shaped) loss; `PRECONDITIONERS` turn it into the
    optimizer's step. One tensor per parameter in `params` (the trained ones, requires_grad).
    `offsets` [P] as in `train_dpo`."""
    params = list(params)
    assert params and all(p.requires_grad for p in params), "params are the trained parameters"
    idx = list(range(len(seqs) // 2)) if pairs is None else list(pairs)
    for p in params:
        p.grad = None
    for start in range(0, len(idx), batch_size):
        chunk = idx[start:start + batch_size]
        out = batch_dpo(split, cache, collate(seqs, chunk, pad_id), offsets[chunk], cfg, device, steer)
        (out.loss.sum() / len(idx)).backward()
    grads = [-(p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)) for p in params]
    for p in params:
        p.grad = None
    return grads


def tempered_sequence_logps(split: SplitLM, final: torch.Tensor, batch, temperature: float) -> torch.Tensor:
    """Σ_t log softmax(z_t/T)[y_t] over each row's response tokens [R], from the final hidden
    states [R, T, D]: the distribution the generations were sampled from, not the untempered one."""
    logits = split.lm_head(final[batch.pred_rows, batch.pred_pos]).float()  # [N, V]
    tok = (logits / temperature).log_softmax(-1).gather(-1, batch.targets[:, None]).squeeze(-1)  # [N]
    return sequence_sums(tok, batch.keep, batch.pred_rows, len(batch.seq_index))


@contextmanager
def eager_attention(model):
    """Forward-mode AD is not implemented for the fused SDPA kernels; eager attention is the same
    math, so the JVP runs under it and the model gets its own implementation back afterwards."""
    old = model.config._attn_implementation
    if old != "eager":
        model.set_attn_implementation("eager")
    try:
        yield
    finally:
        if old != "eager":
            model.set_attn_implementation(old)


def _jvp_rows(split, h, batch, params, direction, temperature) -> torch.Tensor:
    def f(*values):
        return tempered_sequence_logps(split, split.top_with(h, batch.attention_mask, params, values), batch, temperature)

    return torch.func.jvp(f, tuple(p.detach() for p in params), tuple(direction))[1]   # [R]


def directional_logps(split: SplitLM, seqs: Sequence[Seq], direction: Sequence[torch.Tensor],
                      params: Sequence[torch.Tensor], *, temperature: float = 1.0, pad_id: int = 0,
                      batch_size: int = 16, device="cpu") -> torch.Tensor:
    """D_d log π_T(y) = ∇_θ log π_T(y)·d for every sequence [N] (prompt + sampled response ids in
    `seqs`), exact, by forward-mode AD (a JVP costs about two forwards of the trained top; the
    frozen bottom runs once, without AD). No finite-difference fallback: in fp32 its rounding error
    is far above the JVP's (tests/test_evaluate_firstorder.py holds the JVP to 1e-4 of autograd)."""
    if temperature <= 0:
        raise AnatomistError(f"temperature must be > 0, got {temperature}")
    params, direction = list(params), list(direction)
    assert len(params) == len(direction) and all(p.shape == d.shape for p, d in zip(params, direction))
    direction = [d.to(p.device, p.dtype) for p, d in zip(params, direction)]
    out = torch.empty(len(seqs), dtype=torch.float64)
    with eager_attention(split.model):
        for start in range(0, len(seqs), batch_size):
            rows = list(range(start, min(start + batch_size, len(seqs))))
            batch = to_device(collate_rows(seqs, rows, pad_id), device)
            h = split.bottom(batch.input_ids, batch.attention_mask)        # [R, T, D], no grad
            out[start:start + len(rows)] = _jvp_rows(split, h, batch, params, direction, temperature).double().cpu()
    return out


def per_prompt_shift(c: np.ndarray, dlogp: np.ndarray, prompt: np.ndarray, topic: np.ndarray, n_topics: int,
                     shift: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """`shift(c_x [n, C], δ_x [n]) → [C]` on each prompt's samples (prompts with n ≥ 2), averaged
    over each topic's prompts → [K, C] (NaN for a topic without such a prompt) and over all
    prompts → [C]. c [N, C]; dlogp, prompt, topic [N] (topic 0..K−1, constant within a prompt)."""
    c = np.asarray(c, dtype=np.float64)
    dlogp = np.asarray(dlogp, dtype=np.float64)
    prompt, topic = np.asarray(prompt), np.asarray(topic)
    assert c.ndim == 2 and len(c) == len(dlogp) == len(prompt) == len(topic)
    order = np.argsort(prompt, kind="stable")
    _, starts = np.unique(prompt[order], return_index=True)
    values, tops = [], []
    for rows in np.split(order, starts[1:]):
        if len(rows) < 2:
            continue
        assert len(set(topic[rows].tolist())) == 1, "a prompt belongs to one topic"
        values.append(shift(c[rows], dlogp[rows]))
        tops.append(int(topic[rows[0]]))
    per_topic = np.full((n_topics, c.shape[1]), np.nan)
    if not values:
        return per_topic, np.full(c.shape[1], np.nan)
    arr, tops_arr = np.stack(values), np.array(tops)                          # [X, C], [X]
    for k in range(n_topics):
        if (tops_arr == k).any():
            per_topic[k] = arr[tops_arr == k].mean(0)
    return per_topic, arr.mean(0)


def _covariance(c: np.ndarray, d: np.ndarray) -> np.ndarray:
    return (d - d.mean()) @ (c - c.mean(0)) / (len(d) - 1)                    # unbiased Cov [C]


def covariance_shift(c: np.ndarray, dlogp: np.ndarray, prompt: np.ndarray, topic: np.ndarray,
                     n_topics: int) -> tuple[np.ndarray, np.ndarray]:
    """First-order shift per (topic, concept) [K, C] and per concept [C] (unscaled: s = 1): per
    prompt the unbiased Cov_x = Σ_j (c_j − c̄_x)(δ_j − δ̄_x)/(n_x − 1) (c centred within the
    prompt), then averaged (`per_prompt_shift`)."""
    return per_prompt_shift(c, dlogp, prompt, topic, n_topics, _covariance)


def tilt_shift(c: np.ndarray, dlogp: np.ndarray, prompt: np.ndarray, topic: np.ndarray, n_topics: int,
               scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Exponential-tilt shift per (topic, concept) [K, C] and per concept [C]: within each prompt
    Σ_j w_j c_j − c̄_x with w = softmax(scale·δ) over its samples (self-normalised importance
    weights of π·e^{scale·δ} against π). For small `scale` it is scale × the biased covariance,
    i.e. scale·(n−1)/n × `covariance_shift`."""
    def tilt(cx: np.ndarray, dx: np.ndarray) -> np.ndarray:
        z = scale * dx
        w = np.exp(z - z.max())
        return (w / w.sum()) @ cx - cx.mean(0)

    return per_prompt_shift(c, dlogp, prompt, topic, n_topics, tilt)


def delta_agreement(base: pd.DataFrame, dlogp: dict[str, np.ndarray], truth: np.ndarray) -> dict[str, float]:
    """Within-prompt Pearson r of each predicted δ in `dlogp` [N] with `truth` [N] (the trained
    policy's own log-prob change on the same generations, rows of `base`): does the predicted
    direction move the generations the way training did? Both are centred within each prompt
    first (the covariance form only reads δ relative to the prompt's other samples)."""
    prompt = base["prompt_id"].astype(str).to_numpy()

    def centred(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        return x - pd.Series(x).groupby(prompt).transform("mean").to_numpy()

    t = centred(truth)
    out = {}
    for name, d in dlogp.items():
        x = centred(d)
        denom = np.sqrt((x ** 2).sum() * (t ** 2).sum())
        out[name] = float((x * t).sum() / denom) if denom > 0 else float("nan")
    return out


def generation_seqs(base: pd.DataFrame) -> list[Seq]:
    """The base model's generations (an eval table with prompt_ids / token_ids) as sequences whose
    response is exactly the sampled tokens."""
    missing = [c for c in ("prompt_ids", "token_ids") if c not in base.columns]
    if missing:
        raise AnatomistError(f"base generations lack {', '.join(missing)}: they come from an eval written before "
                             "token ids were kept; rerun `anatomist eval` into a fresh folder")
    seqs = []
    for i, (p, t) in enumerate(zip(base["prompt_ids"], base["token_ids"])):
        p, t = [int(x) for x in p], [int(x) for x in t]
        if not p or not t:
            raise AnatomistError(f"base generation row {i}: empty prompt or response token ids (an old cache?)")
        seqs.append(Seq(tuple(p + t), len(p), (1.0,) * len(t)))
    return seqs


def run_directional_logps(model, tokenizer, pairs: Sequence[ShapedPair], cfg: DPOConfig, gen: Sequence[Seq], *,
                          temperature: float, preconditions: Sequence[str] = ("plain",), steer: Steer | None = None,
                          cache_dir=None, device="cpu", batch_size: int = 8, progress: bool = True,
                          timings: dict | None = None) -> dict[str, np.ndarray]:
    """{preconditioner: D_d log π_T [N]} of the sequences `gen`, d = the direction of the DPO run
    `cfg` would take on `pairs` (the shaped pairs it trains on: offsets and token masks included)
    at the reference `model`, over the blocks that run trains, preconditioned each way in
    `preconditions` (one gradient pass serves them all). `model` is left as it was (trainable
    flags restored). timings: filled with seconds — "gradient" (reference forward and gradient
    pass) and "jvp_<p>" per preconditioner."""
    unknown = [p for p in preconditions if p not in PRECONDITIONERS]
    if unknown or not preconditions:
        raise AnatomistError(f"preconditions must be among {', '.join(PRECONDITIONERS)}, got {list(preconditions)}")
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    t0 = time.perf_counter()
    try:
        prep = prepare(model, tokenizer, pairs, cfg, cache_dir=cache_dir, device=device, steer=steer, progress=progress)
        make_trainable(model, prep.split, cfg)
        params = [p for p in model.parameters() if p.requires_grad]
        offsets = torch.tensor([float(p.offset) for p in pairs], dtype=torch.float32)
        g = dpo_direction(prep.split, prep.cache, prep.seqs, offsets, cfg, params, pad_id=prep.pad_id, device=device,
                          batch_size=batch_size, steer=steer)
        if timings is not None:
            timings["gradient"] = time.perf_counter() - t0
        out = {}
        for name in preconditions:
            t = time.perf_counter()
            out[name] = directional_logps(prep.split, gen, PRECONDITIONERS[name](g), params, temperature=temperature,
                                          pad_id=prep.pad_id, batch_size=batch_size, device=device).numpy()
            if timings is not None:
                timings[f"jvp_{name}"] = time.perf_counter() - t
        return out
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(flags[n])


@torch.no_grad()
def generation_logps(model, gen: Sequence[Seq], *, temperature: float, pad_id: int = 0, batch_size: int = 16,
                     device="cpu") -> np.ndarray:
    """log π_T(y|x) [N] of each sequence's response tokens under `model` (one plain forward per
    batch): what the paired ΔB (`evaluate.paired`) weighs the base samples by."""
    if temperature <= 0:
        raise AnatomistError(f"temperature must be > 0, got {temperature}")
    split = SplitLM(model, 0)
    out = np.empty(len(gen), dtype=np.float64)
    for start in range(0, len(gen), batch_size):
        rows = list(range(start, min(start + batch_size, len(gen))))
        batch = to_device(collate_rows(gen, rows, pad_id), device)
        final = split.top(split.bottom(batch.input_ids, batch.attention_mask), batch.attention_mask)
        out[start:start + len(rows)] = tempered_sequence_logps(split, final, batch, temperature).double().cpu().numpy()
    return out


def steps_logps(model, tokenizer, pairs: Sequence[ShapedPair], cfg: DPOConfig, gen: Sequence[Seq], *, steps: int,
                temperature: float, work_dir, cache_dir=None, device="cpu", progress: bool = True) -> np.ndarray:
    """δ_k(y) = log π_k,T(y) − log π_0,T(y) [N] of the sequences `gen`: π_k is a copy of `model`
    after `steps` optimizer steps of the DPO run `cfg` (its optimizer, schedule and trained blocks,
    compressed to `steps`) on `pairs` (a subsample of the run's shaped pairs), π_0 = `model`, left
    untouched. work_dir holds the short run's checkpoint (a killed call resumes)."""
    import copy
    from dataclasses import replace

    from anatomist.train.dpo import train_dpo

    if steps < 1:
        raise AnatomistError(f"steps must be >= 1, got {steps}")
    policy = copy.deepcopy(model)
    train_dpo(policy, tokenizer, pairs, replace(cfg, steps=steps), work_dir, cache_dir=cache_dir, save_model=False,
              progress=progress)
    policy.eval()
    after = generation_logps(policy, gen, temperature=temperature, device=device)
    del policy
    return after - generation_logps(model, gen, temperature=temperature, device=device)


def first_order_columns(base: pd.DataFrame, dlogp: dict[str, np.ndarray]) -> pd.DataFrame:
    """Per (topic, cluster), and per cluster on topic "all": x_first_<preconditioner> = mean over
    prompts of Cov(c_C, δ) within each prompt, δ = dlogp[preconditioner] [N] of the rows of
    `base` (an eval table: prompt_id, topic, c_0 … c_{C−1}). Unscaled (s = 1)."""
    clusters = sorted(int(c[2:]) for c in base.columns if c.startswith("c_") and c[2:].isdigit())
    if not clusters:
        raise AnatomistError("base generations have no concept columns c_<k>: evaluate them with the audit")
    names = sorted(base["topic"].astype(str).unique())
    topic = base["topic"].astype(str).map({k: i for i, k in enumerate(names)}).to_numpy()
    prompt = base["prompt_id"].astype(str).to_numpy()
    c = base[[f"c_{k}" for k in clusters]].to_numpy(np.float64)                          # [N, C]
    frame = pd.DataFrame({"topic": [*(n for n in names for _ in clusters), *(["all"] * len(clusters))],
                          "cluster": clusters * (len(names) + 1)})
    for name, d in dlogp.items():
        assert len(d) == len(base), "one δ per generation"
        per_topic, per_concept = covariance_shift(c, d, prompt, topic, len(names))
        frame[f"x_first_{name}"] = np.concatenate([per_topic.ravel(), per_concept])
    return frame


def first_order_rows(model, tokenizer, pairs: Sequence[ShapedPair], cfg: DPOConfig, base: pd.DataFrame, *,
                     temperature: float, preconditions: Sequence[str] = ("plain", "adam"), **kw) -> pd.DataFrame:
    """The first-order predictor's inputs per (topic, cluster), and per cluster on topic "all":
    x_first_<p> = mean over prompts of Cov(c_C, D_d log π_T) on the base model's generations
    `base` (an eval table: prompt_id, topic, prompt_ids, token_ids, c_0 … c_{C−1}; T their
    sampling temperature), d preconditioned by p, as in `run_directional_logps` (which takes
    **kw). Unscaled: the run's scale s is cross-fitted by `verify`."""
    if not any(c.startswith("c_") and c[2:].isdigit() for c in base.columns):
        raise AnatomistError("base generations have no concept columns c_<k>: evaluate them with the audit")
    dlogp = run_directional_logps(model, tokenizer, pairs, cfg, generation_seqs(base), temperature=temperature,
                                  preconditions=preconditions, **kw)
    return first_order_columns(base, dlogp)
