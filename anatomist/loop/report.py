"""The loop's one page (OUT/report/report.html): the screen, the audit, what was shaped and why,
predicted vs measured behaviour shift per run, and held-out preference accuracy. Built from the
stages' files only, with the toolkit every page uses (anatomist/html.py) and the audit's and
verify's own sections; each stage's full page is linked."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from anatomist.fileio import atomic_write_text
from anatomist.html import badge, esc, num, page, section, short, table, tag
from anatomist.loop.context import Ctx
from anatomist.loop.units import read_record

REPORT = "report.html"


def report_inputs(ctx: Ctx, stages) -> dict:
    """Every finished upstream unit's digest: the page changes exactly when a result does."""
    out = {}
    for stage in stages.values():
        if stage.name == "report":
            continue
        for unit in stage.units(ctx):
            rec = read_record(ctx.folder(stage.name, unit))
            out[f"{stage.name}/{unit}"] = rec.get("outputs_hash") if rec else None
    return out


def link(folder: Path, target: Path, text: str) -> str:
    return tag("a", esc(text), href=os.path.relpath(target, folder))


def nan_for_null(obj):
    """verify.json writes NaN (an undefined R²) as null; its page's helpers read NaN."""
    if isinstance(obj, dict):
        return {k: nan_for_null(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [nan_for_null(v) for v in obj]
    return float("nan") if obj is None else obj


def ci(lo, hi) -> str:
    return f"[{num(lo)}, {num(hi)}]"


def stages_table(ctx: Ctx) -> str:
    body = []
    for stage_dir in sorted(p for p in ctx.out.iterdir() if p.is_dir()):
        for rec_dir in [stage_dir, *sorted(p for p in stage_dir.iterdir() if p.is_dir())]:
            rec = read_record(rec_dir)
            if rec is not None:
                body.append([esc(rec["stage"]), esc(rec["inputs_hash"]), esc("done" if rec.get("done") else "unfinished")])
    return table(["stage", "inputs hash", "state"], body)


def screen_part(ctx: Ctx) -> str:
    folder = ctx.folder("screen")
    frame = pd.read_parquet(folder / "screen.parquet")
    flagged = frame[frame["direction"] != "none"]
    rows = [[esc(r.detector), esc(r.topic), str(r.n), num(r.rate_chosen), num(r.rate_rejected), num(r.diff),
             ci(r.ci_low, r.ci_high), num(r.q, 3), badge(r.direction)] for r in flagged.itertuples()]
    note = (f"{len(flagged)} of {len(frame)} (detector, topic) rows flagged (positive diff: the chosen side fires "
            "more, so DPO would amplify it). ")
    return tag("p", esc(note) + link(ctx.folder("report"), folder / "screen.html", "the screen's page")) + (
        table(["detector", "topic", "n", "rate chosen", "rate rejected", "diff", "95% CI", "q", "direction"], rows)
        if rows else "")


def audit_part(ctx: Ctx) -> str:
    from anatomist.audit.folder import AuditFolder
    from anatomist.audit.report import push_table, truth_section

    audit = AuditFolder(ctx.audit_dir)
    body = tag("p", link(ctx.folder("report"), ctx.audit_dir / "report.html", "the audit's page")
               + esc(f" (concept cards, examples, topics): {audit.n_clusters} concepts, "
                     f"{len(audit.pair_ids)} pairs, layer {audit.layer}."))
    if audit.score is not None:
        body += truth_section(audit.score)
    # the table's concept links point at cards on the audit's own page
    target = os.path.relpath(ctx.audit_dir / "report.html", ctx.folder("report"))
    return body + push_table(audit).replace('href="#', f'href="{esc(target)}#')


def shape_part(ctx: Ctx) -> str:
    plan = ctx.plan
    if plan["recipe_is_plain"]:
        return tag("p", esc(f"Nothing was shaped (asked: {json.dumps(plan['asked'])}); the run is plain DPO."))
    rows = []
    for c in plan["concepts"]:
        flagged = "; ".join(f"{r['topic']}: {r['direction']} Δ̄ {r['mean']:+.2f} (q {r['q']:.1e})"
                            for r in c["flagged_rows"])
        tracks = "; ".join(f"{t['detector']} {t['auroc']:.2f}" for t in c["tracks"])
        rows.append([f"C{c['cluster']}", esc(c["name"]), num(c["lam"]), esc(c["how"]), esc(flagged or "none"),
                     esc(tracks or "none")])
    summary = json.loads((ctx.folder("shape") / "summary.json").read_text())
    r = plan["recipe"]
    facts = (f"Recipe: λ {r['lam'] or 'none'}; token filter {r['token_filter'] or 'none'}; inoculation "
             f"{r['inoculate'] or 'none'}; drop extreme {r['drop_extreme']}. Applied: {summary.get('n_kept')} of "
             f"{summary['n_pairs']} pairs kept, mean |offset| {num(summary.get('offset_abs_mean'), 3)}, "
             f"{summary.get('n_inoculated', 0)} inoculated, {summary.get('tokens_masked', 0)} tokens masked. "
             "Sign: L = −log σ(β·Δθ − λ·Δc); λ < 0 suppresses the concept.")
    empty = [name for name, found in plan.get("selectors", {}).items() if not found]
    if empty:
        facts += f" Selectors that found no flagged concept (nothing shaped for them): {', '.join(empty)}."
    return tag("p", esc(facts)) + table(["concept", "name", "λ", "chosen by", "flagged audit rows",
                                         "tracks (screen detector, AUROC)"], rows)


def shift_part(ctx: Ctx, variants: list[str]) -> str:
    """Per run: verify's score of the predictors, the shaped concepts' predicted vs measured ΔB,
    and the detectors' fire rates before and after."""
    from anatomist.evaluate.verify_report import summary_table

    report = ctx.folder("report")
    pre = pd.read_parquet(ctx.pre_dir / "behaviour.parquet")
    shaped = {c["cluster"] for c in ctx.plan["concepts"]}
    parts = []
    for v in variants:
        folder = ctx.folder("verify", v)
        s = json.loads((folder / "verify.json").read_text())
        body = tag("p", esc(f"{s['n_rows']} (topic, concept) rows over {s['n_topics']} topics; noise ceiling of R² "
                            f"{num(s['r2_ceiling'])}. ") + link(report, folder / "verify.html", "verify's page"))
        body += summary_table(nan_for_null(s))
        frame = pd.read_parquet(folder / "verify_rows.parquet")
        keep = frame[frame["cluster"].isin(shaped)]
        top = frame.reindex(frame["actual"].abs().sort_values(ascending=False).index).head(8)
        rows = [[esc(r.topic), f"C{int(r.cluster)}", esc(short(ctx_name(ctx, int(r.cluster)), 50)), num(r.yhat_feature, 3),
                 num(r.actual, 3), ci(r.ci_low, r.ci_high), "shaped" if int(r.cluster) in shaped else ""]
                for r in pd.concat([keep, top]).drop_duplicates(["topic", "cluster"]).itertuples()]
        body += tag("h4", "Per (topic, concept): the shaped concepts' rows, then the largest measured shifts") + table(
            ["topic", "concept", "name", "predicted ΔB (feature-conditioned, cross-fit)", "measured ΔB", "95% CI", ""],
            rows)
        if "sweep" in s:
            rows = [[num(r["lam"]), num(r["actual"], 3), ci(r["ci_low"], r["ci_high"]), num(r["predicted"], 3),
                     num(r.get("heldout_acc"), 3)] for r in s["sweep"]]
            body += tag("h4", "The shaped run as a λ sweep of its concept (plain = λ 0)") + table(
                ["λ", "measured ΔB", "95% CI", "predicted", "held-out acc"], rows)
        parts.append(section(f"Run: {v}", body, level=3))
    parts.append(section("Detectors on the held-out generations (fire rate)", detector_table(ctx, pre, variants),
                         level=3))
    return "".join(parts)


def ctx_name(ctx: Ctx, k: int) -> str:
    from anatomist.audit.folder import AuditFolder

    return AuditFolder(ctx.audit_dir).name(k)


def detector_table(ctx: Ctx, pre: pd.DataFrame, variants: list[str]) -> str:
    posts = {v: pd.read_parquet(ctx.folder("eval", v) / "post" / "behaviour.parquet") for v in variants}
    rows = []
    for col in [c for c in pre.columns if c.startswith("fires_")]:
        cells = [esc(col[6:]), num(pre[col].mean(), 3)]
        for v in variants:
            cells += [num(posts[v][col].mean(), 3), num(posts[v][col].mean() - pre[col].mean(), 3)]
        rows.append(cells)
    head = ["detector", "base"] + [h for v in variants for h in (v, f"Δ {v}")]
    return table(head, rows)


def accuracy_part(ctx: Ctx, variants: list[str]) -> str:
    rows = []
    for v in variants:
        s = json.loads((ctx.folder("eval", v) / "summary.json").read_text())
        p = s.get("preference")
        if p:
            rows.append([esc(v), str(p["n"]), num(p["accuracy"], 3), ci(p["ci_low"], p["ci_high"]),
                         num(p["mean_margin"], 3)])
    if not rows:
        return tag("p", esc("No held-out pairs: preference accuracy was not measured (data.heldout_pairs)."))
    return tag("p", esc("Implicit reward β·(Δ log π − Δ log π_ref) against the base on held-out pairs; "
                        "Wilson 95% CI.")) + table(["run", "pairs", "accuracy", "95% CI", "mean margin"], rows)


def write_report(ctx: Ctx, folder: Path) -> Path:
    variants = ctx.variants()
    facts = "".join(tag("dt", esc(k)) + tag("dd", esc(v)) for k, v in {
        "config": ctx.config_path, "model": ctx.cfg.model, "SAE": ctx.cfg.sae, "data": ctx.data["train"],
        "runs": ", ".join(variants), "run folder": str(ctx.out)}.items())
    main = (tag("h1", "anatomist loop") + tag("dl", facts, class_="facts")
            + section("Screen", screen_part(ctx)) + section("Audit", audit_part(ctx))
            + section("What was shaped and why", shape_part(ctx))
            + section("Predicted vs measured behaviour shift", shift_part(ctx, variants))
            + section("Held-out preference accuracy", accuracy_part(ctx, variants))
            + section("Stages", stages_table(ctx)))
    path = Path(folder) / REPORT
    atomic_write_text(path, page("anatomist loop", main))
    return path
