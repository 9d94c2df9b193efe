"""The HTML toolkit (anatomist/html.py) every page is built with: escaping, script-safe JSON, the CSP."""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re

import pytest

from anatomist.errors import AnatomistError
from anatomist.html import finite, num, page, plot, screenshot, script_json, table, tag

SCRIPT = "<script>window.__pwned=1</script>"


def test_script_json_cannot_close_the_script():
    s = script_json({"x": "</script><!--"})
    assert "<" not in s and json.loads(s) == {"x": "</script><!--"}


def test_tag_escapes_attributes_and_table_escapes_headers():
    assert tag("a", "x", href='"><b>', class_="c") == '<a href="&quot;&gt;&lt;b&gt;" class="c">x</a>'
    assert table([SCRIPT], [["<i>trusted</i>"]]) == (
        "<table><thead><tr><th>&lt;script&gt;window.__pwned=1&lt;/script&gt;</th></tr></thead>"
        "<tbody><tr><td><i>trusted</i></td></tr></tbody></table>")


def test_num_and_finite():
    assert [num(None), num(float("nan")), num(0.0), num(1.23456), num(0.0004), num(12.5, 0)] == \
        ["—", "—", "0.00", "1.23", "4.0e-04", "12"]
    assert finite([1, float("nan"), None, float("inf"), 2.5]) == [1.0, None, None, None, 2.5]


def test_page_hashes_exactly_its_own_scripts():
    """The CSP lists the plotly bundle, each plot call and each trusted script; a <script> that
    reached the page through its text (escaping having failed) is not whitelisted."""
    from plotly.offline import get_plotlyjs

    figure = plot("p", [{"type": "scatter", "x": [1], "y": [2]}], {})
    doc = page(SCRIPT, figure + SCRIPT, plots=[figure], scripts=["console.log(1);"])
    policy = html.unescape(re.search(r'http-equiv="Content-Security-Policy" content="([^"]*)"', doc).group(1))
    call = re.search(r"<script>(Plotly\.newPlot.*?)</script>", doc).group(1)
    digest = lambda s: base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()  # noqa: E731
    assert re.findall(r"'sha256-([^']*)'", policy) == [digest(get_plotlyjs()), digest(call), digest("console.log(1);")]
    assert "connect-src 'none'" in policy and doc.startswith("<!DOCTYPE html>")
    assert f"<title>{html.escape(SCRIPT)}</title>" in doc and doc.count(get_plotlyjs()) == 1


def test_screenshot_without_chromium_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(AnatomistError, match="apt-get install -y chromium"):
        screenshot(tmp_path / "report.html", tmp_path / "shot.png")
