"""Check the audit's predictions against a real DPO run: actual ΔB, R², Spearman ρ, λ sweeps.

Actual shift (DESIGN.md): ΔB_{k,C} = mean c_C(post) − mean c_C(pre) over the generations on
held-out prompts of topic k. Its 95% CI resamples prompts (pre and post paired: the same
prompts, so one resample draws both), percentile bootstrap; `se` is the bootstrap sd.

Scoring, per predictor (predict.PREDICTORS), on rows never used to fit its calibration:
    cross-fitting across topics: for each topic k, coef = least squares of actual on the
    predictor's inputs X over the rows of the *other* topics (no intercept), ŷ_k = X_k·coef.
    R² = 1 − Σ(y − ŷ)² / Σ(y − ȳ)² over all scored rows, ȳ their mean actual (can be < 0).
    ρ  = Spearman of ŷ and y; rho_raw = Spearman of the uncalibrated predictor and y.
    R² CI: percentile bootstrap over rows (ŷ held fixed).
    r2_ceiling = 1 − mean(se²)/var(y): the R² a perfect predictor would reach given the noise
    of the measured ΔB (how much the held-out sampling alone limits R²).
    r2_cluster_means / r2_topic_means: the in-sample R² of one shift per concept shared by every
    topic / one shift per topic shared by every concept — not predictors (they read the actual
    shifts), but where ΔB's variance sits: a large first share means DPO moves a concept
    everywhere, which no per-topic drive can predict.
A calibration from another run (`coefs`, e.g. another dataset's verify.json) is scored as
given, without cross-fitting.

λ sweep: `sweep_table` tabulates, per λ, the concept's actual shift (all held-out prompts and
per topic), held-out preference accuracy and the prediction of the shaped run: the plain run's
calibration (all rows) applied to the shaped predictor inputs (predict.py, Δ̄ → Δ̄^λ).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from anatomist.audit.folder import AuditFolder
from anatomist.errors import AnatomistError
from anatomist.evaluate.fit import (
    cross_fit,
    fit_coef,
    group_means_r2,
    r2_score,
    row_bootstrap,
    sign_accuracy,
    spearman,
)
from anatomist.evaluate.predict import (
    PREDICTORS,
    PredictConfig,
    predict_rows,
)
from anatomist.fileio import atomic_write_parquet, atomic_write_text

log = logging.getLogger(__name__)

EVAL_TABLES = ("scores.parquet", "behaviour.parquet")


# -- measured shift --------------------------------------------------------------------------------

def paired_shift(pre: np.ndarray, post: np.ndarray, n_pre: np.ndarray, n_post: np.ndarray, *,
                 n_boot: int = 1000, seed: int = 0, level: float = 0.95):
    """ΔB and its prompt-bootstrap CI from per-prompt sums pre/post [P, C] and sample counts
    n_pre/n_post [P]: ΔB = Σpost/Σn_post − Σpre/Σn_pre (the generation means). Returns
    (ΔB [C], low [C], high [C], se [C])."""
    rng = np.random.default_rng(seed)
    P = len(n_pre)
    counts = np.zeros((n_boot, P))                                          # prompt multiplicities
    np.add.at(counts, (np.repeat(np.arange(n_boot), P), rng.integers(0, P, size=n_boot * P)), 1.0)
    shift = post.sum(0) / n_post.sum() - pre.sum(0) / n_pre.sum()
    boot = (counts @ post) / (counts @ n_post)[:, None] - (counts @ pre) / (counts @ n_pre)[:, None]  # [B, C]
    tail = (1 - level) / 2
    return shift, np.quantile(boot, tail, 0), np.quantile(boot, 1 - tail, 0), boot.std(0, ddof=1)


# -- eval tables -----------------------------------------------------------------------------------

def read_eval(path: str | Path) -> pd.DataFrame:
    """An eval table: a parquet file, or a folder holding scores.parquet / behaviour.parquet."""
    path = Path(path)
    if path.is_dir():
        found = [path / n for n in EVAL_TABLES if (path / n).is_file()]
        if not found:
            raise AnatomistError(f"{path}: no {' or '.join(EVAL_TABLES)}; run `anatomist eval --out {path}`")
        path = found[0]
    if not path.is_file():
        raise AnatomistError(f"{path}: eval table not found")
    frame = pd.read_parquet(path)
    missing = [c for c in ("prompt_id", "topic") if c not in frame.columns]
    if missing:
        raise AnatomistError(f"{path}: missing column(s) {', '.join(missing)}")
    return frame


def resolve_run(run_dir: str | Path, pre: str | Path | None = None, post: str | Path | None = None):
    """(pre, post) eval tables of a run: explicit paths, else RUN_DIR/{pre,post}/, else one
    RUN_DIR table whose `role` column says "pre" / "post" (`anatomist eval --base`)."""
    run_dir = Path(run_dir)
    if pre is not None and post is not None:
        return read_eval(pre), read_eval(post)
    if (run_dir / "pre").is_dir() and (run_dir / "post").is_dir():
        return read_eval(pre or run_dir / "pre"), read_eval(post or run_dir / "post")
    table = read_eval(run_dir)
    if "role" not in table.columns or not {"pre", "post"} <= set(table["role"]):
        raise AnatomistError(f"{run_dir}: expected pre/ and post/ eval folders, or a scores table with "
                             "role 'pre' and 'post' rows (anatomist eval --base); or pass --pre/--post")
    return table[table.role == "pre"].reset_index(drop=True), table[table.role == "post"].reset_index(drop=True)


def _prompt_sums(frame: pd.DataFrame, cols: list[str], prompts: pd.Index):
    g = frame.groupby("prompt_id")
    return (g[cols].sum().reindex(prompts).fillna(0.0).to_numpy(np.float64),
            g.size().reindex(prompts).fillna(0).to_numpy(np.float64))


def actual_shifts(pre: pd.DataFrame, post: pd.DataFrame, clusters: Sequence[int], *, n_boot: int = 1000,
                  seed: int = 0) -> pd.DataFrame:
    """One row per (topic, cluster) of the held-out eval: actual ΔB with CI and se, plus "all"."""
    cols = [f"c_{k}" for k in clusters]
    for name, frame in (("pre", pre), ("post", post)):
        missing = [c for c in cols if c not in frame.columns]
        if missing:
            raise AnatomistError(f"{name} eval table: missing concept column(s) {', '.join(missing[:4])} "
                                 "(evaluate with the same audit)")
    topic_of = pd.concat([pre, post]).groupby("prompt_id")["topic"].first()
    blocks = []
    for topic in [*sorted(topic_of.unique()), "all"]:
        prompts = topic_of.index if topic == "all" else topic_of.index[topic_of == topic]
        s_pre, n_pre = _prompt_sums(pre, cols, prompts)
        s_post, n_post = _prompt_sums(post, cols, prompts)
        if n_pre.sum() == 0 or n_post.sum() == 0:
            continue
        shift, lo, hi, se = paired_shift(s_pre, s_post, n_pre, n_post, n_boot=n_boot, seed=seed)
        blocks.append(pd.DataFrame({"topic": topic, "cluster": list(clusters), "actual": shift, "ci_low": lo,
                                    "ci_high": hi, "se": se, "pre": s_pre.sum(0) / n_pre.sum(),
                                    "n_prompts": len(prompts)}))
    return pd.concat(blocks, ignore_index=True)


# -- scoring ---------------------------------------------------------------------------------------

BASELINES = ("naive", "prompt")   # what a predictor must beat (paired bootstrap of the R² difference)


def score(rows: pd.DataFrame, *, coefs: Mapping[str, Sequence[float]] | None = None, n_boot: int = 1000,
          seed: int = 0, group_by: str = "topic") -> tuple[dict, pd.DataFrame]:
    """Score every predictor on `rows` (prediction inputs joined with `actual`, `se`, `ci_low`,
    `ci_high` and the `group_by` column, across whose values calibrations are cross-fitted).
    Returns (summary per predictor, rows with yhat_<name> columns)."""
    rows = rows.copy()
    y = rows["actual"].to_numpy(np.float64)
    groups = rows[group_by].to_numpy()
    var_y = y.var(ddof=1) if len(y) > 1 else float("nan")
    out = {"n_rows": int(len(rows)), "n_groups": int(len(np.unique(groups))), "calibrated_across": group_by,
           "r2_ceiling": float(1 - np.mean(rows["se"].to_numpy() ** 2) / var_y) if var_y > 0 else float("nan"),
           "predictors": {}}
    if group_by == "topic":
        out.update(n_topics=out["n_groups"], r2_cluster_means=group_means_r2(y, rows["cluster"].to_numpy()),
                   r2_topic_means=group_means_r2(y, groups))
    has_ci = {"ci_low", "ci_high"} <= set(rows.columns)
    sure = ((rows["ci_low"] > 0) | (rows["ci_high"] < 0)).to_numpy() if has_ci else np.zeros(len(rows), bool)
    flagged = (rows["direction"] != "none").to_numpy() if "direction" in rows else np.ones(len(rows), bool)
    for name, (cols, raw) in PREDICTORS.items():
        if not set(cols) <= set(rows.columns):     # an optional predictor that was not computed
            continue
        X = rows[list(cols)].to_numpy(np.float64)                                      # [R, J]
        fixed = coefs is not None and name in coefs
        yhat = X @ np.asarray(coefs[name], np.float64) if fixed else cross_fit(X, y, groups)
        rows[f"yhat_{name}"] = yhat
        ok = np.isfinite(yhat)
        ci = row_bootstrap(y, {name: yhat}, n_boot=n_boot, seed=seed)[name]
        sign, n_sign = sign_accuracy(y, yhat, sure & flagged)
        out["predictors"][name] = {
            "r2": r2_score(y[ok], yhat[ok]), "r2_ci": ci.get("r2_ci", [np.nan, np.nan]),
            "rho": spearman(yhat[ok], y[ok]), "rho_ci": ci.get("rho_ci", [np.nan, np.nan]),
            "rho_raw": spearman(rows[raw].to_numpy(), y), "n_rows": int(ok.sum()),
            "sign_accuracy": sign, "n_sign_rows": n_sign,
            "calibration": "given" if fixed else f"cross-fit across {group_by}s",
            "coef_all_rows": fit_coef(X, y).tolist(), "inputs": list(cols),
        }
    preds = {k: rows[f"yhat_{k}"].to_numpy() for k in out["predictors"]}
    paired = row_bootstrap(y, preds, baselines=BASELINES, n_boot=n_boot, seed=seed)
    for k, entry in paired.items():
        out["predictors"][k].update({d: v for d, v in entry.items() if d.startswith("r2_minus_")})
    return out, rows


def level_lines(name: str, s: dict) -> list[str]:
    """One level of a verify summary (`score`'s dict) as printed lines: rows, noise ceiling, and per
    predictor R² with CI and its share of the ceiling, ρ with CI, sign accuracy on sure flagged
    rows and the paired R² differences against the baselines."""
    ceiling = s["r2_ceiling"]
    lines = [f"{name}: {s['n_rows']} rows, calibrated across {s['calibrated_across']}s; noise ceiling {ceiling:.3f}"]
    for k, p in s["predictors"].items():
        diffs = "  ".join(f"ΔR² vs {d[9:]} {v[0]:+.3f} [{v[1]:+.3f}, {v[2]:+.3f}]"
                          for d, v in p.items() if d.startswith("r2_minus_"))
        share = p["r2"] / ceiling if ceiling and ceiling > 0 else float("nan")
        lines.append(f"  {k:<11} R² {p['r2']:7.3f} [{p['r2_ci'][0]:.3f}, {p['r2_ci'][1]:.3f}] ({share:.2f}× ceiling)  "
                     f"ρ {p['rho']:6.3f} [{p['rho_ci'][0]:.3f}, {p['rho_ci'][1]:.3f}]  "
                     f"sign {p['sign_accuracy']:.2f} of {p['n_sign_rows']}  {diffs}")
    return lines


def join_rows(pred: pd.DataFrame, actual: pd.DataFrame, *, tested_only: bool = True) -> pd.DataFrame:
    rows = pred.merge(actual[actual.topic != "all"], on=["topic", "cluster"], how="inner")
    if tested_only and "tested" in rows:
        rows = rows[rows["tested"]]
    if rows.empty:
        raise AnatomistError("no (topic, cluster) row is both predicted and evaluated: do the held-out "
                             "prompts' topics match the audit's topic names?")
    return rows.reset_index(drop=True)


def concept_rows(audit: AuditFolder, pred: pd.DataFrame, actual: pd.DataFrame,
                 first_order: pd.DataFrame | None = None, *, tested_only: bool = True) -> pd.DataFrame:
    """One row per concept over the whole dataset (topic "all"): the actual shift over all held-out
    prompts, and the predictors that have a dataset-wide form — naive (Δ̄_all), prompt (the
    concept's mean expression in the responses, topics weighted by pair counts) and the first-order
    rows' "all" entries. The audit's dataset-wide direction marks flagged concepts."""
    g = pred.assign(w_expr=pred["n"] * pred["expression"]).groupby("cluster")
    rows = pd.DataFrame({"x_naive": g["dbar_all"].first(), "x_prompt": g["w_expr"].sum() / g["n"].sum()}).reset_index()
    if first_order is not None:
        cols = [c for c in first_order.columns if c.startswith("x_first")]
        rows = rows.merge(first_order[first_order.topic == "all"][["cluster", *cols]], on="cluster", how="left")
    context = audit.rows[audit.rows["topic"] == "all"][["cluster", "direction", "tested"]]
    rows = rows.merge(context, on="cluster", how="left").assign(topic="all")
    rows["direction"] = rows["direction"].fillna("none")
    if tested_only:
        rows = rows[rows["tested"].fillna(False).astype(bool)]
    keep = ["cluster", "actual", "ci_low", "ci_high", "se"]
    return rows.merge(actual[actual.topic == "all"][keep], on="cluster", how="inner").reset_index(drop=True)


@dataclass
class VerifyResult:
    summary: dict              # verify.json
    rows: pd.DataFrame         # scored (topic, concept) rows (inputs, actual, CI, yhat_*)
    sweep: pd.DataFrame | None
    concepts: pd.DataFrame | None = None   # scored per-concept rows (topic "all")


def verify(audit: str | Path | AuditFolder, pre: pd.DataFrame, post: pd.DataFrame | None = None, *,
           cfg: PredictConfig = PredictConfig(), coefs: Mapping[str, Sequence[float]] | None = None,
           n_boot: int = 1000, seed: int = 0, tested_only: bool = True,
           pair_ids: Sequence[str] | None = None, first_order: pd.DataFrame | None = None,
           actual: pd.DataFrame | None = None) -> VerifyResult:
    """Score the predictors at two levels: per (topic, concept), calibrated across topics, and per
    concept over the whole dataset, calibrated across concepts (leave one out).

    pair_ids: the audited pairs the run trained on (None: all); the predictors use only them.
    first_order: `evaluate.firstorder.first_order_rows` (topic, cluster, x_first_*), computed on
    base generations the target does not use (the predictor and the target never share samples).
    actual: the measured shifts (`actual_shifts`' columns, e.g. the paired estimator's,
    `evaluate.paired.paired_actual`); default: the direct difference of `post` and `pre` means."""
    audit = audit if isinstance(audit, AuditFolder) else AuditFolder(audit)
    pred = predict_rows(audit, cfg, base_scores=pre if cfg.spread == "base" else None, pair_ids=pair_ids)
    if first_order is not None:
        cols = [c for c in first_order.columns if c.startswith("x_first")]
        pred = pred.merge(first_order[first_order.topic != "all"][["topic", "cluster", *cols]],
                          on=["topic", "cluster"], how="left")
    if actual is None:
        if post is None:
            raise AnatomistError("verify needs the post-training eval table or a measured `actual` table")
        actual = actual_shifts(pre, post, sorted(pred["cluster"].unique()), n_boot=n_boot, seed=seed)
    rows = join_rows(pred, actual, tested_only=tested_only)
    summary, scored = score(rows, coefs=coefs, n_boot=n_boot, seed=seed)
    flagged = rows[rows["direction"] != "none"]
    if flagged["topic"].nunique() >= 2:
        summary["flagged"], _ = score(flagged, coefs=coefs, n_boot=n_boot, seed=seed)
    concepts = concept_rows(audit, pred, actual, first_order, tested_only=tested_only)
    concepts_scored = None
    if len(concepts) >= 3:
        summary["concept"], concepts_scored = score(concepts, n_boot=n_boot, seed=seed, group_by="cluster")
    summary.update({"definition": "R² = 1 − Σ(y − ŷ)²/Σ(y − ȳ)² over held-out rows, y = actual ΔB, ŷ = "
                                  "calibrated prediction (calibration fit on other topics' rows; per concept: "
                                  "on the other concepts)",
                    "config": {"spread": cfg.spread, "tested_only": tested_only, "n_boot": n_boot},
                    "dataset_wide": actual[actual.topic == "all"][["cluster", "actual", "ci_low", "ci_high"]]
                    .to_dict("records")})
    return VerifyResult(summary, scored, None, concepts_scored)


# -- λ sweep ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SweepRun:
    lam: float
    post: pd.DataFrame                 # eval table of the run trained with λ on `cluster`
    heldout_acc: float | None = None   # held-out preference accuracy of that run


def sweep_table(audit: str | Path | AuditFolder, pre: pd.DataFrame, runs: Sequence[SweepRun], cluster: int,
                coef: Sequence[float], *, cfg: PredictConfig = PredictConfig(), topic: str | None = None,
                n_boot: int = 1000, seed: int = 0, pair_ids: Sequence[str] | None = None) -> pd.DataFrame:
    """Per λ: actual ΔB of `cluster` (on `topic`'s prompts, or all held-out prompts), its CI,
    held-out preference accuracy, and the shaped-run prediction Σ_j coef_j·x_j(λ) of the
    feature-conditioned predictor (coef: the plain run's calibration)."""
    audit = audit if isinstance(audit, AuditFolder) else AuditFolder(audit)
    cols, _ = PREDICTORS["feature"]
    out = []
    for run in sorted(runs, key=lambda r: r.lam):
        pred = predict_rows(audit, cfg, base_scores=pre if cfg.spread == "base" else None,
                            lam={cluster: run.lam} if run.lam else None, pair_ids=pair_ids)
        pred = pred[pred.cluster == cluster]
        yhat = pred[list(cols)].to_numpy(np.float64) @ np.asarray(coef, np.float64)    # [K]
        # topic "all": the held-out topics pooled, weighted as the eval weights them (prompt counts)
        actual = actual_shifts(pre, run.post, [cluster], n_boot=n_boot, seed=seed)
        where = topic or "all"
        act = actual[actual.topic == where].iloc[0]
        if topic is None:
            sizes = actual[actual.topic != "all"].set_index("topic")["n_prompts"]
            w = pred["topic"].map(sizes).fillna(0).to_numpy(np.float64)
            predicted = float((w * yhat).sum() / w.sum()) if w.sum() else float("nan")
        else:
            predicted = float(yhat[(pred["topic"] == topic).to_numpy()].sum())
        out.append({"lam": run.lam, "topic": where, "cluster": cluster, "actual": act["actual"],
                    "ci_low": act["ci_low"], "ci_high": act["ci_high"], "predicted": predicted,
                    "dbar_lambda": float(pred["dbar_all"].iloc[0]) if len(pred) else float("nan"),
                    "heldout_acc": run.heldout_acc})
    return pd.DataFrame(out)


def read_sweep(run_dir: Path) -> tuple[int, list[SweepRun]] | None:
    """RUN_DIR/sweep.json: {"cluster": C, "runs": [{"lam": λ, "post": path (relative to RUN_DIR),
    "heldout_acc": x}]}; None when absent."""
    path = run_dir / "sweep.json"
    if not path.is_file():
        return None
    spec = json.loads(path.read_text())
    try:
        runs = [SweepRun(float(r["lam"]), read_eval(run_dir / r["post"]), r.get("heldout_acc")) for r in spec["runs"]]
        return int(spec["cluster"]), runs
    except KeyError as e:
        raise AnatomistError(f"{path}: missing field {e.args[0]!r}") from None


def read_train_pairs(run_dir: Path, audit: AuditFolder) -> list[str] | None:
    """The pair ids in RUN_DIR/train_pairs.json (None when absent), checked against the audit.

    Entries are {"id", "text_hash"} (`anatomist.data.text_hash` of the pair trained on): a pair
    whose texts the audit did not score is refused, as everywhere pairs join an audit by id. Bare
    ids (runs written before the hashes) can only be checked to be in the audit."""
    path = run_dir / "train_pairs.json"
    if not path.is_file():
        return None
    entries = json.loads(path.read_text())
    if not isinstance(entries, list) or not all(isinstance(e, str) or (isinstance(e, dict) and "id" in e)
                                                for e in entries):
        raise AnatomistError(f"{path}: expected a list of pair ids or of {{\"id\", \"text_hash\"}} objects")
    ids = [e if isinstance(e, str) else str(e["id"]) for e in entries]
    hashed = [(e["id"], e["text_hash"]) for e in entries if isinstance(e, dict) and "text_hash" in e]
    if hashed:
        audit.check_text_hashes([i for i, _ in hashed], [h for _, h in hashed], src=str(path))
    return ids


def verify_run(audit_dir: str | Path, run_dir: str | Path, *, pre: str | Path | None = None,
               post: str | Path | None = None, cfg: PredictConfig = PredictConfig(),
               calibration: str | Path | None = None, n_boot: int = 1000, seed: int = 0,
               tested_only: bool = True, first_order: str | Path | None = None, policy: str | None = None,
               min_ess: float = 0.3) -> VerifyResult:
    """Score AUDIT_DIR's predictions on RUN_DIR; write verify.json, verify_rows.parquet and
    verify.html into RUN_DIR. calibration: a verify.json whose all-row coefficients are applied
    as given (calibrate on one dataset, test on another). RUN_DIR/train_pairs.json, when present,
    restricts the predictors to the pairs the run trained on (`read_train_pairs`).

    first_order: a forecast (`anatomist predict --first-order`; default: one found beside the pre
    table); it is scored on the base samples it did not read (`forecast.target_half`), and so are
    all predictors then. policy: the trained model, for the paired ΔB on those samples
    (`forecast.paired_target`) instead of the direct difference of means."""
    from anatomist.evaluate.forecast import find_forecast, paired_target, target_half
    from anatomist.evaluate.verify_report import render

    run_dir = Path(run_dir)
    audit = AuditFolder(audit_dir)
    trained = read_train_pairs(run_dir, audit)
    pre_t, post_t = resolve_run(run_dir, pre, post)
    coefs = None
    if calibration is not None:
        given = json.loads(Path(calibration).read_text())["predictors"]
        coefs = {k: v["coef_all_rows"] for k, v in given.items()}
    fc = find_forecast(first_order, pre, run_dir)
    first_rows, actual, notes = None, None, {}
    if fc is not None:
        target = target_half(fc, pre_t)
        if target is None:
            notes["first_order"] = (f"{fc.path} read every base sample, so no sample is left for the target: not "
                                    "scored (forecast with >= 4 samples per prompt)")
            log.warning(notes["first_order"])
        else:
            first_rows, pre_t = fc.rows, target
            notes["first_order"] = f"{fc.path}: scored on the {len(target)} base samples it did not read"
            if policy is not None:
                from anatomist.models import load

                base_lm, pol = load(audit.model_name), load(policy)
                clusters = sorted(int(c) for c in fc.rows["cluster"].unique())
                actual, health = paired_target(target, post_t, clusters, base_model=base_lm.model, policy=pol.model,
                                               temperature=float(fc.meta["temperature"]), min_ess=min_ess)
                notes["paired"] = health
    result = verify(audit, pre_t, post_t, cfg=cfg, coefs=coefs, n_boot=n_boot, seed=seed, tested_only=tested_only,
                    pair_ids=trained, first_order=first_rows, actual=actual)
    result.summary["target"] = "paired (SNIS on base samples)" if actual is not None else "direct (post − pre means)"
    result.summary.update(notes)
    found = read_sweep(run_dir)
    if found:
        cluster, runs = found
        coef = result.summary["predictors"]["feature"]["coef_all_rows"]
        result.sweep = sweep_table(audit, pre_t, runs, cluster, coef, cfg=cfg, n_boot=n_boot, seed=seed,
                                   pair_ids=trained)
        result.summary["sweep"] = result.sweep.to_dict("records")
        sw = result.sweep
        # does the shaped-run prediction hold? rank agreement over λ, and the sign of each shift
        result.summary["sweep_check"] = {"rho": spearman(sw.predicted, sw.actual),
                                         "sign_agreement": float((np.sign(sw.predicted) == np.sign(sw.actual)).mean())}
    result.summary.update({"audit": str(audit_dir), "run": str(run_dir)})
    atomic_write_text(run_dir / "verify.json", json.dumps(_finite(result.summary), indent=1, default=_json_default))
    atomic_write_parquet(result.rows, run_dir / "verify_rows.parquet")
    if result.concepts is not None:
        atomic_write_parquet(result.concepts, run_dir / "verify_concepts.parquet")
    render(result, run_dir / "verify.html")
    return result


def _finite(obj):
    """NaN/inf → null, so verify.json is strict JSON."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    return obj


def _json_default(x):
    if isinstance(x, (np.floating, np.integer)):
        return x.item()
    if isinstance(x, np.bool_):
        return bool(x)
    raise TypeError(type(x))
