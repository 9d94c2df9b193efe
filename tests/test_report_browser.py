"""The report in real headless Chromium: plots and tables render, no console errors, payloads inert."""

from __future__ import annotations

import re
import shutil
import struct
from pathlib import Path

import pandas as pd
import pytest

from anatomist.audit.report import render_report
from anatomist.html import run_chromium, screenshot
from test_audit_report import make_fake_audit

pytestmark = pytest.mark.skipif(
    shutil.which("chromium") is None and shutil.which("chromium-browser") is None,
    reason="chromium not on PATH (Debian/Ubuntu: apt-get install -y chromium)")

PLOTS = ("volcano", "heatmap", "graph")
PROBE = ('<script>window.addEventListener("load", function () {'
         ' document.title = "pwned:" + String(window.__pwned); throw new Error("anatomist-probe"); });</script>')


def load(path: Path) -> tuple[str, list[str]]:
    """(DOM after scripts ran, console lines) of a file loaded in headless Chromium."""
    done = run_chromium("--dump-dom", "--virtual-time-budget=5000", "--enable-logging=stderr", "--v=0",
                        "--log-level=0", path.resolve().as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout, [line for line in done.stderr.splitlines() if ":CONSOLE" in line]


@pytest.fixture(scope="module")
def audit(tmp_path_factory) -> Path:
    folder = make_fake_audit(tmp_path_factory.mktemp("audit"))
    render_report(folder)
    return folder


@pytest.fixture(scope="module")
def loaded(audit) -> tuple[str, list[str]]:
    return load(audit / "report.html")


def plot_dom(dom: str, div: str) -> str:
    start = dom.index(f'id="{div}"')
    return dom[start: dom.index("</script>", start)]


def test_plots_render(loaded, audit):
    dom, _ = loaded
    for div in PLOTS:
        assert 'class="main-svg"' in plot_dom(dom, div), f"plot {div} did not render"
    rows = pd.read_parquet(audit / "rows.parquet")
    n_points = int((rows["tested"] & rows["q"].notna()).sum())
    assert plot_dom(dom, "volcano").count('class="point"') == n_points
    assert plot_dom(dom, "graph").count('class="point"') == len(pd.read_parquet(audit / "clusters.parquet"))
    assert "<image" in plot_dom(dom, "heatmap")


def test_tables_render(loaded, audit):
    dom, _ = loaded
    rows = pd.read_parquet(audit / "rows.parquet")
    tested = rows[rows["tested"]]
    ranked = re.findall(r'<table class="ranked">(.*?)</table>', dom, flags=re.S)
    assert [t.count("<tr>") - 1 for t in ranked] == [min(30, (tested.topic != "all").sum()),
                                                     min(30, (tested.topic == "all").sum())]


def test_no_console_errors(loaded):
    _, console = loaded
    assert not [line for line in console if "Uncaught" in line or "Content Security Policy" in line], console


def test_dataset_payloads_did_not_run(loaded, audit, tmp_path):
    dom, _ = loaded
    assert "<img src=\"x\"" not in dom and "<script>window.__pwned" not in dom
    probe = tmp_path / "probe.html"  # escaping alone, without the page's CSP (which would block the probe too)
    page = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", (audit / "report.html").read_text(
        encoding="utf-8"))
    probe.write_text(page.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    dom, console = load(probe)
    assert "<title>pwned:undefined</title>" in dom
    uncaught = [line for line in console if "Uncaught" in line]
    assert len(uncaught) == 1 and "anatomist-probe" in uncaught[0], console  # the probe's own error is seen


def test_screenshot_writes_png(audit, tmp_path):
    png = screenshot(audit / "report.html", tmp_path / "shot" / "first.png", width=800, height=600)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert struct.unpack(">II", data[16:24]) == (800, 600)


def test_csp_blocks_unescaped_html(audit, tmp_path):
    injected = tmp_path / "injected.html"  # CSP alone: raw payloads pasted into the page do nothing
    payload = ('<img src=x onerror="document.body.dataset.pwned=1">'
               '<script>document.body.dataset.pwned=2</script>')
    injected.write_text((audit / "report.html").read_text(encoding="utf-8").replace("<main>", "<main>" + payload),
                        encoding="utf-8")
    dom, console = load(injected)
    assert "data-pwned" not in dom
    blocked = [line for line in console if "violates the following Content Security Policy" in line]
    assert any("inline script" in line for line in blocked), console
    assert any("event handler" in line for line in blocked), console
