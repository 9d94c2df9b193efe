"""The evaluation's HTML page (eval.html) and a section other reports can embed.

`render_eval(DIR)` reads DIR/summary.json and DIR/scores.parquet (written by `run_eval`) and
writes DIR/eval.html atomically: self-contained (plotly.js inlined, no network, a CSP that allows
only the page's own scripts), with every piece of dataset text — prompts, generations, topic
names, concept labels — HTML-escaped (anatomist/html.py: `esc`, `tag`, `table`, `page`).
`eval_section(summary, scores)` returns the body as one <section>.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from anatomist.errors import AnatomistError
from anatomist.fileio import atomic_write_text
from anatomist.html import esc, finite, long_text, num, page, plot, short, table, tag

TOP_CONCEPTS, MAX_HEATMAP_CLUSTERS, EXAMPLES_PER_TOPIC = 30, 40, 2


def ci(lo, hi, digits: int = 3) -> str:
    return f"[{num(lo, digits)}, {num(hi, digits)}]"


def _rows(summary: dict) -> pd.DataFrame:
    rows = pd.DataFrame(summary.get("rows", []))
    if rows.empty:
        raise AnatomistError("summary.json has no rows")
    return rows


def header(summary: dict) -> str:
    s = summary.get("settings", {})
    facts = [("model (post)", summary.get("model")), ("base (pre)", summary.get("base") or "—"),
             ("audit", summary.get("audit") or "—"), ("prompts", summary.get("prompts")),
             ("held-out prompts", s.get("n_prompts")), ("samples per prompt", s.get("samples_per_prompt")),
             ("sampling", f"T={s.get('temperature')}, ≤{s.get('max_new_tokens')} new tokens, seed {s.get('seed')}"),
             *((f"tag ({r})", t) for r, t in sorted(summary.get("tags", {}).items()))]
    dl = "".join(tag("dt", esc(k)) + tag("dd", esc(v)) for k, v in facts)
    legend = ("ΔB = mean over a topic's generations after − before (same prompts, same seeds); the 95% CI "
              "resamples prompts. Concept scores c are the audit's standardized scores, read by the audit's "
              "own model and SAE for both models.")
    return tag("dl", dl, class_="facts") + tag("p", legend, class_="muted")


def _applicable(rates: pd.DataFrame) -> pd.DataFrame:
    """Drop (topic, trait) rows where the trait's detector means nothing (harmful_compliance is
    "did not refuse": 1 on every ordinary prompt); "all" and unknown traits stay."""
    from anatomist.organism.traits import TRAITS

    keep = [t == "all" or name not in TRAITS or TRAITS[name].applies_to(t) for t, name in zip(rates.topic, rates.label)]
    return rates[keep]


def trait_table(rows: pd.DataFrame, has_pre: bool) -> str:
    rates = _applicable(rows[rows.kind.isin(["trait_rate", "refusal"])])
    head = ["trait", "topic", "prompts", "post rate", "95% CI"]
    if has_pre:
        head += ["pre rate", "ΔB", "95% CI of ΔB"]
    body = []
    for r in rates.itertuples():
        cells = [esc(r.label), esc(r.topic), str(int(r.n_prompts)), num(r.post, 3), ci(r.post_ci_low, r.post_ci_high)]
        if has_pre:
            cells += [num(r.pre, 3), tag("b", num(r.delta, 3)), ci(r.delta_ci_low, r.delta_ci_high)]
        body.append(cells)
    return table(head, body)


def trait_plot(rows: pd.DataFrame, has_pre: bool) -> str:
    rates = _applicable(rows[rows.kind.isin(["trait_rate", "refusal"]) & (rows.topic != "all")])
    value, lo, hi = ("delta", "delta_ci_low", "delta_ci_high") if has_pre else ("post", "post_ci_low", "post_ci_high")
    data = []
    for label, g in rates.groupby("label", sort=True):
        data.append({"type": "bar", "name": esc(label), "x": [esc(t) for t in g.topic], "y": finite(g[value]),
                     "error_y": {"type": "data", "symmetric": False, "array": finite(g[hi] - g[value]),
                                 "arrayminus": finite(g[value] - g[lo])}})
    title = "ΔB of the detector fire rate (after − before)" if has_pre else "detector fire rate"
    return plot("traits", data, {"barmode": "group", "yaxis": {"title": {"text": title}}}, height=420)


def concept_table(rows: pd.DataFrame, has_pre: bool) -> str:
    concepts = rows[(rows.kind == "concept") & (rows.topic != "all")]
    key = "delta" if has_pre else "post"
    top = concepts.reindex(concepts[key].abs().sort_values(ascending=False, kind="stable").index)[:TOP_CONCEPTS]
    head = ["concept", "topic", "prompts", "post c̄", "95% CI"] + (["pre c̄", "ΔB", "95% CI of ΔB"] if has_pre else [])
    body = []
    for r in top.itertuples():
        cells = [f"{esc(r.metric)} " + esc(short(r.label, 50)), esc(r.topic), str(int(r.n_prompts)), num(r.post, 3),
                 ci(r.post_ci_low, r.post_ci_high)]
        if has_pre:
            cells += [num(r.pre, 3), tag("b", num(r.delta, 3)), ci(r.delta_ci_low, r.delta_ci_high)]
        body.append(cells)
    return table(head, body)


def concept_heatmap(rows: pd.DataFrame, has_pre: bool) -> str:
    key = "delta" if has_pre else "post"
    concepts = rows[(rows.kind == "concept") & (rows.topic != "all")]
    grid = concepts.pivot(index="topic", columns="metric", values=key)                # [topics, clusters]
    keep = grid.abs().max(axis=0).sort_values(ascending=False, kind="stable").index[:MAX_HEATMAP_CLUSTERS]
    grid = grid[keep]
    labels = concepts.drop_duplicates("metric").set_index("metric").label
    bound = float(np.nanmax(np.abs(grid.to_numpy()))) if grid.size else 1.0
    data = [{"type": "heatmap", "z": [finite(row) for row in grid.to_numpy()],
             "x": [esc(m) for m in grid.columns], "y": [esc(t) for t in grid.index],
             "text": [[esc(short(labels.get(m, ""), 60)) for m in grid.columns] for _ in grid.index],
             "hovertemplate": "%{y} · %{x}<br>%{text}<br>" + key + " %{z:.3f}<extra></extra>",
             "zmin": -bound or -1, "zmax": bound or 1, "colorscale": [[0, "#2a6fb0"], [0.5, "#f4f4f4"], [1, "#c0392b"]]}]
    return plot("concepts", data, {"xaxis": {"tickangle": -45}}, height=120 + 40 * len(grid.index))


def preference_block(pref: dict) -> str:
    body = []
    for role in ("pre", "post"):
        p = pref.get(role)
        if p:
            body.append([esc(role), esc(p["method"]), str(p["n"]), num(p["accuracy"], 3), ci(p["ci_low"], p["ci_high"]),
                         num(p.get("accuracy_per_token"), 3), num(p["mean_margin"], 3)])
    note = ("implicit_reward: β·(log π − log π_ref) of chosen > rejected, π_ref = the base; logprob (a model "
            "without a reference): log π(y⁺) > log π(y⁻) — not the same test (see preference.py).")
    return table(["role", "method", "pairs", "accuracy", "95% CI", "per-token logprob acc.", "mean margin"], body) \
        + tag("p", esc(note), class_="muted")


def safety_block(safety: dict) -> str:
    body = []
    for role in ("pre", "post"):
        for name, r in sorted(safety.get(role, {}).items()):
            body.append([esc(role), esc(name), f"{r['k']}/{r['n']}", num(r["rate"], 3), ci(r["ci_low"], r["ci_high"])])
    note = ("harmful_compliance: harmful prompts answered without a refusal (≥ 5 words); over_refusal: XSTest "
            "safe prompts refused. Refusal = the phrase rules of refusal.py (accuracy on labelled responses in "
            "its docstring).")
    return table(["role", "measure", "k/n", "rate", "95% CI"], body) + tag("p", esc(note), class_="muted")


def examples(scores: pd.DataFrame) -> str:
    """The first generations of the first prompts per topic, before and after side by side."""
    out = []
    first = scores[scores["sample"] == 0]
    for topic, g in first.groupby("topic", sort=True):
        for pid in list(dict.fromkeys(g.prompt_id))[:EXAMPLES_PER_TOPIC]:
            sides = []
            for role in ("pre", "post"):
                row = g[(g.prompt_id == pid) & (g.role == role)]
                if len(row):
                    sides.append(tag("div", tag("h5", esc(role)) + long_text(str(row.text.iloc[0]))))
            out.append(tag("div", tag("h4", esc(topic) + " · " + esc(pid)) + tag("div", "".join(sides), class_="sides"),
                           class_="pair"))
    return "".join(out)


def eval_section(summary: dict, scores: pd.DataFrame) -> tuple[str, list[str]]:
    """(the evaluation as one <section>, the plot snippets it holds — for the page's CSP)."""
    rows = _rows(summary)
    has_pre = "delta" in rows.columns and rows["delta"].notna().any()
    plots = [trait_plot(rows, has_pre)]
    parts = [tag("h1", "anatomist eval"), header(summary),
             tag("h2", "Traits and refusal (organism detectors)"), plots[0], trait_table(rows, has_pre)]
    if (rows.kind == "concept").any():
        plots.append(concept_heatmap(rows, has_pre))
        parts += [tag("h2", "Concepts (audit clusters)"), plots[1], concept_table(rows, has_pre)]
    if summary.get("preference"):
        parts += [tag("h2", "Held-out preference accuracy"), preference_block(summary["preference"])]
    if summary.get("safety"):
        parts += [tag("h2", "Safety"), safety_block(summary["safety"])]
    parts += [tag("h2", "Example generations"), examples(scores)]
    return tag("section", "".join(parts), id="evaluation"), plots


def render_eval(out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    for name in ("summary.json", "scores.parquet"):
        if not (out_dir / name).is_file():
            raise AnatomistError(f"{out_dir}: {name} is missing (run `anatomist eval` first)")
    summary = json.loads((out_dir / "summary.json").read_text())
    body, plots = eval_section(summary, pd.read_parquet(out_dir / "scores.parquet"))
    atomic_write_text(out_dir / "eval.html", page(f"anatomist eval · {summary.get('model', '')}", body, plots=plots))
    return out_dir / "eval.html"
