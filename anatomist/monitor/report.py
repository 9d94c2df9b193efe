"""monitor.html: one plot per monitored metric — its shift from step 0 over the training steps with
the 95% CI as a band, zero, any alarm threshold, and what the audit predicted:

- the predicted endpoint, where `anatomist predict` left calibrated predictions (pred_<predictor>
  columns of AUDIT/predictions.parquet, ΔB units) for the concept: the mean over the monitored
  prompts' topics, drawn at the last step;
- otherwise the audit's dataset-wide direction for the concept (amplify / suppress / none).

`monitor_section(folder)` returns the section and its plots for a page that embeds it.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from anatomist.html import esc, finite, num, page, plot, section, table, tag
from anatomist.monitor import journal

PREDICTIONS = "predictions.parquet"   # written by `anatomist predict` into the audit folder


def predicted(meta: dict) -> dict[str, tuple[str, float | None]]:
    """{metric: (what was predicted, endpoint or None)} for the concept metrics of an audit."""
    if not meta.get("audit"):
        return {}
    import pandas as pd

    from anatomist.audit.folder import AuditFolder

    audit = AuditFolder(meta["audit"])
    out: dict[str, tuple[str, float | None]] = {}
    rows = audit.rows[audit.rows["topic"] == "all"].set_index("cluster") if audit.has("rows.parquet") else None
    for m in meta["metrics"]:
        if m.startswith("c_") and rows is not None and int(m[2:]) in rows.index:
            out[m] = (f"audit: {rows.loc[int(m[2:]), 'direction']}", None)
    path = Path(meta["audit"]) / PREDICTIONS
    if path.is_file():
        pred = pd.read_parquet(path)
        cols = [c for c in pred.columns if c.startswith("pred_")]
        if cols:
            weights = Counter(topic for _, topic in meta["prompts"])
            for m in meta["metrics"]:
                sel = pred[(pred["cluster"] == int(m[2:]))] if m.startswith("c_") else pred.iloc[0:0]
                w = sel["topic"].map(weights).fillna(0).to_numpy(float)
                if len(sel) and w.sum() > 0:
                    out[m] = (f"predicted ({cols[0][5:]})", float((sel[cols[0]].to_numpy(float) * w).sum() / w.sum()))
    return out


def monitor_section(folder: str | Path) -> tuple[str, list[str]]:
    meta, points = journal.read_meta(folder), journal.read_points(folder)
    if meta is None or not points:
        return "", []
    steps = [p["step"] for p in points]
    thresholds = {}
    for spec, metric in meta.get("alarms", {}).items():
        thresholds.setdefault(metric, []).append((spec, float(spec.split(">" if ">" in spec else "<")[-1])))
    preds = predicted(meta)
    plots, blocks = [], []
    for i, (metric, label) in enumerate(meta["metrics"].items()):
        col = lambda k: [p["metrics"][metric][k] for p in points]  # noqa: E731
        lo, hi = col("ci_low"), col("ci_high")
        data = [
            {"type": "scatter", "mode": "lines", "x": steps + steps[::-1], "y": finite(hi + lo[::-1]),
             "fill": "toself", "fillcolor": "rgba(31,119,180,0.18)", "line": {"width": 0}, "name": "95% CI",
             "hoverinfo": "skip"},
            {"type": "scatter", "mode": "lines+markers", "x": steps, "y": finite(col("shift")), "name": "shift"},
            {"type": "scatter", "mode": "lines", "x": [steps[0], steps[-1]], "y": [0, 0], "name": "0",
             "line": {"color": "#999", "dash": "dot"}},
        ]
        for spec, t in thresholds.get(metric, []):
            data.append({"type": "scatter", "mode": "lines", "x": [steps[0], steps[-1]], "y": [t, t],
                         "name": f"alarm {spec}", "line": {"color": "#c0392b", "dash": "dash"}})
        note, endpoint = preds.get(metric, ("", None))
        if endpoint is not None:
            data.append({"type": "scatter", "mode": "markers", "x": [steps[-1]], "y": [endpoint], "name": note,
                         "marker": {"symbol": "star", "size": 14, "color": "#e67e22"}})
        layout = {"xaxis": {"title": {"text": "training step"}},
                  "yaxis": {"title": {"text": "shift from step 0"}}, "showlegend": True}
        snippet = plot(f"monitor-{i}", data, layout, height=300)
        plots.append(snippet)
        caption = tag("p", esc(f"{metric}: {label}") + (f" — {esc(note)}" if note and endpoint is None else ""))
        blocks.append(caption + snippet)
    fired = [[str(p["step"]), esc(spec), esc(meta["metrics"][meta["alarms"][spec]]),
              num(p["metrics"][meta["alarms"][spec]]["shift"], 3)] for p in points for spec in p["alarms"]]
    head = tag("p", esc(f"{len(meta['prompts'])} held-out prompts × {meta['samples']} samples, seed {meta['seed']}, "
                        f"{cadence(meta)}; shifts are paired by prompt with step 0 (95% t-interval "
                        f"over prompts). {estimator(meta, points)}"))
    alarms = table(["step", "alarm", "metric", "shift"], fired) if fired else tag("p", "No alarm fired.")
    return section("Concept monitor", head + alarms + "".join(blocks)), plots


def estimator(meta: dict, points: list[dict]) -> str:
    if meta.get("estimator") != "paired":
        return "Each point samples the policy afresh."
    fresh = sum(len(p.get("fallback", [])) for p in points)
    low = min(p.get("ess_share", 1.0) for p in points)
    return (f"Paired estimator: each point reweighs the prompts' kept samples by the policy's log-probs (lowest "
            f"median ESS share {low:.2f}); {fresh} prompt samplings afresh where the ESS fell below "
            f"{meta['min_ess']:.0%} of the samples.")


def cadence(meta: dict) -> str:
    every, budget = meta["every"], meta.get("budget")
    if budget is None:
        return f"every {every} steps"
    fixed = f"every {every} steps" if isinstance(every, int) else "at the first and last step (the run ended before a cadence was fixed)"
    return f"{fixed} (the default cadence: within {budget:.0%} of training time)"


def write_report(folder: str | Path) -> Path:
    from anatomist.fileio import atomic_write_text

    body, plots = monitor_section(folder)
    path = Path(folder) / journal.REPORT
    atomic_write_text(path, page("anatomist monitor", tag("h1", "Concept trajectories during training") + body,
                                 plots=plots))
    return path
