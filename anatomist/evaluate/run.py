"""`run_eval`: behaviour of a model (before vs. after DPO) on held-out prompts — the library
function behind `anatomist eval` (cli.py). Output folder:
    scores.parquet   one row per generation (columns: behaviour.py), `role` "pre" (base) / "post"
    summary.json     settings; `rows`: per (topic, metric) means with bootstrap 95% CIs and, with
                     a base, ΔB = post − pre (behaviour.summarize); `preference`; `safety`
    preference.parquet, safety.parquet   per pair / per safety prompt (when asked for)
    eval.html        the report (report.py)
    pre/, post/      generation caches and pooled latents (rerun to resume)
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Sequence

import pandas as pd

from anatomist.fileio import atomic_write_parquet, atomic_write_text

log = logging.getLogger(__name__)


def _json_safe(obj):
    """NaN / inf (an undefined precision, an empty group) become null: summary.json stays strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def _user_texts(path: str | Path) -> list[str]:
    """The last user turn of every pair in a preference file (e.g. the training data)."""
    from anatomist.data import load_pairs

    return [[m["content"] for m in p.prompt if m["role"] == "user"][-1] for p in load_pairs(path)
            if any(m["role"] == "user" for m in p.prompt)]


def run_eval(model: str, prompts: str | Path, out: str | Path, *, audit: str | Path | None = None,
             base: str | None = None, pairs: str | Path | Sequence | None = None, safety: bool = False,
             safety_exclude: str | Path | None = None,
             samples_per_prompt: int = 2, max_new_tokens: int = 96, temperature: float = 0.7, batch_size: int = 32,
             seed: int = 0, limit: int | None = None, safety_n: int = 50, beta: float = 0.1, n_boot: int = 1000,
             progress: bool = True) -> Path:
    """Evaluate `model` (and `base` under the same seeds) and write the folder described above.

    safety_exclude: a preference file (the training data) whose prompts the safety sets skip — the
    organism's `harmful` topic is drawn from StrongREJECT. pairs: a preference file, or pairs
    already read (the command line reads them before any model loads)."""
    from anatomist.data import load_pairs
    from anatomist.evaluate.behaviour import Scorer, evaluate_behaviour, first_per_topic, read_prompts, summarize
    from anatomist.evaluate.preference import preference_accuracy
    from anatomist.evaluate.refusal import safety_eval
    from anatomist.evaluate.report import render_eval
    from anatomist.models import load

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    held = read_prompts(prompts)
    if limit is not None:
        held = first_per_topic(held, limit)
    loaded = {"post": load(model)}
    names = {"post": model}
    if base is not None:
        loaded["pre"], names["pre"] = load(base), base
    scorer, labels = None, {}
    if audit is not None:
        from anatomist.audit.folder import CLUSTERS, AuditFolder

        folder = AuditFolder(audit)
        # The audit's model is the instrument; reuse it when it is already loaded.
        same = next((loaded[r] for r in ("pre", "post") if r in loaded and names[r] == folder.model_name), None)
        scorer = Scorer.from_audit(audit, loaded=same)
        labels = folder.labels if folder.has(CLUSTERS) else {}
    frames = {}
    for role in ("pre", "post"):
        if role in loaded:
            lm = loaded[role]
            frames[role] = evaluate_behaviour(
                lm.model, lm.tokenizer, held, out_dir=out / role, scorer=scorer, samples_per_prompt=samples_per_prompt,
                seed=seed, max_new_tokens=max_new_tokens, temperature=temperature, batch_size=batch_size,
                model_name=names[role], progress=progress).assign(role=role)
    atomic_write_parquet(pd.concat(list(frames.values()), ignore_index=True), out / "scores.parquet")
    rows = summarize(frames["post"], frames.get("pre"), n_boot=n_boot, seed=seed)
    rows.insert(3, "label", [labels.get(int(m[2:]), "") if m.startswith("c_") else m.split("_", 1)[-1]
                             for m in rows.metric])
    summary = {"model": model, "base": base, "audit": str(audit) if audit else None, "prompts": str(prompts),
               "settings": {"samples_per_prompt": samples_per_prompt, "max_new_tokens": max_new_tokens,
                            "temperature": temperature, "batch_size": batch_size, "seed": seed,
                            "n_prompts": len(held), "n_boot": n_boot},
               "tags": {role: frame.model.iloc[0] for role, frame in frames.items()},
               "rows": json.loads(rows.to_json(orient="records"))}
    if pairs is not None:
        pair_set = list(load_pairs(pairs) if isinstance(pairs, (str, Path)) else pairs)
        pref = {}
        tables = []
        post = loaded["post"]
        ref = loaded["pre"].model if "pre" in loaded else None
        table, pref["post"] = preference_accuracy(post.model, post.tokenizer, pair_set, reference=ref, beta=beta,
                                                  progress=progress)
        tables.append(table.assign(role="post"))
        if "pre" in loaded:
            table, pref["pre"] = preference_accuracy(ref, loaded["pre"].tokenizer, pair_set, beta=beta,
                                                     progress=progress)
            tables.append(table.assign(role="pre"))
        atomic_write_parquet(pd.concat(tables, ignore_index=True), out / "preference.parquet")
        summary["preference"] = pref
    if safety:
        tables, rates = [], {}
        exclude = _user_texts(safety_exclude) if safety_exclude is not None else []
        for role, lm in loaded.items():
            # the refusal classifier reads only a response's opening: 64 new tokens are plenty
            table, rates[role] = safety_eval(lm.model, lm.tokenizer, n=safety_n, seed=seed, batch_size=batch_size,
                                             max_new_tokens=min(64, max_new_tokens),
                                             model_name=frames[role].model.iloc[0], exclude=exclude,
                                             cache_dir=out / role / "safety", progress=progress)
            tables.append(table.assign(role=role))
        atomic_write_parquet(pd.concat(tables, ignore_index=True), out / "safety.parquet")
        summary["safety"] = rates
    atomic_write_text(out / "summary.json", json.dumps(_json_safe(summary), indent=1, allow_nan=False))
    render_eval(out)
    return out
