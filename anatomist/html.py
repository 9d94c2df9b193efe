"""The HTML toolkit every page of anatomist is built with (audit, eval, verify, GRPO, acceptance).

A page is one self-contained file: plotly.js is inlined once, fonts are the system's, and a
Content-Security-Policy allows only the page's own scripts (by SHA-256) and no network at all.
Pages escape everything that comes from a dataset (prompts, responses, tokens, labels, ids,
topic names) with `esc`, also in plotly's hover and axis text (plotly renders a subset of HTML
there); JSON inside <script> has every "<" escaped (`script_json`). `screenshot` photographs a
page's first screen with headless Chromium.

    body = tag("h1", "title") + table(["a", "b"], [[esc(x), num(y)]]) + plot("p", data, layout)
    atomic_write_text(path, page("title", body, plots=[...]))

Nothing here knows a stage: it imports only the standard library, third-party packages and
anatomist.errors.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from anatomist.errors import AnatomistError

PREVIEW_CHARS = 400
CSP = ("default-src 'none'; script-src {hashes}; style-src 'unsafe-inline'; img-src data:; "
       "font-src 'none'; connect-src 'none'; base-uri 'none'; form-action 'none'")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars")
CHROMIUM_HINT = "chromium not found on PATH; install it (Debian/Ubuntu: apt-get install -y chromium)"


# -- elements -------------------------------------------------------------------------------------

def esc(x) -> str:
    return html.escape(str(x), quote=True)


def tag(name: str, body: str = "", **attrs) -> str:
    """An element; `body` is trusted HTML, attribute values are escaped (class_ → class)."""
    attr = "".join(f' {k.rstrip("_").replace("_", "-")}="{esc(v)}"' for k, v in attrs.items() if v is not None)
    return f"<{name}{attr}>{body}</{name}>"


def void(name: str, **attrs) -> str:
    return tag(name, **attrs)[: -len(f"</{name}>")]


def num(x, digits: int = 2) -> str:
    if x is None or pd.isna(x):
        return "—"
    x = float(x)
    return f"{x:.1e}" if x != 0 and abs(x) < 10 ** -digits else f"{x:.{digits}f}"


def badge(direction: str) -> str:
    """A coloured amplify / suppress / none label (the .dir-* rules of CSS)."""
    return tag("span", esc(direction), class_=f"dir dir-{direction}")


def table(header: list[str], body: list[list[str]], **attrs) -> str:
    """Header cells are escaped here; body cells are trusted HTML (escape dataset text first)."""
    head = tag("tr", "".join(tag("th", esc(h)) for h in header))
    rows = "".join(tag("tr", "".join(tag("td", c) for c in r)) for r in body)
    return tag("table", tag("thead", head) + tag("tbody", rows), **attrs)


def long_text(text: str, limit: int = PREVIEW_CHARS) -> str:
    """Escaped text; past `limit` characters, a preview that opens to the whole."""
    if len(text) <= limit:
        return tag("div", esc(text), class_="text")
    preview = tag("summary", esc(text[:limit]) + "…")
    return tag("details", preview + tag("div", esc(text), class_="text"), class_="long")


def short(text: str, limit: int = 40) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def section(name: str, body: str, level: int = 2, title: str | None = None) -> str:
    anchor = name.lower().replace(" ", "-").replace("×", "x")
    return tag("section", tag(f"h{level}", esc(title or name)) + body, id=anchor)


def script_json(obj) -> str:
    """JSON safe inside <script>: no "<" survives, so neither </script> nor <!-- can appear."""
    return json.dumps(obj, sort_keys=True, allow_nan=False).replace("<", "\\u003c")


# -- plots (plotly figures as plain dicts, drawn by the inlined plotly.js) -------------------------

def plot(div_id: str, data: list[dict], layout: dict, height: int = 460) -> str:
    """A <div> and the <script> that draws it; pass the snippet to `page(plots=...)` for the CSP."""
    layout = {"height": height, "margin": {"l": 60, "r": 20, "t": 30, "b": 60}, "hovermode": "closest",
              "paper_bgcolor": "white", "plot_bgcolor": "white", **layout}
    config = {"displaylogo": False, "responsive": True}
    call = f"Plotly.newPlot({json.dumps(div_id)}, {script_json(data)}, {script_json(layout)}, {script_json(config)});"
    return tag("div", "", id=div_id, class_="plot") + tag("script", call)


def finite(values) -> list:
    """Plot values as JSON: NaN / inf / None become null (a gap), numpy scalars plain floats."""
    return [None if v is None or not np.isfinite(v) else float(v) for v in values]


# -- the page -------------------------------------------------------------------------------------

def content_policy(own_scripts: str) -> str:
    """CSP allowing exactly our own inline scripts (by SHA-256) and no network at all: a second
    line of defence should dataset text ever slip through unescaped. Only the plotly bundle, the
    plot calls and a page's own code are hashed (their JSON holds no "<"), never text from the
    rest of the page."""
    sources = re.findall(r"<script>(.*?)</script>", own_scripts, flags=re.S)
    hashes = " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'" for s in sources)
    return CSP.format(hashes=hashes)


def page(title: str, main: str, plots: Sequence[str] = (), scripts: Sequence[str] = ()) -> str:
    """A whole document: `main` (trusted HTML holding the `plots` snippets) in <main>, then the
    trusted JavaScript `scripts`; plotly.js inlined in <head>; the CSP hashes exactly the bundle,
    the plots and the scripts. `title` is escaped."""
    from plotly.offline import get_plotlyjs

    bundle = tag("script", get_plotlyjs())
    tail = "".join(tag("script", s) for s in scripts)
    meta = void("meta", charset="utf-8") + void("meta", http_equiv="Content-Security-Policy",
                                                content=content_policy(bundle + "".join(plots) + tail))
    head = meta + tag("title", esc(title)) + tag("style", CSS) + bundle
    return "<!DOCTYPE html>\n" + tag("html", tag("head", head) + tag("body", tag("main", main) + tail), lang="en")


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


# -- headless Chromium ----------------------------------------------------------------------------

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


def screenshot(html_file: Path, png: Path, width: int = 1280, height: int = 900) -> Path:
    """PNG of the first screen of an HTML file, taken by headless Chromium."""
    png = Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    done = run_chromium(f"--screenshot={png}", f"--window-size={width},{height}", "--virtual-time-budget=5000",
                        Path(html_file).resolve().as_uri())
    if not png.is_file() or png.stat().st_size == 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise AnatomistError(f"chromium wrote no screenshot to {png} (exit {done.returncode}): {tail}")
    return png
