"""The first-order forecast as a product step, before any training (evaluate/firstorder.py's kernel).

    anatomist eval --model BASE --audit AUDIT --prompts P --samples 8 --out runs/base_eval
    anatomist predict AUDIT --first-order runs/base_eval        → runs/base_eval/first_order.parquet

reads the audit's pairs (shaped with --lam as the run will be), the DPO settings the run will use
(the trained blocks decide the direction; lr and steps only scale it), and the base model's own
generations with their token ids, and writes per (topic, concept) and per concept (topic "all")
x_first_<preconditioner>: the unscaled first-order shift (sign and ranking; verify cross-fits the
one scale s per run). Beside it first_order.json records what it read, so `anatomist verify` can
pair it with the right target:

- with ≥ 4 samples per prompt the forecast reads only the even samples (`paired.sample_halves`)
  and verify measures ΔB on the odd ones, so predictor and target never share a generation;
  with fewer it reads them all and verify does not score it (R² would be inflated).
- `verify --policy DIR` scores the odd half under both models for the paired ΔB
  (`paired.paired_actual`, lower variance); without it the direct difference of means.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from anatomist.audit.folder import AuditFolder
from anatomist.errors import AnatomistError
from anatomist.evaluate.paired import paired_actual, sample_halves
from anatomist.fileio import atomic_write_parquet, atomic_write_text

__all__ = ["FIRST_ORDER", "FIRST_ORDER_META", "Forecast", "eval_folder", "read_generations", "forecast",
           "read_forecast", "find_forecast", "target_half", "paired_target"]

FIRST_ORDER, FIRST_ORDER_META = "first_order.parquet", "first_order.json"
MIN_HALF_SAMPLES = 4   # two per half: a covariance and an SNIS weight need two


@dataclass
class Forecast:
    rows: pd.DataFrame      # topic (incl. "all"), cluster, label, x_first_<p>
    meta: dict              # first_order.json
    path: Path


def eval_folder(path: str | Path) -> Path:
    path = Path(path)
    return path if path.is_dir() else path.parent


def read_generations(path: str | Path) -> tuple[pd.DataFrame, Path]:
    """The base model's generations in an eval folder and the folder they sit in: `anatomist eval`'s
    run folder (its pre/ when it has one, i.e. was run with --base; else its only model), a
    generation folder, or a table."""
    from anatomist.evaluate.verify import read_eval

    path = Path(path)
    if (path / "pre").is_dir():
        path = path / "pre"
    table = read_eval(path)
    if "role" in table.columns and table["role"].nunique() > 1:
        table = table[table["role"] == "pre"].reset_index(drop=True)
    for col in ("sample", "prompt_ids", "token_ids"):
        if col not in table.columns:
            raise AnatomistError(f"{path}: the generations lack column {col!r} (an eval written before token ids "
                                 "were kept); rerun `anatomist eval` into a fresh folder")
    if not any(c.startswith("c_") for c in table.columns):
        raise AnatomistError(f"{path}: no concept columns c_<k>: run `anatomist eval` with --audit")
    return table, eval_folder(path)


def _temperature(folder: Path, given: float | None) -> float:
    if given is not None:
        return given
    for d in (folder, folder.parent):
        summary = d / "summary.json"
        if summary.is_file():
            t = json.loads(summary.read_text()).get("settings", {}).get("temperature")
            if t is not None:
                return float(t)
    raise AnatomistError(f"{folder}: no summary.json records the sampling temperature; pass --temperature")


def forecast(audit_dir: str | Path, base_eval: str | Path, *, cfg=None, lam: Mapping[int, float] | None = None,
             temperature: float | None = None, grad_share: float = 1.0, preconditions=("plain", "adam"),
             seed: int = 0, pairs=None, loaded=None, device: str = "cpu", progress: bool = True) -> Forecast:
    """Compute and write the first-order forecast (module doc) beside `base_eval`'s table.

    cfg: the DPOConfig of the run to forecast (default: DPOConfig()); lam: λ per concept, shaped as
    `anatomist dpo --lam` shapes; grad_share: a seeded share of the pairs for the gradient pass
    (1: all); pairs: the audited pairs already read (default: the audit's recorded file, strictly);
    loaded: (model, tokenizer) of the audit's model, else loaded by name."""
    from anatomist.data import load_pairs
    from anatomist.evaluate.firstorder import first_order_columns, generation_seqs, run_directional_logps
    from anatomist.shape.pairs import plain
    from anatomist.shape.shaping import shape_pairs
    from anatomist.train.dpo import DPOConfig

    if not 0 < grad_share <= 1:
        raise AnatomistError(f"grad_share must be in (0, 1], got {grad_share}")
    cfg = cfg or DPOConfig()
    audit = AuditFolder(audit_dir)
    base, folder = read_generations(base_eval)
    temperature = _temperature(folder, temperature)
    per_prompt = base.groupby("prompt_id")["sample"].nunique()
    halves = bool(len(per_prompt)) and int(per_prompt.min()) >= MIN_HALF_SAMPLES
    gens = sample_halves(base)[0] if halves else base
    if pairs is None:
        data = audit.data_file
        if data is None or not Path(data).is_file():
            raise AnatomistError(f"{audit.path}: its preference file {data} is not found (audit.json records it)")
        pairs = load_pairs(data)
    pairs = audit.check_data(list(pairs))
    shaped = shape_pairs(pairs, audit, lam=dict(lam)) if lam else plain(pairs)
    n_grad = max(1, round(grad_share * len(shaped)))
    if n_grad < len(shaped):
        shaped = [shaped[i] for i in sorted(random.Random(f"{seed}:grad").sample(range(len(shaped)), n_grad))]
    if loaded is None:
        from anatomist.models import load

        lm = load(audit.model_name)
        loaded = (lm.model, lm.tokenizer)
    model, tok = loaded
    t0 = time.perf_counter()
    dlogp = run_directional_logps(model, tok, shaped, cfg, generation_seqs(gens), temperature=temperature,
                                  preconditions=tuple(preconditions), device=device, progress=progress)
    rows = first_order_columns(gens, dlogp)
    names = audit.names
    rows.insert(2, "label", [names.get(int(c), "") for c in rows["cluster"]])
    meta = {"audit": str(Path(audit_dir).resolve()), "generations": str(folder.resolve()),
            "half": "even" if halves else "all", "n_generations": int(len(base)),
            "n_used": int(len(gens)), "temperature": temperature, "pairs": len(pairs), "grad_pairs": n_grad,
            "grad_share": grad_share, "lam": {str(k): float(v) for k, v in (lam or {}).items()},
            "preconditions": list(preconditions), "dpo": asdict(cfg), "seconds": time.perf_counter() - t0,
            "definition": "x_first = mean over a topic's prompts of Cov(c, D_d log π_T) over the base samples of "
                          "each prompt; d = the run's DPO direction at the reference; unscaled (verify cross-fits s)"}
    path = folder / FIRST_ORDER
    atomic_write_parquet(rows, path)
    atomic_write_text(folder / FIRST_ORDER_META, json.dumps(meta, indent=1))
    return Forecast(rows, meta, path)


def read_forecast(path: str | Path) -> Forecast | None:
    """A forecast by its parquet path or its folder; None when the folder has none."""
    path = Path(path)
    table = path / FIRST_ORDER if path.is_dir() else path
    if path.is_dir() and not table.is_file():
        return None
    meta_path = table.with_name(FIRST_ORDER_META)
    if not table.is_file() or not meta_path.is_file():
        raise AnatomistError(f"{table}: a forecast needs {FIRST_ORDER} and {FIRST_ORDER_META} side by side "
                             "(anatomist predict --first-order)")
    return Forecast(pd.read_parquet(table), json.loads(meta_path.read_text()), table)


def find_forecast(given: str | Path | None, pre: str | Path | None, run_dir: str | Path) -> Forecast | None:
    """The forecast `given`, else one beside the pre table (--pre's folder, RUN_DIR/pre, RUN_DIR)."""
    if given is not None:
        return read_forecast(given)
    places = ([eval_folder(pre)] if pre is not None else []) + [Path(run_dir) / "pre", Path(run_dir)]
    return next((fc for d in places if d.is_dir() and (fc := read_forecast(d)) is not None), None)


def target_half(fc: Forecast, pre: pd.DataFrame) -> pd.DataFrame | None:
    """The base generations the target may use beside this forecast: the odd half of `pre` when
    the forecast read the even half (None when it read every sample: nothing is left)."""
    if fc.meta.get("half") != "even":
        return None
    if len(pre) != fc.meta.get("n_generations"):
        raise AnatomistError(f"{fc.path}: the forecast read {fc.meta.get('n_generations')} base generations, the "
                             f"run's pre table has {len(pre)}: forecast and verify must read the same base eval")
    return sample_halves(pre)[1]


def paired_target(target: pd.DataFrame, post: pd.DataFrame, clusters: list[int], *, base_model, policy,
                  temperature: float, min_ess: float = 0.3, device: str = "cpu") -> tuple[pd.DataFrame, dict]:
    """The paired ΔB on `target` (base generations): their log-probs under `policy` and `base_model`
    weigh them (`paired.paired_actual`); the post model's own samples are the fallback."""
    from anatomist.evaluate.firstorder import generation_logps, generation_seqs

    seqs = generation_seqs(target)
    log_ratio = (generation_logps(policy, seqs, temperature=temperature, device=device)
                 - generation_logps(base_model, seqs, temperature=temperature, device=device))
    return paired_actual(target, np.asarray(log_ratio), post, clusters, min_ess=min_ess)
