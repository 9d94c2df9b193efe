"""The screen's outputs: screen.parquet, hygiene.json, a terminal table (rich) and an HTML section.

    save(result, "out/")           # out/screen.parquet, out/hygiene.json, out/screen.html
    html = screen_section(result)  # the section another page (the audit report) puts first

Files are written atomically (`anatomist.fileio`); the page escapes every dataset string (ids,
topic names, detector patterns) through `anatomist.html`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

from anatomist.errors import AnatomistError
from anatomist.fileio import atomic_write_parquet, atomic_write_text
from anatomist.html import badge, esc, num, page, section, short, table, tag
from anatomist.screen.detectors import Detector
from anatomist.screen.hygiene import CHECKS, Finding, Hygiene
from anatomist.screen.run import ALL, ScreenResult

TABLE_FILE, HYGIENE_FILE, PAGE_FILE = "screen.parquet", "hygiene.json", "screen.html"
MAX_IDS = 20          # pair ids shown per hygiene finding (the JSON file lists them all)
MAX_TOPIC_ROWS = 40   # per-topic rows shown (those with a direction first)


def hygiene_dict(h: Hygiene) -> dict:
    return {"source": h.source, "n_rows": h.n_rows, "n_valid": h.n_valid, "bad_rows": h.bad_rows,
            "truncation_checked": h.truncation_checked, "length_bias": h.length_bias,
            "findings": {k: {"what": f.what, "count": len(f.ids), "ids": f.ids, "rows": f.rows}
                         for k, f in h.findings.items()}}


def save(result: ScreenResult, out_dir, *, title: str = "anatomist screen") -> dict[str, Path]:
    """Write the table, the hygiene report (if any) and a standalone page into `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"table": out / TABLE_FILE, "page": out / PAGE_FILE}
    atomic_write_parquet(result.table, paths["table"])
    if result.hygiene is not None:
        paths["hygiene"] = out / HYGIENE_FILE
        atomic_write_text(paths["hygiene"], json.dumps(hygiene_dict(result.hygiene), indent=1, ensure_ascii=False))
    atomic_write_text(paths["page"], page(title, tag("h1", esc(title)) + screen_section(result)))
    return paths


def result_dict(result: ScreenResult) -> dict:
    """What `result_from` needs besides the two tables: detectors (name, fires_on, threshold), alpha,
    seconds, hygiene (`hygiene_dict`, or None)."""
    return {"alpha": result.alpha, "seconds": result.seconds,
            "detectors": [{"name": d.name, "fires_on": d.fires_on, "threshold": d.threshold}
                          for d in result.detectors],
            "hygiene": None if result.hygiene is None else hygiene_dict(result.hygiene)}


def _stored(response: str, prompt: str = "") -> float:
    raise AnatomistError("this detector was read back from a file: its code is not stored; screen the data again")


def result_from(table: pd.DataFrame, fires: pd.DataFrame, d: dict) -> ScreenResult:
    """A ScreenResult read back from `table`, `fires` and `result_dict`'s dict (for pages and the
    terminal table; its detectors cannot score again)."""
    dets = [Detector(x["name"], x["fires_on"], _stored, float(x["threshold"])) for x in d["detectors"]]
    h = d.get("hygiene")
    hygiene = None if h is None else Hygiene(
        h["source"], h["n_rows"], h["n_valid"],
        {k: Finding(k, list(f["ids"]), list(f["rows"])) for k, f in h["findings"].items() if k in CHECKS},
        dict(h["bad_rows"]), [], dict(h["length_bias"]), bool(h["truncation_checked"]))
    return ScreenResult(table, fires, dets, hygiene, float(d["alpha"]), float(d.get("seconds", 0.0)))


# -- terminal --------------------------------------------------------------------------------------

_STYLE = {"amplify": "bold red", "suppress": "bold blue", "none": "dim"}


def render(result: ScreenResult, console: Console) -> None:
    """The detector table (whole file, then flagged topics) and the hygiene findings."""
    t = Table(title=f"screen: {result.n_pairs} pairs (positive = chosen fires more)", title_justify="left")
    for col in ("detector", "topic", "chosen", "rejected", "diff [95% CI]", "q", "direction"):
        t.add_column(col, justify="left" if col in ("detector", "topic", "direction") else "right", no_wrap=True)
    rows = result.table
    shown = rows[(rows.topic == ALL) | (rows.direction != "none")].head(MAX_TOPIC_ROWS + len(result.detectors))
    for r in shown.itertuples():
        t.add_row(r.detector, short(r.topic, 24), f"{r.rate_chosen:.1%}", f"{r.rate_rejected:.1%}",
                  f"{r.diff:+.3f} [{r.ci_low:+.3f}, {r.ci_high:+.3f}]", f"{r.q:.2g}",
                  f"[{_STYLE[r.direction]}]{r.direction}[/]")
    console.print(t)
    if result.hygiene is not None:
        render_hygiene(result.hygiene, console)


def render_hygiene(h: Hygiene, console: Console) -> None:
    console.print(f"\n[bold]pair hygiene[/bold]: {h.n_rows} rows, {h.n_valid} valid pairs")
    for k, f in h.findings.items():
        if k == "truncated_same" and not h.truncation_checked:
            console.print(f"  {'—':>6}  {k}: not checked (give --max-length)", markup=False)
            continue
        ids = ", ".join(f.ids[:5]) + (" …" if len(f.ids) > 5 else "")
        console.print(f"  {len(f.ids):>6}  {k}: {f.what}" + (f"  [{ids}]" if ids else ""), markup=False)
    for reason, n in h.bad_rows.items():
        console.print(f"  {n:>6}  skipped: {reason}", markup=False)
    b = h.length_bias
    console.print(f"  length bias: chosen longer in {b['chosen_longer']:.1%} of pairs; chosen/rejected length "
                  f"ratio {b['ratio']:.2f} (log ratio {b['mean_log_ratio']:+.3f}, 95% CI "
                  f"[{b['ci_low']:+.3f}, {b['ci_high']:+.3f}])", markup=False)


# -- HTML ------------------------------------------------------------------------------------------

def screen_section(result: ScreenResult) -> str:
    """The screen as one HTML <section> (trusted HTML; dataset text escaped): the detector table,
    the per-topic rows with a direction, what each detector fires on, and pair hygiene."""
    rows = result.table
    head = ["detector", "topic", "n", "chosen fires", "rejected fires", "diff", "95% CI", "q", "direction"]

    def cells(r) -> list[str]:
        return [esc(r.detector), esc(short(r.topic, 40)), str(r.n), f"{r.n_chosen} ({r.rate_chosen:.1%})",
                f"{r.n_rejected} ({r.rate_rejected:.1%})", num(r.diff, 3), f"[{num(r.ci_low, 3)}, {num(r.ci_high, 3)}]",
                num(r.q, 3), badge(r.direction)]

    whole = [cells(r) for r in rows[rows.topic == ALL].itertuples()]
    topical = rows[(rows.topic != ALL) & (rows.direction != "none")].sort_values("q")
    body = tag("p", f"{result.n_pairs} pairs. diff = chosen firing rate − rejected firing rate "
                    "(positive: DPO on this data would amplify it); q: Benjamini–Hochberg over the whole "
                    f"table; a direction needs q &lt; {result.alpha} and agreeing split halves.", class_="muted")
    body += table(head, whole)
    if (rows.topic != ALL).any():
        body += tag("h3", f"Topics with a direction ({len(topical)})")
        body += table(head, [cells(r) for r in topical.head(MAX_TOPIC_ROWS).itertuples()]) if len(topical) else \
            tag("p", "none", class_="muted")
    body += tag("h3", "Detectors")
    body += table(["detector", "fires on", "threshold"],
                  [[esc(d.name), esc(d.fires_on), num(d.threshold)] for d in result.detectors])
    if result.hygiene is not None:
        body += hygiene_html(result.hygiene)
    return section("Screen", body, title="Screen: known risks and pair hygiene")


def hygiene_html(h: Hygiene) -> str:
    rows = []
    for k, f in h.findings.items():
        checked = k != "truncated_same" or h.truncation_checked
        ids = ", ".join(esc(i) for i in f.ids[:MAX_IDS]) + (f" … (+{len(f.ids) - MAX_IDS})" if len(f.ids) > MAX_IDS else "")
        rows.append([esc(k), esc(CHECKS[k]), str(len(f.ids)) if checked else "not checked", ids])
    rows += [[esc("skipped"), esc(reason), str(n), ""] for reason, n in h.bad_rows.items()]
    b = h.length_bias
    bias = (f"Length bias: chosen is longer in {b['chosen_longer']:.1%} of pairs; mean chosen/rejected length ratio "
            f"{num(b['ratio'])} (log ratio {num(b['mean_log_ratio'], 3)}, 95% CI [{num(b['ci_low'], 3)}, "
            f"{num(b['ci_high'], 3)}]).")
    return (tag("h3", "Pair hygiene") + tag("p", esc(f"{h.n_rows} rows, {h.n_valid} valid pairs. ") + esc(bias))
            + table(["check", "what", "pairs", "ids"], rows))
