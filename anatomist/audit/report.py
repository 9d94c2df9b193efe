"""The audit's HTML report: one self-contained file built only from the audit folder (see run.py).

`render_report(DIR)` reads audit.json, rows.parquet, clusters.parquet, pairs.parquet and
examples.json (nothing else) and writes DIR/report.html atomically; `screenshot` photographs its
first screen with headless Chromium (for `make demo`). The page fetches nothing: plotly.js is
inlined once, fonts are the system's, and a Content-Security-Policy allows only the page's own
scripts (by hash) and no network. Everything that comes from the dataset (prompts, responses,
tokens, labels, ids, topic names) is HTML-escaped, in the page and in plotly's hover and axis text
(plotly renders a subset of HTML there); JSON inside <script> has every "<" escaped.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import typer

from anatomist.errors import AnatomistError
from anatomist.fileio import atomic_write_text

SECTIONS = ("Audit", "What DPO will push", "Effect sizes", "Topics × concepts", "Concept graph",
            "Concepts", "Topics")
TRUTH = "Planted confounds found"          # only when the audit was scored against truth (score.json)
SCORE_KEYS = ("recall", "precision", "sign_accuracy", "n_found", "n_planted_cells", "n_flagged", "rho_min", "truth",
              "cells")
COLOURS = {"amplify": "#c0392b", "suppress": "#2a6fb0", "none": "#9a9a9a"}
DIVERGING = [[0.0, "#2a6fb0"], [0.5, "#f4f4f4"], [1.0, "#c0392b"]]
TOP_ROWS, MAX_CARDS, MAX_HEATMAP_CLUSTERS, MAX_GRAPH_NODES = 30, 24, 40, 60
SNIPPETS, PAIRS_EACH_WAY, WINDOW, PREVIEW_CHARS = 5, 2, 12, 400
FILES = ("audit.json", "rows.parquet", "clusters.parquet", "pairs.parquet", "examples.json")
CSP = ("default-src 'none'; script-src {hashes}; style-src 'unsafe-inline'; img-src data:; "
       "font-src 'none'; connect-src 'none'; base-uri 'none'; form-action 'none'")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars")
CHROMIUM_HINT = "chromium not found on PATH; install it (Debian/Ubuntu: apt-get install -y chromium)"


@dataclass
class Audit:
    dir: Path
    meta: dict
    rows: pd.DataFrame
    clusters: pd.DataFrame
    pairs: pd.DataFrame
    examples: dict
    labels: dict[int, str] = field(default_factory=dict)
    length: pd.DataFrame | None = None     # response-length rows (audit/length.py); None in older audits
    score: dict | None = None              # score.json: the audit scored against planted truth (organism)

    def __post_init__(self):
        for k, text in zip(self.clusters["cluster"], self.clusters["label"]):
            unlabelled = text is None or text != text or not str(text).strip()
            self.labels[int(k)] = "(unlabelled)" if unlabelled else str(text)

    def label(self, k: int) -> str:
        return self.labels[int(k)]


def load_audit(audit_dir: Path) -> Audit:
    audit_dir = Path(audit_dir)
    if not audit_dir.is_dir():
        raise AnatomistError(f"{audit_dir}: no such audit folder")
    missing = [f for f in FILES if not (audit_dir / f).is_file()]
    if missing:
        raise AnatomistError(f"{audit_dir}: missing {', '.join(missing)}; "
                             f"run `anatomist audit --out {audit_dir}` first")
    read_json = lambda name: _read(audit_dir / name, lambda p: json.loads(p.read_text()), dict)  # noqa: E731
    read_pq = lambda name: _read(audit_dir / name, pd.read_parquet, pd.DataFrame)  # noqa: E731
    rows, clusters, pairs = read_pq("rows.parquet"), read_pq("clusters.parquet"), read_pq("pairs.parquet")
    _require(audit_dir / "rows.parquet", rows, ("topic", "topic_id", "cluster", "n", "mean", "d", "ci_low",
                                                "ci_high", "split_half", "q", "direction", "tested", "excess"))
    _require(audit_dir / "clusters.parquet", clusters, ("cluster", "label", "label_status", "detection_acc",
                                                        "n_features", "mean_delta", "direction"))
    _require(audit_dir / "pairs.parquet", pairs, ("pair_id", "cluster", "delta"))
    from anatomist.audit.length import ROWS_FILE

    length = read_pq(ROWS_FILE) if (audit_dir / ROWS_FILE).is_file() else None
    if length is not None:
        _require(audit_dir / ROWS_FILE, length, ("topic", "n", "mean", "ci_low", "ci_high", "split_half", "q",
                                                 "direction", "tested"))
    score = read_json("score.json") if (audit_dir / "score.json").is_file() else None
    missing = [k for k in SCORE_KEYS if k not in (score or dict.fromkeys(SCORE_KEYS))]
    if missing:
        raise AnatomistError(f"{audit_dir / 'score.json'}: missing {', '.join(missing)}; rewrite it with "
                             f"`anatomist organism score {audit_dir}` or delete it")
    return Audit(audit_dir, read_json("audit.json"), rows, clusters, pairs, read_json("examples.json"),
                 length=length, score=score)


def _read(path: Path, reader, kind: type):
    """`reader(path)`, or a one-line error naming the file (damaged, or not what an audit writes)."""
    try:
        value = reader(path)
    except Exception as e:  # json / pyarrow raise many types; all mean the same to the user
        raise AnatomistError(f"{path}: unreadable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e
    if not isinstance(value, kind):
        raise AnatomistError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def _require(path: Path, frame: pd.DataFrame, columns: tuple[str, ...]) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise AnatomistError(f"{path}: missing column(s) {', '.join(missing)}")


def render_report(audit_dir: Path) -> Path:
    """Write DIR/report.html from the files of an audit folder; returns its path."""
    audit = load_audit(audit_dir)
    out = audit.dir / "report.html"
    atomic_write_text(out, build_html(audit))
    return out


def report(audit_dir: Path = typer.Argument(..., metavar="DIR",
                                            help="An audit folder written by `anatomist audit --out`.")) -> None:
    """Re-render DIR/report.html from the tables in an audit folder (no model needed)."""
    typer.echo(str(render_report(audit_dir)))


# -- html helpers -------------------------------------------------------------------------------

def esc(x) -> str:
    return html.escape(str(x), quote=True)


def tag(name: str, body: str = "", **attrs) -> str:
    """An element; `body` is trusted HTML, attribute values are escaped (class_ → class)."""
    attr = "".join(f' {k.rstrip("_").replace("_", "-")}="{esc(v)}"' for k, v in attrs.items() if v is not None)
    return f"<{name}{attr}>{body}</{name}>"


def num(x, digits: int = 2) -> str:
    if x is None or pd.isna(x):
        return "—"
    x = float(x)
    return f"{x:.1e}" if x != 0 and abs(x) < 10 ** -digits else f"{x:.{digits}f}"


def badge(direction: str) -> str:
    return tag("span", esc(direction), class_=f"dir dir-{direction}")


def void(name: str, **attrs) -> str:
    return tag(name, **attrs)[: -len(f"</{name}>")]


def table(header: list[str], body: list[list[str]], **attrs) -> str:
    head = tag("tr", "".join(tag("th", esc(h)) for h in header))
    rows = "".join(tag("tr", "".join(tag("td", c) for c in r)) for r in body)
    return tag("table", tag("thead", head) + tag("tbody", rows), **attrs)


def long_text(text: str, limit: int = PREVIEW_CHARS) -> str:
    if len(text) <= limit:
        return tag("div", esc(text), class_="text")
    preview = tag("summary", esc(text[:limit]) + "…")
    return tag("details", preview + tag("div", esc(text), class_="text"), class_="long")


def short(text: str, limit: int = 40) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def script_json(obj) -> str:
    """JSON safe inside <script>: no "<" survives, so neither </script> nor <!-- can appear."""
    return json.dumps(obj, sort_keys=True, allow_nan=False).replace("<", "\\u003c")


# -- plots (plotly figures as plain dicts, drawn by the inlined plotly.js) -----------------------

def plot(div_id: str, data: list[dict], layout: dict, height: int = 460) -> str:
    layout = {"height": height, "margin": {"l": 60, "r": 20, "t": 30, "b": 60}, "hovermode": "closest",
              "paper_bgcolor": "white", "plot_bgcolor": "white", **layout}
    config = {"displaylogo": False, "responsive": True}
    call = f"Plotly.newPlot({json.dumps(div_id)}, {script_json(data)}, {script_json(layout)}, {script_json(config)});"
    return tag("div", "", id=div_id, class_="plot") + tag("script", call)


def finite(values) -> list:
    return [None if v is None or not np.isfinite(v) else float(v) for v in values]


def volcano(audit: Audit) -> str:
    rows = audit.rows[audit.rows["tested"] & audit.rows["q"].notna()]
    data = []
    for direction, group in rows.groupby("direction", sort=True):
        hover = [f"{esc(short(audit.label(c)))} · {esc(t)}<br>d={num(d)}  q={num(q, 3)}  n={n}"
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


def ranked_clusters(audit: Audit, limit: int) -> list[int]:
    """Clusters in order of their first appearance in the ranked rows (topic rows first)."""
    order = list(dict.fromkeys(int(c) for c in audit.rows.loc[audit.rows["tested"], "cluster"]))
    seen = set(order)
    rest = [int(c) for c in audit.clusters["cluster"] if int(c) not in seen]
    return (order + rest)[:limit]


def heatmap(audit: Audit) -> str:
    topic_rows = audit.rows[audit.rows["topic"] != "all"]
    names = dict(zip(topic_rows["topic_id"], topic_rows["topic"]))
    clusters = ranked_clusters(audit, MAX_HEATMAP_CLUSTERS)
    means, n = (topic_rows.pivot_table(index="topic_id", columns="cluster", values=col, sort=True)
                .reindex(columns=clusters) for col in ("mean", "n"))
    topics, cells, n = list(means.index), means.to_numpy(), n.reindex(index=means.index).to_numpy()
    hover = [[f"{esc(names[t])} × C{c}: {esc(short(audit.label(c)))}<br>Δ̄={num(v, 3)}  n={num(m, 0)}"
              for c, v, m in zip(clusters, cells[i], n[i])] for i, t in enumerate(topics)]
    bound = float(np.nanmax(np.abs(cells))) if np.isfinite(cells).any() else 1.0
    data = [{"type": "heatmap", "z": [finite(r) for r in cells],
             "x": [f"C{c} {esc(short(audit.label(c), 16))}" for c in clusters],
             "y": [f"T{t} {esc(short(names[t], 30))}" for t in topics], "hovertext": hover, "hoverinfo": "text",
             "colorscale": DIVERGING, "zmid": 0, "zmin": -bound, "zmax": bound,
             "colorbar": {"title": {"text": "Δ̄"}}}]
    layout = {"xaxis": {"type": "category", "tickangle": -45}, "yaxis": {"type": "category", "automargin": True},
              "margin": {"l": 180, "r": 20, "t": 30, "b": 80}}
    return plot("heatmap", data, layout, height=max(300, 60 + 28 * len(topics)))


def similarity(audit: Audit, clusters: list[int]) -> np.ndarray:
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


def concept_graph(audit: Audit, threshold: float = 0.3, per_node: int = 3) -> str:
    clusters = ranked_clusters(audit, MAX_GRAPH_NODES)
    sim = similarity(audit, clusters)
    xy = mds_layout(sim) if len(clusters) > 2 else np.array([[i, 0.0] for i in range(len(clusters))])
    edges = sorted({(min(i, j), max(i, j)) for i in range(len(clusters))
                    for j in np.argsort(-sim[i], kind="stable")[: per_node + 1] if j != i and sim[i, j] >= threshold})
    ex = [v for i, j in edges for v in (xy[i, 0], xy[j, 0], None)]
    ey = [v for i, j in edges for v in (xy[i, 1], xy[j, 1], None)]
    info = audit.clusters.set_index("cluster").loc[clusters]
    size = 8 + 22 * np.sqrt(info["n_features"].to_numpy() / max(1, info["n_features"].max()))
    hover = [f"C{c}: {esc(short(audit.label(c), 60))}<br>{n} features · Δ̄={num(m, 3)} · {esc(d)}"
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

def header(audit: Audit) -> str:
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


def section(name: str, body: str, level: int = 2, title: str | None = None) -> str:
    anchor = name.lower().replace(" ", "-").replace("×", "x")
    return tag("section", tag(f"h{level}", esc(title or name)) + body, id=anchor)


def row_cells(audit: Audit, r, linked: set[int]) -> list[str]:
    c = int(r.cluster)
    name = esc(short(audit.label(c), 50))
    label = tag("a", name, href=f"#cluster-{c}") if c in linked else name
    return [f"C{c} " + label, esc(r.topic), str(int(r.n)), num(r.mean, 3), num(r.excess, 3), num(r.d),
            f"[{num(r.ci_low, 3)}, {num(r.ci_high, 3)}]", "✓" if r.split_half else "✗", num(r.q, 3),
            badge(str(r.direction))]


def push_table(audit: Audit) -> str:
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
    note = ("Each planted cell puts a trait on one side of the pairs of one topic. A cell is found when a "
            "flagged row of that topic belongs to a concept whose score tracks the trait's detector "
            f"(|Spearman ρ| ≥ {score['rho_min']}) and moves the way the planted side implies: 'expected' is "
            "that direction for the matched concept (a concept anti-correlated with the trait should be "
            "suppressed where the trait is chosen). Truth: " + score["truth"])
    header_ = ["trait", "topic", "planted on (strength)", "pairs", "", "matched row", "ρ", "q", "direction",
               "expected"]
    return tag("p", tag("b", esc(headline))) + tag("p", esc(note), class_="muted") + table(header_, body,
                                                                                         class_="truth")


def length_table(audit: Audit) -> str:
    """Response length, tested like a concept (audit/length.py): DPO's reward sums over tokens."""
    if audit.length is None:
        return ""
    rows = audit.length[audit.length["tested"]]
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


def card(audit: Audit, k: int) -> str:
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
    body = (tag("p", meta, class_="muted") + tag("h4", "Top activating contexts") + snippets
            + tag("h4", "Chosen carries more (Δc > 0)") + ("".join(map(pair_view, pos)) or tag("p", "none"))
            + tag("h4", "Rejected carries more (Δc < 0)") + ("".join(map(pair_view, neg)) or tag("p", "none"))
            + (tag("details", tag("summary", "label evidence") + tag("pre", esc(json.dumps(evidence, indent=1,
                                                                                         sort_keys=True))))
               if evidence else ""))
    title = tag("h3", f"C{k} · {esc(audit.label(k))}")
    return tag("article", title + body, class_=f"card border-{info['direction']}", id=f"cluster-{k}")


def cards(audit: Audit) -> str:
    shown = ranked_clusters(audit, MAX_CARDS)
    note = tag("p", f"{len(shown)} of {len(audit.clusters)} concepts, in ranked order; all are in clusters.parquet.",
               class_="muted")
    return note + "".join(card(audit, k) for k in shown)


def topics_section(audit: Audit) -> str:
    t = audit.meta.get("topics", {})
    names, sizes, examples = t.get("names", []), t.get("sizes", []), t.get("examples", [])
    body = [[str(i), esc(name), esc(sizes[i] if i < len(sizes) else "—"),
             "".join(tag("li", esc(short(e, 160))) for e in (examples[i] if i < len(examples) else []))]
            for i, name in enumerate(names)]
    summary = tag("p", f"method: {esc(t.get('method', '—'))} · silhouette: {num(t.get('silhouette'))}",
                  class_="muted")
    return summary + table(["id", "topic", "pairs", "example prompts"], body, class_="topics")


def build_html(audit: Audit) -> str:
    from plotly.offline import get_plotlyjs

    plots = [volcano(audit), heatmap(audit), concept_graph(audit)]
    sections = [header(audit), *([section(TRUTH, truth_section(audit.score))] if audit.score else []),
                section(SECTIONS[1], push_table(audit)),
                section(SECTIONS[2], tag("p", "Each point is a tested (topic, concept) row.", class_="muted")
                        + plots[0]),
                section(SECTIONS[3], tag("p", "Mean Δc per topic and concept; red: chosen carries more.",
                                         class_="muted") + plots[1]),
                section(SECTIONS[4], tag("p", "Concepts whose Δc moves together across pairs are linked; size: "
                                         "member features; colour: dataset-wide direction.", class_="muted")
                        + plots[2]),
                section(SECTIONS[5], cards(audit)), section(SECTIONS[6], topics_section(audit))]
    bundle = tag("script", get_plotlyjs())
    head = tag("title", esc(f"anatomist audit · {audit.meta.get('model', '')}")) + tag("style", CSS) + bundle
    meta = void("meta", charset="utf-8") + void("meta", http_equiv="Content-Security-Policy",
                                                content=content_policy(bundle + "".join(plots)))
    body = tag("body", tag("main", "".join(sections)))
    return "<!DOCTYPE html>\n" + tag("html", tag("head", meta + head) + body, lang="en")


def content_policy(own_scripts: str) -> str:
    """CSP allowing exactly our own inline scripts (by SHA-256) and no network at all: a second
    line of defence should dataset text ever slip through unescaped. Only the plotly bundle and
    the plot calls are hashed (their JSON holds no "<"), never text from the rest of the page."""
    sources = re.findall(r"<script>(.*?)</script>", own_scripts, flags=re.S)
    hashes = " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'" for s in sources)
    return CSP.format(hashes=hashes)


CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #222; margin: 0; background: #fafafa; }
main { max-width: 1200px; margin: 0 auto; padding: 16px 24px 64px; }
h1 { margin: 8px 0; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 4px; margin-top: 36px; }
.facts { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; }
.facts dt { color: #666; } .facts dd { margin: 0; font-family: ui-monospace, monospace; word-break: break-all; }
table { border-collapse: collapse; width: 100%; font-size: 13px; background: white; }
th, td { border-bottom: 1px solid #eee; padding: 3px 6px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; position: sticky; top: 0; }
.dir { padding: 1px 6px; border-radius: 8px; color: white; font-size: 12px; }
.dir-amplify { background: #c0392b; } .dir-suppress { background: #2a6fb0; } .dir-none { background: #9a9a9a; }
.muted { color: #666; } .plot { background: white; }
.card { background: white; border: 1px solid #ddd; border-left: 6px solid #9a9a9a; padding: 8px 14px; margin: 14px 0; }
.border-amplify { border-left-color: #c0392b; } .border-suppress { border-left-color: #2a6fb0; }
.snippet, .text { font-family: ui-monospace, monospace; font-size: 12px; white-space: pre-wrap;
                  word-break: break-word; }
.snippet { border: 1px solid #eee; padding: 4px 6px; margin: 4px 0; }
.sides { display: grid; grid-template-columns: 1fr 1fr; gap: 12px; }
.pair { border-top: 1px dashed #ddd; padding-top: 6px; margin-top: 6px; } h5 { margin: 4px 0; color: #555; }
details.long summary { cursor: pointer; white-space: pre-wrap; font-family: ui-monospace, monospace; font-size: 12px; }
"""


# -- headless Chromium ---------------------------------------------------------------------------

def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        raise AnatomistError(CHROMIUM_HINT)
    return exe


def run_chromium(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run headless Chromium with a fresh profile and no background networking."""
    with tempfile.TemporaryDirectory(prefix="anatomist-chromium-") as profile:
        cmd = [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def screenshot(html: Path, png: Path, width: int = 1280, height: int = 900) -> Path:
    """PNG of the first screen of an HTML file, taken by headless Chromium."""
    png = Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    done = run_chromium(f"--screenshot={png}", f"--window-size={width},{height}", "--virtual-time-budget=5000",
                        Path(html).resolve().as_uri())
    if not png.is_file() or png.stat().st_size == 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise AnatomistError(f"chromium wrote no screenshot to {png} (exit {done.returncode}): {tail}")
    return png
