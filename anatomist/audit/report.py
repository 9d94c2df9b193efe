"""The audit's HTML report: one self-contained file built only from the audit folder (audit/folder.py).

`render_report(DIR)` reads audit.json, rows.parquet, clusters.parquet, pairs.parquet and
examples.json (+ length.parquet, score.json and the screen where present) and writes DIR/report.html
atomically. The screen (model-free detectors and pair hygiene) comes right after the title.
The page is built with the toolkit of anatomist/html.py (inlined plotly.js, a CSP that allows
only the page's own scripts, no network); everything that comes from the dataset (prompts,
responses, tokens, labels, ids, topic names) is escaped with its `esc`, in the page and in
plotly's hover and axis text.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from anatomist.audit.folder import CLUSTERS, EXAMPLES, META, PAIRS, REPORT, ROWS, AuditFolder
from anatomist.audit.tracks import tracks_text
from anatomist.fileio import atomic_write_text
from anatomist.html import badge, esc, finite, long_text, num, page, plot, section, short, table, tag
from anatomist.screen.report import screen_section

SECTIONS = ("Audit", "What DPO will push", "Effect sizes", "Topics × concepts", "Concept graph",
            "Concepts", "Topics")
TRUTH = "Planted confounds found"          # only when the audit was scored against truth (score.json)
COLOURS = {"amplify": "#c0392b", "suppress": "#2a6fb0", "none": "#9a9a9a"}
DIVERGING = [[0.0, "#2a6fb0"], [0.5, "#f4f4f4"], [1.0, "#c0392b"]]
TOP_ROWS, MAX_CARDS, MAX_HEATMAP_CLUSTERS, MAX_GRAPH_NODES = 30, 24, 40, 60
SNIPPETS, PAIRS_EACH_WAY, WINDOW = 5, 2, 12
FILES = (META, ROWS, CLUSTERS, PAIRS, EXAMPLES)


def render_report(audit_dir: Path) -> Path:
    """Write DIR/report.html from the files of an audit folder; returns its path."""
    audit = AuditFolder(audit_dir)
    audit.require(*FILES)                  # every missing file named at once; each is checked as it is read
    out = audit.path / REPORT
    atomic_write_text(out, build_html(audit))
    return out


def lens_text(tokens: list[str]) -> str:
    return " · ".join(t.strip() for t in tokens)


def label_of(audit: AuditFolder, k: int) -> str:
    """The concept's readable name (`AuditFolder.name`): its label, or its top context and why not."""
    return audit.name(k)


# -- plots (plotly figures as plain dicts, drawn by the inlined plotly.js) -----------------------

def volcano(audit: AuditFolder) -> str:
    rows = audit.rows[audit.rows["tested"] & audit.rows["q"].notna()]
    data = []
    for direction, group in rows.groupby("direction", sort=True):
        hover = [f"{esc(short(label_of(audit, c)))} · {esc(t)}<br>d={num(d)}  q={num(q, 3)}  n={n}"
                 for c, t, d, q, n in zip(group["cluster"], group["topic"], group["d"], group["q"], group["n"])]
        data.append({"type": "scatter", "mode": "markers", "name": esc(direction), "x": finite(group["d"]),
                     "y": finite(-np.log10(group["q"].clip(lower=1e-300))), "hovertext": hover,
                     "hoverinfo": "text", "marker": {"color": COLOURS.get(direction, "#555"), "size": 7,
                                                     "opacity": 0.8}})
    alpha = audit.meta.get("config", {}).get("alpha", 0.05)
    layout = {"xaxis": {"title": {"text": "effect size d = Δ̄ / sd"}, "zeroline": True},
              "yaxis": {"title": {"text": "−log10 q"}},
              "shapes": [{"type": "line", "xref": "paper", "x0": 0, "x1": 1, "y0": -math.log10(alpha),
                          "y1": -math.log10(alpha), "line": {"dash": "dot", "color": "#777", "width": 1}}]}
    return plot("volcano", data, layout)


def ranked_clusters(audit: AuditFolder, limit: int) -> list[int]:
    """Clusters in order of their first appearance in the ranked rows (topic rows first)."""
    order = list(dict.fromkeys(int(c) for c in audit.rows.loc[audit.rows["tested"], "cluster"]))
    seen = set(order)
    rest = [int(c) for c in audit.clusters["cluster"] if int(c) not in seen]
    return (order + rest)[:limit]


def heatmap(audit: AuditFolder) -> str:
    topic_rows = audit.rows[audit.rows["topic"] != "all"]
    names = dict(zip(topic_rows["topic_id"], topic_rows["topic"]))
    clusters = ranked_clusters(audit, MAX_HEATMAP_CLUSTERS)
    means, n = (topic_rows.pivot_table(index="topic_id", columns="cluster", values=col, sort=True)
                .reindex(columns=clusters) for col in ("mean", "n"))
    topics, cells, n = list(means.index), means.to_numpy(), n.reindex(index=means.index).to_numpy()
    hover = [[f"{esc(names[t])} × C{c}: {esc(short(label_of(audit, c)))}<br>Δ̄={num(v, 3)}  n={num(m, 0)}"
              for c, v, m in zip(clusters, cells[i], n[i])] for i, t in enumerate(topics)]
    bound = float(np.nanmax(np.abs(cells))) if np.isfinite(cells).any() else 1.0
    data = [{"type": "heatmap", "z": [finite(r) for r in cells],
             "x": [f"C{c} {esc(short(label_of(audit, c), 16))}" for c in clusters],
             "y": [f"T{t} {esc(short(names[t], 30))}" for t in topics], "hovertext": hover, "hoverinfo": "text",
             "colorscale": DIVERGING, "zmid": 0, "zmin": -bound, "zmax": bound,
             "colorbar": {"title": {"text": "Δ̄"}}}]
    layout = {"xaxis": {"type": "category", "tickangle": -45}, "yaxis": {"type": "category", "automargin": True},
              "margin": {"l": 180, "r": 20, "t": 30, "b": 80}}
    return plot("heatmap", data, layout, height=max(300, 60 + 28 * len(topics)))


def similarity(audit: AuditFolder, clusters: list[int]) -> np.ndarray:
    """[C, C] correlation of the clusters' Δc across pairs (concepts DPO would move together)."""
    pairs = audit.pairs[audit.pairs["cluster"].isin(clusters)]
    wide = pairs.pivot_table(index="pair_id", columns="cluster", values="delta", sort=True)
    wide = wide.reindex(columns=clusters)
    x = wide.to_numpy() - np.nanmean(wide.to_numpy(), 0)
    x = np.nan_to_num(x / np.clip(np.sqrt(np.nansum(x ** 2, 0)), 1e-12, None))
    return np.clip(x.T @ x, -1, 1)


def mds_layout(sim: np.ndarray) -> np.ndarray:
    """[C, 2] classical MDS of the unit Δc vectors (squared distance 2 − 2·corr); signs fixed."""
    d2 = 2 * (1 - sim)
    centre = np.eye(len(sim)) - 1 / len(sim)
    vals, vecs = np.linalg.eigh(-0.5 * centre @ d2 @ centre)
    xy = vecs[:, ::-1][:, :2] * np.sqrt(np.clip(vals[::-1][:2], 1e-12, None))
    if xy.shape[1] < 2:
        xy = np.hstack([xy, np.zeros((len(sim), 2 - xy.shape[1]))])
    return xy * np.where(xy[np.abs(xy).argmax(0), [0, 1]] < 0, -1, 1)


def concept_graph(audit: AuditFolder, threshold: float = 0.3, per_node: int = 3) -> str:
    clusters = ranked_clusters(audit, MAX_GRAPH_NODES)
    sim = similarity(audit, clusters)
    xy = mds_layout(sim) if len(clusters) > 2 else np.array([[i, 0.0] for i in range(len(clusters))])
    edges = sorted({(min(i, j), max(i, j)) for i in range(len(clusters))
                    for j in np.argsort(-sim[i], kind="stable")[: per_node + 1] if j != i and sim[i, j] >= threshold})
    ex = [v for i, j in edges for v in (xy[i, 0], xy[j, 0], None)]
    ey = [v for i, j in edges for v in (xy[i, 1], xy[j, 1], None)]
    info = audit.clusters.set_index("cluster").loc[clusters]
    size = 8 + 22 * np.sqrt(info["n_features"].to_numpy() / max(1, info["n_features"].max()))
    hover = [f"C{c}: {esc(short(label_of(audit, c), 60))}<br>{n} features · Δ̄={num(m, 3)} · {esc(d)}"
             + (f"<br>lens: {esc(short(lens_text(audit.lenses[c]), 60))}" if audit.lenses.get(c) else "")
             for c, n, m, d in zip(clusters, info["n_features"], info["mean_delta"], info["direction"])]
    data = [{"type": "scatter", "mode": "lines", "x": finite(ex), "y": finite(ey), "hoverinfo": "skip",
             "line": {"color": "#ccc", "width": 1}, "showlegend": False},
            {"type": "scatter", "mode": "markers+text", "x": finite(xy[:, 0]), "y": finite(xy[:, 1]),
             "text": [f"C{c}" for c in clusters], "textposition": "top center", "hovertext": hover,
             "hoverinfo": "text", "showlegend": False,
             "marker": {"size": finite(size), "color": [COLOURS.get(d, "#555") for d in info["direction"]],
                        "line": {"color": "white", "width": 1}}}]
    hidden = {"visible": False}
    return plot("graph", data, {"xaxis": hidden, "yaxis": hidden}, height=520)


# -- sections ---------------------------------------------------------------------------------------

def header(audit: AuditFolder) -> str:
    m = audit.meta
    facts = [("model", m.get("model", "")), ("SAE", m.get("sae", "")), ("layer", m.get("layer", "")),
             ("pairs", m.get("data", {}).get("n_pairs", "")), ("data hash", m.get("data", {}).get("hash", "")),
             ("concept clusters", m.get("n_clusters", len(audit.clusters))),
             ("features clustered", m.get("n_features_clustered", "")),
             ("topics", len(m.get("topics", {}).get("names", [])))]
    dl = "".join(tag("dt", esc(k)) + tag("dd", esc(v if v != "" else "—")) for k, v in facts)
    settings = [*sorted(m.get("config", {}).items()),
                *((f"sae.{k}", v) for k, v in sorted(m.get("sae_cfg", {}).items()))]
    params = table(["parameter", "value"], [[esc(k), esc(json.dumps(v, sort_keys=True))] for k, v in settings])
    timings = ", ".join(f"{esc(k)} {num(v, 1)}" for k, v in sorted(m.get("timings", {}).items()))
    legend = ("Δc = c(y⁺) − c(y⁻): positive means the chosen response carries more of the concept, so DPO "
              f"is predicted to {badge('amplify')} it; negative: {badge('suppress')}. A direction needs "
              "q &lt; α and split-half agreement.")
    note = m.get("stats", {}).get("note", "")   # "pairs share prompts: …" when the statistics are clustered
    body = tag("dl", dl, class_="facts") + tag("p", legend) + (tag("p", esc(note)) if note else "") \
        + tag("details", tag("summary", "parameters") + params + tag("p", "timings (s): " + timings))
    return section(SECTIONS[0], body, level=1, title="anatomist audit")


def row_cells(audit: AuditFolder, r, linked: set[int]) -> list[str]:
    c = int(r.cluster)
    name = esc(short(label_of(audit, c), 50))
    lens = audit.lenses.get(c)
    title = "logit lens: " + lens_text(lens) if lens else None
    label = tag("a", name, href=f"#cluster-{c}", title=title) if c in linked else tag("span", name, title=title)
    tracks = tracks_text(audit.tracks.get(c, []))
    label += tag("div", esc(tracks), class_="muted") if tracks else ""
    return [f"C{c} " + label, esc(r.topic), str(int(r.n)), num(r.mean, 3), num(r.excess, 3), num(r.d),
            f"[{num(r.ci_low, 3)}, {num(r.ci_high, 3)}]", "✓" if r.split_half else "✗", num(r.q, 3),
            badge(str(r.direction))]


def push_table(audit: AuditFolder) -> str:
    tested = audit.rows[audit.rows["tested"]]
    topic_rows, overall = tested[tested["topic"] != "all"], tested[tested["topic"] == "all"]
    linked = set(ranked_clusters(audit, MAX_CARDS))
    header_ = ["concept", "topic", "n", "Δ̄", "Δ̄ − all", "d", "95% CI of Δ̄", "split-half", "q", "direction"]

    def block(frame: pd.DataFrame, caption: str) -> str:
        shown = frame.head(TOP_ROWS)
        note = f"{caption}: top {len(shown)} of {len(frame)} tested rows, ranked as in rows.parquet."
        return tag("p", esc(note)) + table(header_, [row_cells(audit, r, linked) for r in shown.itertuples()],
                                           class_="ranked")
    return block(topic_rows, "Per topic (ranked by how far a topic exceeds the dataset)") + \
        tag("h3", "Dataset-wide") + block(overall, "All pairs (ranked by |z|)") + length_table(audit)


def truth_section(score: dict) -> str:
    """The audit against the organism's planted confounds (organism/score.py's score.json)."""
    body = []
    for cell in score["cells"]:
        r = cell.get("row") or {}
        cluster = r.get("cluster")
        name = "—" if cluster is None else ("length" if cluster == -1 else f"C{cluster}")
        side = "chosen" if cell["strength"] > 0.5 else "rejected"
        body.append([esc(cell["trait"]), esc(cell["topic"]), f"{side} ({num(cell['strength'])})", str(cell["n_pairs"]),
                     "✓ found" if cell["found"] else "✗ missed", esc(name), num(r.get("rho", float("nan"))),
                     num(r.get("q", float("nan")), 3), badge(str(r.get("direction", "none"))),
                     badge(str(r.get("expected", "none")))])
    headline = (f"recall {score['recall']:.2f} ({score['n_found']} of {score['n_planted_cells']} planted "
                f"(trait, topic) cells found with the right sign) · precision {score['precision']:.2f} of "
                f"{score['n_flagged']} flagged topic rows · sign accuracy {score['sign_accuracy']:.2f}")
    threshold = score.get("threshold", score.get("rho_min"))
    tracks = (f"tracks the trait's detector within one topic and one side (|rank-biserial| ≥ {threshold})"
              if score.get("matching", "stratified") == "stratified" else
              f"tracks the trait's detector (|Spearman ρ| ≥ {threshold}, matching '{score['matching']}')")
    precision = ("A flagged row is right (precision) when the traits measured asymmetric in its topic carry at "
                 "least half of its chosen − rejected gap"
                 + (f"; with the traits shuffled within (topic, side) the rule credits {score['null_credit']:.2f}"
                    if "null_credit" in score else "")
                 + (f"; planted-only precision {score['precision_planted']:.2f}"
                    if "precision_planted" in score else "") + ". ")
    note = ("Each planted cell puts a trait on one side of the pairs of one topic. A cell is found when a "
            f"flagged row of that topic belongs to a concept that {tracks} and moves the way the planted side "
            "implies: 'expected' is that direction for the matched concept (a concept anti-correlated with the "
            "trait should be suppressed where the trait is chosen). " + precision + "Truth: " + score["truth"])
    header_ = ["trait", "topic", "planted on (strength)", "pairs", "", "matched row", "ρ", "q", "direction",
               "expected"]
    return tag("p", tag("b", esc(headline))) + tag("p", esc(note), class_="muted") + table(header_, body,
                                                                                         class_="truth")


def length_table(audit: AuditFolder) -> str:
    """Response length, tested like a concept (audit/length.py): DPO's reward sums over tokens."""
    if audit.length_rows is None:
        return ""
    rows = audit.length_rows[audit.length_rows["tested"]]
    body = [[esc(r.topic), str(int(r.n)), num(r.mean, 3), f"×{num(np.exp(r.mean))}",
             f"[{num(r.ci_low, 3)}, {num(r.ci_high, 3)}]", "✓" if r.split_half else "✗", num(r.q, 3),
             badge(str(r.direction))] for r in rows.itertuples()]
    note = ("Δ = log tokens(chosen) − log tokens(rejected); ×exp(Δ̄) is the typical chosen/rejected length "
            "ratio. DPO's implicit reward is a sum over tokens, so 'amplify' here predicts longer answers "
            "(its own FDR family, one test per topic).")
    return tag("h3", "Response length") + tag("p", esc(note), class_="muted") + \
        table(["topic", "n", "Δ̄ log length", "ratio", "95% CI of Δ̄", "split-half", "q", "direction"], body,
              class_="length")


def snippet(tokens: list[str], acts: list[float], scale: float) -> str:
    peak = int(np.argmax(acts)) if acts else 0
    lo, hi = max(0, peak - WINDOW), min(len(tokens), peak + WINDOW + 1)
    spans = "".join(tag("span", esc(t), style=f"background:rgba(230,140,0,{min(1.0, max(0.0, a / scale)):.2f})",
                        title=num(a, 3)) for t, a in zip(tokens[lo:hi], acts[lo:hi]))
    return tag("div", ("…" if lo else "") + spans + ("…" if hi < len(tokens) else ""), class_="snippet")


def pair_view(p: dict) -> str:
    side = lambda name, text: tag("div", tag("h5", name) + long_text(str(text)))  # noqa: E731
    meta = tag("p", f"pair {esc(p.get('pair_id', ''))} · Δc = {num(p.get('delta'), 3)}", class_="muted")
    prompt = tag("div", tag("h5", "prompt") + long_text(str(p.get("prompt", ""))))
    return tag("div", meta + prompt + tag("div", side("chosen", p.get("chosen", "")) +
                                          side("rejected", p.get("rejected", "")), class_="sides"), class_="pair")


def card(audit: AuditFolder, k: int) -> str:
    info = audit.clusters.set_index("cluster").loc[k]
    ex = audit.examples.get(str(k), {})
    lab = ex.get("label", {})
    facts = [("status", info["label_status"]), ("detection accuracy", num(info["detection_acc"])),
             ("held-out", lab.get("n_heldout", "—")), ("labeller", lab.get("labeller", "—")),
             ("features", int(info["n_features"])), ("dataset Δ̄", num(info["mean_delta"], 3))]
    meta = " · ".join(f"{esc(a)}: {esc(b)}" for a, b in facts) + " " + badge(str(info["direction"]))
    acts = ex.get("activating", [])[:SNIPPETS]
    scale = max([max(a["acts"], default=0.0) for a in acts] + [1e-12])
    snippets = "".join(snippet(a["tokens"], a["acts"], scale) for a in acts) or tag("p", "no snippets", class_="muted")
    pairs = ex.get("pairs", [])
    pos = sorted((p for p in pairs if p.get("delta", 0) > 0), key=lambda p: -p["delta"])[:PAIRS_EACH_WAY]
    neg = sorted((p for p in pairs if p.get("delta", 0) < 0), key=lambda p: p["delta"])[:PAIRS_EACH_WAY]
    evidence = lab.get("evidence")
    raw = audit.label(k)
    lens = audit.lenses.get(k, [])
    said = [esc(tracks_text(audit.tracks.get(k, []))),
            f"label: {esc(raw)}" if raw and raw != label_of(audit, k) else "",
            "logit lens (top output tokens of the decoder direction): " + esc(lens_text(lens)) if lens else ""]
    body = (tag("p", meta, class_="muted") + "".join(tag("p", x, class_="muted") for x in said if x)
            + tag("h4", "Top activating contexts") + snippets
            + tag("h4", "Chosen carries more (Δc > 0)") + ("".join(map(pair_view, pos)) or tag("p", "none"))
            + tag("h4", "Rejected carries more (Δc < 0)") + ("".join(map(pair_view, neg)) or tag("p", "none"))
            + (tag("details", tag("summary", "label evidence") + tag("pre", esc(json.dumps(evidence, indent=1,
                                                                                         sort_keys=True))))
               if evidence else ""))
    title = tag("h3", f"C{k} · {esc(label_of(audit, k))}")
    return tag("article", title + body, class_=f"card border-{info['direction']}", id=f"cluster-{k}")


def cards(audit: AuditFolder) -> str:
    shown = ranked_clusters(audit, MAX_CARDS)
    note = tag("p", f"{len(shown)} of {len(audit.clusters)} concepts, in ranked order; all are in clusters.parquet.",
               class_="muted")
    return note + "".join(card(audit, k) for k in shown)


def topics_section(audit: AuditFolder) -> str:
    t = audit.meta.get("topics", {})
    names, sizes, examples = t.get("names", []), t.get("sizes", []), t.get("examples", [])
    body = [[str(i), esc(name), esc(sizes[i] if i < len(sizes) else "—"),
             "".join(tag("li", esc(short(e, 160))) for e in (examples[i] if i < len(examples) else []))]
            for i, name in enumerate(names)]
    summary = tag("p", f"method: {esc(t.get('method', '—'))} · silhouette: {num(t.get('silhouette'))}",
                  class_="muted")
    return summary + table(["id", "topic", "pairs", "example prompts"], body, class_="topics")


def build_html(audit: AuditFolder) -> str:
    plots = [volcano(audit), heatmap(audit), concept_graph(audit)]
    screen = audit.screen
    sections = [header(audit), *([screen_section(screen)] if screen is not None else []),
                *([section(TRUTH, truth_section(audit.score))] if audit.score else []),
                section(SECTIONS[1], push_table(audit)),
                section(SECTIONS[2], tag("p", "Each point is a tested (topic, concept) row.", class_="muted")
                        + plots[0]),
                section(SECTIONS[3], tag("p", "Mean Δc per topic and concept; red: chosen carries more.",
                                         class_="muted") + plots[1]),
                section(SECTIONS[4], tag("p", "Concepts whose Δc moves together across pairs are linked; size: "
                                         "member features; colour: dataset-wide direction.", class_="muted")
                        + plots[2]),
                section(SECTIONS[5], cards(audit)), section(SECTIONS[6], topics_section(audit))]
    title = f"anatomist audit · {audit.meta.get('model', '')}"
    return page(title, "".join(sections), plots=plots)
