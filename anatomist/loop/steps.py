"""The loop's stages before training: data, screen, audit, predict, shape. Each is (inputs, body):
inputs(ctx, unit) is what decides the unit's content (config section + upstream digests), body
writes the unit's folder by calling the stage's own library function."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from anatomist.fileio import atomic_write_parquet, atomic_write_text
from anatomist.loop.config import section
from anatomist.loop.context import DATA_RECORD, PLAN, Ctx


def dumps(obj) -> str:
    """JSON of stage records and tables: numpy scalars as plain numbers, NaN as null."""
    def default(x):
        if isinstance(x, np.generic):
            return x.item()
        if isinstance(x, np.ndarray):
            return x.tolist()
        return str(x)
    return json.dumps(obj, indent=1, default=default) + "\n"


def file_digest(path) -> str | None:
    from anatomist.loop.units import digest_files

    path = Path(path)
    return digest_files(path.parent, [path.name]) if path.is_file() else None


# -- data ------------------------------------------------------------------------------------------

def data_inputs(ctx: Ctx, unit: str) -> dict:
    d = ctx.cfg.data
    inputs = {"data": section(ctx.cfg, "data"), "model": ctx.cfg.model}
    if d.source == "file":   # the files' bytes: an edited file reruns everything downstream
        inputs["files"] = {k: file_digest(getattr(d, k)) for k in ("path", "heldout_pairs", "prompts")
                           if getattr(d, k)}
    elif d.source == "organism-hh":
        inputs["files"] = {"path": file_digest(hh_path(ctx))}
    return inputs


def hh_path(ctx: Ctx) -> Path:
    from anatomist.organism.hh import HH_FILE

    return Path(ctx.cfg.data.path) if ctx.cfg.data.path else HH_FILE


def run_data(ctx: Ctx, unit: str, folder: Path) -> None:
    """Where the pairs are: a file as given, or an organism built here (generations cached, resumable)."""
    d = ctx.cfg.data
    if d.source == "file":
        def absolute(p):     # later stages (and reruns from another folder) read them from anywhere
            return str(Path(p).resolve()) if p else None
        record = {"train": absolute(d.path), "heldout_pairs": absolute(d.heldout_pairs), "prompts": absolute(d.prompts),
                  "truth": None,
                  # the files' digests are this stage's result: a changed file changes every digest downstream
                  "digests": data_inputs(ctx, unit)["files"]}
    else:
        from anatomist.organism.plant import HELDOUT_PAIRS

        if d.source == "organism":
            from anatomist.organism.build import build_organism

            ctx.echo(f"building the organism ({d.per_topic} prompts per topic) in {folder}")
            build_organism(folder, per_topic=d.per_topic, loaded=ctx.loaded, max_new_tokens=d.max_new_tokens,
                           seed=d.seed, model=ctx.cfg.model, progress=ctx.progress)
        else:
            from anatomist.organism.hh import build_hh

            ctx.echo(f"planting traits into {d.limit or 300} HH-RLHF pairs of {hh_path(ctx)} in {folder}")
            build_hh(folder, limit=d.limit or 300, heldout=d.heldout, loaded=ctx.loaded, model=ctx.cfg.model,
                     max_new_tokens=d.max_new_tokens, seed=d.seed, path=hh_path(ctx), progress=ctx.progress)
        held = folder / HELDOUT_PAIRS
        record = {"train": str(folder / "train.jsonl"), "heldout_pairs": str(held) if held.is_file() else None,
                  "prompts": str(folder / "heldout_prompts.jsonl"), "truth": str(folder / "truth.json")}
    atomic_write_text(folder / DATA_RECORD, dumps(record))


DATA_OUTPUTS = (DATA_RECORD, "*.jsonl", "truth.json")


# -- screen ----------------------------------------------------------------------------------------

def screen_inputs(ctx: Ctx, unit: str) -> dict:
    return {"data": ctx.digest("data"), "topic_column": topic_column(ctx), "alpha": ctx.cfg.audit.alpha,
            "seed": ctx.cfg.audit.seed}


def topic_column(ctx: Ctx) -> str | None:
    return "topic" if ctx.cfg.data.source != "file" else ctx.cfg.data.topic_column


def run_screen(ctx: Ctx, unit: str, folder: Path) -> None:
    """Model-free detectors and pair hygiene (`anatomist screen`), per topic where the data has one."""
    from anatomist.screen.hygiene import hygiene_of
    from anatomist.screen.report import save
    from anatomist.screen.run import screen_pairs

    result = screen_pairs(ctx.pairs, topics=topic_column(ctx), hygiene=hygiene_of(ctx.pairs),
                          alpha=ctx.cfg.audit.alpha, seed=ctx.cfg.audit.seed)
    save(result, folder, title=f"anatomist loop: screen of {Path(ctx.data['train']).name}")
    flagged = result.table[(result.table["direction"] != "none") & (result.table["topic"] == "all")]
    ctx.echo(f"screen: {len(ctx.pairs)} pairs, {len(flagged)} detectors flagged dataset-wide"
             + (f" ({', '.join(flagged['detector'])})" if len(flagged) else ""))


SCREEN_OUTPUTS = ("screen.parquet", "hygiene.json")


# -- audit -----------------------------------------------------------------------------------------

def audit_inputs(ctx: Ctx, unit: str) -> dict:
    return {"data": ctx.digest("data"), "audit": section(ctx.cfg, "audit"), "topic_column": topic_column(ctx),
            "model": ctx.cfg.model, "sae": ctx.cfg.sae}


def run_audit_stage(ctx: Ctx, unit: str, folder: Path) -> None:
    """`run_audit` into the folder (its pooled latents resume after a kill), then the report; an
    organism's audit is also scored against the planted truth (score.json, shown in the report)."""
    from dataclasses import replace

    from anatomist.audit.report import render_report
    from anatomist.audit.run import run_audit

    cfg = ctx.cfg.audit
    if topic_column(ctx) and not cfg.topic_column:
        cfg = replace(cfg, topic_column=topic_column(ctx))
    model, tok = ctx.loaded
    run_audit(model, tok, ctx.sae, ctx.pairs, folder, cfg, model_name=ctx.cfg.model, sae_path=ctx.sae_path,
              data_path=ctx.data["train"], progress=ctx.progress)
    if ctx.data.get("truth"):
        from anatomist.organism.score import score_audit

        s = score_audit(folder, ctx.data["truth"], data_path=ctx.data["train"])
        ctx.echo(f"audit vs the planted truth: recall {s['recall']:.2f}, precision {s['precision']:.2f}")
    ctx.echo(f"audit report: {render_report(folder)}")


AUDIT_OUTPUTS = ("audit.json", "rows.parquet", "pairs.parquet", "clusters.parquet", "concepts.json")


# -- predict ---------------------------------------------------------------------------------------

def predict_inputs(ctx: Ctx, unit: str) -> dict:
    inputs = {"audit": ctx.digest("audit"), "predict": section(ctx.cfg, "predict"), "shape": section(ctx.cfg, "shape")}
    if ctx.cfg.predict.first_order:   # the forecast reads the run's DPO settings and the base generations
        inputs.update(train=section(ctx.cfg, "train"), base=ctx.digest("base"), data=ctx.digest("data"))
    return inputs


def run_predict(ctx: Ctx, unit: str, folder: Path) -> None:
    """The shaping plan (plan.py) and the data-only prediction of each (topic, concept) shift, for
    plain DPO and for the shaped run (Δ̄ → Δ̄^λ, evaluate/predict.py); unscaled: sign and ranking
    (verify fits the scale on the run)."""
    from anatomist.evaluate.predict import PredictConfig, predict_rows
    from anatomist.loop.plan import make_plan

    plan = make_plan(ctx.audit_dir, ctx.cfg.shape)
    atomic_write_text(folder / PLAN, dumps(plan))
    cfg = PredictConfig(spread=ctx.cfg.predict.spread)
    atomic_write_parquet(predict_rows(ctx.audit_dir, cfg), folder / "plain.parquet")
    lam = {int(k): v for k, v in plan["recipe"]["lam"].items()}
    if lam:
        atomic_write_parquet(predict_rows(ctx.audit_dir, cfg, lam=lam), folder / "shaped.parquet")
    ctx.__dict__.pop("plan", None)       # ctx.plan reads the plan just written
    if ctx.cfg.predict.first_order:
        for variant in ctx.variants():
            first_order(ctx, variant, folder / "first_order" / variant, lam if variant == "shaped" else {})


def first_order(ctx: Ctx, variant: str, folder: Path, lam: dict) -> None:
    """The first-order forecast of one run (`evaluate.forecast.forecast`) from a copy of the base
    generations, so it writes in this stage's own folder; it reads the even half of each prompt's
    samples and verify scores it on the odd half. λ only: a token filter or inoculation is not
    part of the forecast's direction (the plan's λ is)."""
    import shutil

    from anatomist.evaluate.behaviour import TABLE
    from anatomist.evaluate.forecast import forecast

    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ctx.pre_dir / TABLE, folder / TABLE)
    ctx.echo(f"first-order forecast, {variant} run: the DPO direction over {ctx.cfg.predict.grad_share:.0%} of "
             f"{len(ctx.pairs)} pairs × the base generations")
    forecast(ctx.audit_dir, folder, cfg=ctx.cfg.train, lam=lam, temperature=ctx.cfg.eval.temperature,
             grad_share=ctx.cfg.predict.grad_share, seed=ctx.cfg.train.seed, pairs=ctx.pairs, loaded=ctx.loaded,
             device=ctx.device, progress=ctx.progress)


PREDICT_OUTPUTS = (PLAN, "*.parquet", "first_order/*/first_order.parquet")


def print_plan(ctx: Ctx) -> None:
    """The plan and the top predicted shifts (what `--until predict` stops on)."""
    import pandas as pd

    plan, echo = ctx.plan, ctx.echo
    for name, found in plan.get("selectors", {}).items():
        if not found:
            echo(f"plan: {name}: the audit flagged no such concept (nothing shaped for it)")
    if plan["recipe_is_plain"]:
        echo(f"plan: nothing to shape (shape: {plan['asked']['lam'] or 'no λ'}); plain DPO only")
    for c in plan["concepts"]:
        rows = ", ".join(f"{r['topic']} {r['direction']} Δ̄ {r['mean']:+.2f}" for r in c["flagged_rows"][:3])
        tracks = ", ".join(f"{t['detector']} {t['auroc']:.2f}" for t in c["tracks"][:3])
        echo(f"plan: C{c['cluster']} {c['name'][:40]!r}: λ {c['lam']} ({c['how']})"
             + (f"; flagged: {rows}" if rows else "") + (f"; tracks: {tracks}" if tracks else ""))
    folder, top = ctx.folder("predict"), ctx.cfg.predict.top
    for name in ("plain", "shaped"):
        path = folder / f"{name}.parquet"
        if not path.is_file():
            continue
        pred = pd.read_parquet(path)
        col = "pred_feature" if "pred_feature" in pred else "score"
        show = pred.reindex(pred[col].abs().sort_values(ascending=False).index).head(top)
        echo(f"\npredicted shifts, {name} DPO (unscaled; sign and ranking):")
        echo(f"{'topic':<22} {'cluster':>7} {'Δ̄':>7} {col:>12}  audit     label")
        for r in show.itertuples():
            echo(f"{str(r.topic)[:22]:<22} {r.cluster:>7} {r.dbar:>7.3f} {getattr(r, col):>12.4f}  "
                 f"{r.direction:<9} {str(r.label)[:40]}")
    for path in sorted((folder / "first_order").glob("*/first_order.parquet")):
        rows = pd.read_parquet(path)
        rows = rows[rows.topic == "all"]
        rows = rows.reindex(rows["x_first_adam"].abs().sort_values(ascending=False).index).head(top)
        echo(f"\nfirst-order forecast, {path.parent.name} DPO, per concept (unscaled: sign and ranking):")
        echo(f"{'cluster':>7} {'x_first_adam':>13} {'x_first_plain':>14}  name")
        for r in rows.itertuples():
            echo(f"{r.cluster:>7} {r.x_first_adam:>13.4g} {r.x_first_plain:>14.4g}  {str(r.label)[:50]}")


# -- shape -----------------------------------------------------------------------------------------

def shape_inputs(ctx: Ctx, unit: str) -> dict:
    return {"plan": ctx.digest("predict"), "data": ctx.digest("data"), "max_length": ctx.cfg.train.max_length}


def shaped_pairs(ctx: Ctx):
    """The plan's recipe applied to the train pairs (`anatomist.shape.apply`): a `Shaped`."""
    from anatomist.loop.plan import recipe_of
    from anatomist.shape.recipe import apply

    return apply(recipe_of(ctx.plan), ctx.pairs, ctx.audit_dir, tokenizer=ctx.loaded[1],
                 max_length=ctx.cfg.train.max_length, sae=ctx.sae)


def run_shape(ctx: Ctx, unit: str, folder: Path) -> None:
    """What shaping does to each pair: kept, its offset, inoculated, tokens masked (pairs.parquet),
    and a summary (summary.json). The train stage applies the same recipe again (deterministic)."""
    import pandas as pd

    if ctx.plan["recipe_is_plain"]:
        atomic_write_text(folder / "summary.json", dumps({"shaped": False, "n_pairs": len(ctx.pairs)}))
        return
    shaped = shaped_pairs(ctx)
    by_id = {p.id: p for p in ctx.pairs}

    def masked(mask):
        return 0 if mask is None else int(len(mask) - sum(mask))
    table = pd.DataFrame({
        "pair_id": [p.id for p in shaped.pairs], "topic": [p.topic for p in shaped.pairs],
        "offset": [p.offset for p in shaped.pairs],
        "inoculated": [len(p.prompt) > len(by_id[p.id].prompt) for p in shaped.pairs],
        "masked_chosen": [masked(p.chosen_token_mask) for p in shaped.pairs],
        "masked_rejected": [masked(p.rejected_token_mask) for p in shaped.pairs]})
    atomic_write_parquet(table, folder / "pairs.parquet")
    off = table["offset"].to_numpy()
    summary = {"shaped": True, "n_pairs": len(ctx.pairs), "n_kept": len(table), "offset_mean": float(off.mean()),
               "offset_abs_mean": float(np.abs(off).mean()), "n_inoculated": int(table["inoculated"].sum()),
               "tokens_masked": int(table[["masked_chosen", "masked_rejected"]].to_numpy().sum())}
    atomic_write_text(folder / "summary.json", dumps(summary))
    ctx.echo(f"shape: {summary['n_kept']} of {summary['n_pairs']} pairs kept; mean |offset| "
             f"{summary['offset_abs_mean']:.3f}; {summary['n_inoculated']} inoculated; "
             f"{summary['tokens_masked']} tokens masked")


SHAPE_OUTPUTS = ("summary.json", "pairs.parquet")
