"""Behaviour of a model on held-out prompts: sample, then score every generation.

    frame = evaluate_behaviour(model, tokenizer, read_prompts("runs/organism/heldout_prompts.jsonl"),
                               audit_dir="runs/audit", out_dir="runs/eval/post")

`scores` table — one row per generation; the input of predicted-vs-actual (issue 7):
    prompt_id    the held-out prompt's id
    topic        its topic (from the prompts file)
    sample       0 … samples_per_prompt − 1
    model        the generating model's tag (`model_tag`: name + weights fingerprint)
    text         the generation (special tokens removed)
    n_tokens     sampled tokens (EOS included when reached)
    finished     EOS reached within max_new_tokens
    prompt_ids   the chat-templated prompt's token ids; token_ids: the sampled ones (EOS included),
                 what log-probs are taken of (the first-order predictor, the paired ΔB)
    c_<k>        the audit's standardized concept score of cluster k on this response (DESIGN.md
                 "c"): `Concepts.scores` of the response's pooled SAE latents, pooled exactly as
                 the audit pools (`pool_features` → `Latents.pooled()`, the audit's pooling, layer,
                 max_length, chat template and response-token mask). Only with an audit.
    det_<trait>  the organism detector's score (`TRAITS[trait].score(text)`)
    fires_<trait> `TRAITS[trait].fires(text)`
    refuses      the refusal classifier (`anatomist.evaluate.refusal.refuses`)
The CLI's scores.parquet adds `role` ("pre": the --base model, "post": the evaluated model).
ΔB_{k,C} = mean c_C(post) − mean c_C(pre) over a topic's generations (`summarize`).

Who measures: the policy only *generates*. Concept scores are read by the audit's own model and
SAE (the frozen base, DESIGN.md: c is computed on the frozen base model), so pre and post texts
are measured with one instrument and c keeps the audit's standardisation.

Sampling: `anatomist.spec_decode.batched` — batched, seed per batch, cached under
out_dir/generations/<hash of settings + requests> and resumed after a kill. Two models evaluated
with the same prompts and settings get the same batches and the same seeds. Pooled latents are
cached in out_dir/latents/<hash> (resumable); the table is written atomically.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from anatomist.audit.scorer import Scorer, score_texts  # noqa: F401  (moved down a floor; re-exported)
from anatomist.data.heldout import HeldoutPrompt, first_per_topic, read_prompts  # noqa: F401  (moved; re-exported)
from anatomist.errors import AnatomistError
from anatomist.fileio import atomic_write_parquet

TABLE = "behaviour.parquet"


def model_tag(model, name: str | None = None) -> str:
    """`name` (default: the model's config path) + a fingerprint of every weight, so a trained
    policy saved under the base's name still gets its own generation cache."""
    h = hashlib.sha256()
    for key, t in sorted(model.state_dict().items()):
        h.update(key.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    name = name or getattr(model.config, "_name_or_path", "") or type(model).__name__
    return f"{Path(str(name)).name}@{h.hexdigest()[:12]}"


def detector_columns(texts: Sequence[str]) -> dict[str, list]:
    """det_<trait>, fires_<trait> for every organism trait, and the refusal classifier."""
    from anatomist.evaluate.refusal import refuses
    from anatomist.organism.traits import TRAITS

    cols: dict[str, list] = {}
    for name, trait in TRAITS.items():
        cols[f"det_{name}"] = [float(trait.score(t)) for t in texts]
        cols[f"fires_{name}"] = [bool(trait.fires(t)) for t in texts]
    cols["refuses"] = [refuses(t) for t in texts]
    return cols


def evaluate_behaviour(model, tokenizer, prompts: Sequence[HeldoutPrompt], *, out_dir: str | Path,
                       audit_dir: str | Path | None = None, sae=None, scorer: Scorer | None = None,
                       samples_per_prompt: int = 2, seed: int = 0, max_new_tokens: int = 96,
                       temperature: float = 0.7, batch_size: int = 32, model_name: str | None = None,
                       progress: bool = True) -> pd.DataFrame:
    """Sample `samples_per_prompt` responses per prompt, score them, write out_dir/behaviour.parquet.

    Concept columns need an audit: `scorer`, or `audit_dir` (its model is loaded; `sae` overrides
    its SAE). Without either, only the detector columns are computed. See the module docstring."""
    from anatomist.spec_decode.batched import GenRequest, GenSettings, generate, run_hash

    if samples_per_prompt < 1:
        raise AnatomistError(f"samples_per_prompt must be >= 1, got {samples_per_prompt}")
    if not prompts:
        raise AnatomistError("no prompts to evaluate")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if scorer is None and audit_dir is not None:
        scorer = Scorer.from_audit(audit_dir, sae=sae)
    tag = model_tag(model, model_name)
    requests = [GenRequest(f"{p.id}#{s}", p.messages, "", max_new_tokens)
                for p in prompts for s in range(samples_per_prompt)]
    settings = GenSettings(model=tag, temperature=temperature, batch_size=batch_size, seed=seed)
    results = generate(model, tokenizer, requests, settings, progress=progress,
                       cache_dir=out_dir / "generations" / run_hash(settings, requests))
    gens = [results[r.key] for r in requests]
    texts = [g.text for g in gens]
    frame = pd.DataFrame({
        "prompt_id": [p.id for p in prompts for _ in range(samples_per_prompt)],
        "topic": [p.topic for p in prompts for _ in range(samples_per_prompt)],
        "sample": [s for _ in prompts for s in range(samples_per_prompt)],
        "model": tag, "text": texts, "n_tokens": [g.n_tokens for g in gens],
        "finished": [g.finished for g in gens],
        "prompt_ids": [list(g.prompt_ids) for g in gens], "token_ids": [list(g.token_ids) for g in gens],
    })
    if scorer is not None:
        c = score_texts(scorer, [r.messages for r in requests], texts, out_dir / "latents", progress=progress)
        frame = pd.concat([frame, pd.DataFrame(c, columns=[f"c_{k}" for k in range(c.shape[1])])], axis=1)
    frame = pd.concat([frame, pd.DataFrame(detector_columns(texts))], axis=1)
    atomic_write_parquet(frame, out_dir / TABLE)
    return frame


# -- summary: means per (topic, column) and the shift ΔB with bootstrap CIs -------------------------

def metric_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c.startswith(("c_", "det_", "fires_")) or c == "refuses"]


def prompt_means(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Per-prompt means of `columns` over its samples (index: prompt_id, plus topic column)."""
    grouped = frame.groupby("prompt_id", sort=True)
    means = grouped[columns].mean().astype(np.float64)
    means.insert(0, "topic", grouped["topic"].first())
    return means


def _ci(values: np.ndarray, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from anatomist.audit.stats import bootstrap_mean_ci

    # The same seed draws the same resampled prompts for pre, post and their difference.
    return bootstrap_mean_ci(values, n_boot=n_boot, rng=np.random.default_rng(seed))


def summarize(post: pd.DataFrame, pre: pd.DataFrame | None = None, *, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """One row per (topic, metric) — topics plus "all": post mean with a 95% CI and, given `pre`
    (same prompts), pre mean, ΔB = post − pre and its CI. The unit of resampling is the prompt
    (its samples are averaged first): samples of one prompt are not independent, and pre and post
    share prompts, so the difference is resampled paired."""
    columns = metric_columns(post)
    a = prompt_means(post, columns)
    b = None
    if pre is not None:
        columns = [c for c in columns if c in pre.columns]
        b = prompt_means(pre, columns)
        if list(a.index) != list(b.index):
            raise AnatomistError("before and after were evaluated on different prompts")
    rows = []
    for topic in [*sorted(a.topic.unique()), "all"]:
        sel = np.ones(len(a), dtype=bool) if topic == "all" else (a.topic == topic).to_numpy()
        x = a.loc[sel, columns].to_numpy()                                      # [P, M]
        lo, hi = _ci(x, n_boot, seed)
        block = {"topic": topic, "metric": columns, "n_prompts": int(sel.sum()),
                 "post": x.mean(0), "post_ci_low": lo, "post_ci_high": hi}
        if b is not None:
            y = b.loc[sel, columns].to_numpy()                                  # [P, M]
            lo_b, hi_b = _ci(y, n_boot, seed)
            lo_d, hi_d = _ci(x - y, n_boot, seed)
            block.update({"pre": y.mean(0), "pre_ci_low": lo_b, "pre_ci_high": hi_b,
                          "delta": x.mean(0) - y.mean(0), "delta_ci_low": lo_d, "delta_ci_high": hi_d})
        rows.append(pd.DataFrame(block))
    out = pd.concat(rows, ignore_index=True)
    kind = out.metric.str.extract(r"^(c|det|fires)_", expand=False).fillna("refuses")
    out.insert(1, "kind", kind.map({"c": "concept", "det": "trait", "fires": "trait_rate", "refuses": "refusal"}))
    return out
