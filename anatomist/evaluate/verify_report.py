"""verify.html: predicted vs. actual behaviour shift, one self-contained page (no network).

Scatter per predictor: x = cross-fitted prediction, y = actual ΔB with its 95% CI; hovering a
point names its (topic, cluster, label) row, clicking shows the row's numbers below the plot.
With a λ sweep: the concept's actual shift (CI band) and the shaped-run prediction against λ, and
held-out preference accuracy on a second axis. Dataset text (topics, labels) is HTML-escaped;
the click handler writes with textContent. Built with anatomist/html.py (its helpers and CSP).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from anatomist.fileio import atomic_write_text
from anatomist.html import esc, num, page, plot, section, table, tag

COLOURS = {"feature": "#c0392b", "prompt": "#2a6fb0", "naive": "#7f8c8d", "first_plain": "#8e44ad",
           "first_adam": "#27ae60"}
NAMES = {"feature": "feature-conditioned", "prompt": "prompt-conditioned", "naive": "naive",
         "first_plain": "first-order, plain gradient (DPO direction × base generations)",
         "first_adam": "first-order, Adam sign step (DPO direction × base generations)"}
ROW_FIELDS = ("topic", "cluster", "label", "n", "dbar", "dbar_all", "spread", "actual", "ci_low", "ci_high",
              "yhat_feature", "yhat_prompt", "yhat_naive", "yhat_first_plain", "yhat_first_adam", "direction")

CLICK_JS = """
document.getElementById('scatter').on('plotly_click', function (ev) {
  var d = ev.points[0].customdata, out = document.getElementById('picked');
  out.textContent = '';
  Object.keys(d).forEach(function (k) {
    var dt = document.createElement('dt'), dd = document.createElement('dd');
    dt.textContent = k; dd.textContent = d[k]; out.appendChild(dt); out.appendChild(dd);
  });
});
"""


def _clean(v):
    if isinstance(v, (np.floating, float)):
        return None if not math.isfinite(float(v)) else round(float(v), 4)
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, np.bool_):
        return bool(v)
    return v  # strings reach the page only through textContent (click) or esc (hover)


def scatter(result) -> str:
    rows = result.rows
    visible = "first_adam" if "yhat_first_adam" in rows else "feature"
    data = []
    for name in NAMES:
        col = f"yhat_{name}"
        if col not in rows:
            continue
        r2 = result.summary["predictors"][name]["r2"]
        data.append({
            "type": "scatter", "mode": "markers", "name": f"{NAMES[name]} (R² {num(r2)})",
            "x": [_clean(v) for v in rows[col]], "y": [_clean(v) for v in rows["actual"]],
            "error_y": {"type": "data", "symmetric": False, "thickness": 0.6, "width": 0,
                        "array": [_clean(v) for v in rows["ci_high"] - rows["actual"]],
                        "arrayminus": [_clean(v) for v in rows["actual"] - rows["ci_low"]]},
            "marker": {"color": COLOURS[name], "size": 7, "opacity": 0.75},
            "visible": True if name == visible else "legendonly",
            "text": [f"{esc(t)} · cluster {c} · {esc(lab)}" for t, c, lab in zip(rows.topic, rows.cluster, rows.label)],
            "customdata": [{f: _clean(r[f]) for f in ROW_FIELDS if f in rows} for _, r in rows.iterrows()],
            "hovertemplate": "%{text}<br>predicted %{x:.3f}<br>actual %{y:.3f}<extra></extra>",
        })
    lo = float(np.nanmin([rows["actual"].min(), *[rows[f"yhat_{n}"].min() for n in NAMES if f"yhat_{n}" in rows]]))
    hi = float(np.nanmax([rows["actual"].max(), *[rows[f"yhat_{n}"].max() for n in NAMES if f"yhat_{n}" in rows]]))
    data.append({"type": "scatter", "mode": "lines", "x": [lo, hi], "y": [lo, hi], "name": "y = x",
                 "line": {"color": "#bbb", "dash": "dot"}, "hoverinfo": "skip"})
    layout = {"xaxis": {"title": {"text": "predicted ΔB (calibrated on other topics)"}, "zeroline": True},
              "yaxis": {"title": {"text": "actual ΔB (post − pre, held-out prompts)"}, "zeroline": True}}
    return plot("scatter", data, layout, height=520)


def sweep_plot(sweep) -> str:
    lam = sweep["lam"].tolist()
    data = [
        {"type": "scatter", "mode": "lines+markers", "name": "actual ΔB", "x": lam, "y": [_clean(v) for v in sweep.actual],
         "error_y": {"type": "data", "symmetric": False, "array": [_clean(v) for v in sweep.ci_high - sweep.actual],
                     "arrayminus": [_clean(v) for v in sweep.actual - sweep.ci_low]}, "line": {"color": "#c0392b"}},
        {"type": "scatter", "mode": "lines+markers", "name": "predicted (shaped Δ̄^λ)", "x": lam,
         "y": [_clean(v) for v in sweep.predicted], "line": {"color": "#c0392b", "dash": "dash"}},
    ]
    if sweep["heldout_acc"].notna().any():
        data.append({"type": "scatter", "mode": "lines+markers", "name": "held-out preference accuracy", "x": lam,
                     "y": [_clean(v) for v in sweep.heldout_acc], "yaxis": "y2", "line": {"color": "#2a6fb0"}})
    layout = {"xaxis": {"title": {"text": "λ (λ < 0 suppresses)"}},
              "yaxis": {"title": {"text": f"ΔB of cluster {int(sweep.cluster.iloc[0])}"}},
              "yaxis2": {"title": {"text": "accuracy"}, "overlaying": "y", "side": "right", "range": [0, 1]}}
    return plot("sweep", data, layout, height=420)


def summary_table(summary: dict) -> str:
    body = []
    ceiling = summary["r2_ceiling"]
    for name, s in summary["predictors"].items():
        diffs = "; ".join(f"vs {d[9:]} {num(v[0])} [{num(v[1])}, {num(v[2])}]" for d, v in s.items()
                          if d.startswith("r2_minus_"))
        body.append([esc(NAMES.get(name, name)), num(s["r2"]), f"[{num(s['r2_ci'][0])}, {num(s['r2_ci'][1])}]",
                     num(s["r2"] / ceiling) if ceiling and ceiling > 0 else "",
                     f"{num(s['rho'])} [{num(s['rho_ci'][0])}, {num(s['rho_ci'][1])}]", num(s["rho_raw"]),
                     f"{num(s['sign_accuracy'])} of {s['n_sign_rows']}", esc(diffs), str(s["n_rows"]),
                     esc(s["calibration"]),
                     esc(", ".join(f"{c}={num(v, 3)}" for c, v in zip(s["inputs"], s["coef_all_rows"])))])
    return table(["predictor", "R²", "95% CI", "× ceiling", "Spearman ρ [CI]", "ρ uncalibrated",
                  "sign on sure flagged rows", "ΔR² vs baselines (paired bootstrap)", "rows", "calibration",
                  "coef (all rows)"], body)


def build_html(result) -> str:
    s = result.summary
    plots = [scatter(result)]
    facts = (f"{s['n_rows']} (topic, cluster) rows over {s['n_topics']} topics; noise ceiling on R²: "
             f"{num(s['r2_ceiling'])}. {esc(s['definition'])}. Where ΔB's variance sits (in sample): one shift "
             f"per concept for every topic explains {num(s['r2_cluster_means'])}, one per topic "
             f"{num(s['r2_topic_means'])}.")
    if s.get("target"):
        facts += f" Measured ΔB: {esc(s['target'])}."
    if s.get("first_order"):
        facts += f" First-order forecast: {esc(s['first_order'])}."
    parts = [tag("h1", "anatomist · predicted vs. actual"), tag("p", facts, class_="muted"),
             section("Per (topic, concept)", summary_table(s))]
    if "concept" in s:
        c = s["concept"]
        parts.append(section("Per concept, over the whole dataset", tag(
            "p", f"{c['n_rows']} concepts, calibrated leaving one concept out; noise ceiling {num(c['r2_ceiling'])}.",
            class_="muted") + summary_table(c)))
    parts.append(section("Predicted vs. actual", tag("p", "Click a point to see its row.", class_="muted") + plots[0]
                         + tag("dl", "", id="picked", class_="facts")))
    if result.sweep is not None and len(result.sweep):
        plots.append(sweep_plot(result.sweep))
        sw = result.sweep
        rows = [[num(r.lam), num(r.actual), f"[{num(r.ci_low)}, {num(r.ci_high)}]", num(r.predicted),
                 num(r.heldout_acc)] for r in sw.itertuples()]
        parts.append(section("λ sweep", plots[-1] + table(["λ", "actual ΔB", "95% CI", "predicted", "held-out acc"],
                                                          rows)))
    return page("anatomist verify", "".join(parts), plots=plots, scripts=[CLICK_JS])


def render(result, path: str | Path) -> Path:
    path = Path(path)
    atomic_write_text(path, build_html(result))
    return path
