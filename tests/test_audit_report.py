"""The audit report: built from the audit folder alone, self-contained, dataset text escaped."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from anatomist.audit.cli import report
from anatomist.audit.length import length_rows
from anatomist.audit.report import SECTIONS, render_report
from anatomist.audit.rows import topic_cluster_rows
from anatomist.errors import AnatomistError
from anatomist.html import content_policy, esc

SCRIPT = "<script>window.__pwned=1</script>"
IMG = '<img src=x onerror="window.__pwned=2">'
BOLD_TOPIC = "<b>bold</b> topic"
BOLD_TOKEN = "<b>"
PAYLOADS = (SCRIPT, IMG, BOLD_TOPIC)


def make_fake_audit(out: Path, malicious: bool = True, n_pairs: int = 48, n_clusters: int = 5,
                    seed: int = 0) -> Path:
    """An audit folder with the files run.py writes, from synthetic Δc; cluster 0 is pushed up in topic 0."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    names = [BOLD_TOPIC if malicious else "cooking recipes", "python code", "travel"]
    topics = np.arange(n_pairs) % len(names)
    c_chosen, c_rejected = rng.normal(size=(n_pairs, n_clusters)), rng.normal(size=(n_pairs, n_clusters))
    c_chosen[topics == 0, 0] += 2.5
    c_chosen[:, 1] -= 1.0
    delta = c_chosen - c_rejected
    rows = topic_cluster_rows(delta, topics, names, min_pairs=8, n_boot=50, seed=seed)
    overall = rows[rows.topic == "all"].set_index("cluster").loc[np.arange(n_clusters)]
    labels = [SCRIPT if malicious and k == 0 else f"concept {k} & friends" for k in range(n_clusters - 1)] + [None]
    ids = [f"pair-{i}" for i in range(n_pairs)]
    pd.DataFrame({
        "cluster": np.arange(n_clusters), "label": labels, "label_status": "ok",
        "detection_acc": np.linspace(0.9, 0.5, n_clusters), "n_features": np.arange(n_clusters) * 3 + 2,
        "features": [list(range(k * 10, k * 10 + 3 * k + 2)) for k in range(n_clusters)],
        "mean_delta": overall["mean"].to_numpy(), "q": overall["q"].to_numpy(),
        "direction": overall["direction"].to_numpy(),
        "logit_lens": [[" cat", "🎉", SCRIPT if malicious else "x"]] * n_clusters,
    }).to_parquet(out / "clusters.parquet", index=False)
    rows.to_parquet(out / "rows.parquet", index=False)
    n_tokens = rng.integers(20, 60, size=(n_pairs, 2))                          # chosen, rejected
    n_tokens[topics == 1, 0] *= 2                                               # "python code": chosen ~2× longer
    length_rows(n_tokens.ravel(), topics, names, min_pairs=8, n_boot=50, seed=seed).to_parquet(
        out / "length.parquet", index=False)
    pd.DataFrame({
        "pair_id": np.repeat(ids, n_clusters), "topic_id": np.repeat(topics, n_clusters),
        "cluster": np.tile(np.arange(n_clusters), n_pairs), "c_chosen": c_chosen.ravel(),
        "c_rejected": c_rejected.ravel(), "delta": delta.ravel(),
    }).to_parquet(out / "pairs.parquet", index=False)
    bad = IMG if malicious else "a plain answer"
    tokens = ["Hello", " world", BOLD_TOKEN if malicious else "!", " 🙂", "\n", SCRIPT if malicious else "x"] * 5

    def context(i, side):
        return {"tokens": tokens, "acts": [float(abs(np.sin(i + t))) for t in range(len(tokens))],
                "record_id": ids[i], "side": side}

    def pair(i):
        long = "long answer " * 60
        return {"pair_id": ids[i], "delta": float(delta[i, 0]), "prompt": f"prompt {i} {SCRIPT if malicious else ''}",
                "chosen": (SCRIPT if malicious else "yes") + long, "rejected": bad}

    order = np.argsort(-delta[:, 0])
    examples = {str(k): {
        "label": {"text": labels[k], "status": "ok", "labeller": "offline", "detection_acc": 0.8, "n_heldout": 20,
                  "evidence": {"top_tokens": [BOLD_TOKEN if malicious else "x", "🙂"]}},
        "activating": [context(i, "chosen") for i in range(6)],
        "non_activating": [context(i, "rejected") for i in range(6, 9)],
        "pairs": [pair(i) for i in (*order[:3], *order[::-1][:3])],
    } for k in range(n_clusters)}
    meta = {"model": "tiny-model", "sae": "sae/dir", "sae_cfg": {"d_sae": 64}, "layer": 3,
            "data": {"n_pairs": n_pairs, "hash": "abc123"}, "config": {"alpha": 0.05, "min_pairs": 8, "seed": seed},
            "topics": {"names": names, "examples": [[f"{SCRIPT if malicious else 'ask'} {j}"] * 2 for j in range(3)],
                       "method": "kmeans", "silhouette": 0.31, "sizes": np.bincount(topics).tolist()},
            "n_clusters": n_clusters, "n_features_clustered": 30, "timings": {"pool_s": 1.5}}
    (out / "examples.json").write_text(json.dumps(examples))
    (out / "concepts.json").write_text(json.dumps({"features": [], "labels": [], "weights": [], "mean": [], "sd": []}))
    (out / "audit.json").write_text(json.dumps(meta))
    return out


def page_without_plotlyjs(text: str) -> str:
    from plotly.offline import get_plotlyjs

    bundle = get_plotlyjs()
    assert text.count(bundle) == 1, "plotly.js must be inlined exactly once"
    return text.replace(bundle, "")


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> tuple[Path, str]:
    path = render_report(make_fake_audit(tmp_path_factory.mktemp("audit")))
    return path, path.read_text(encoding="utf-8")


def test_writes_report_html_into_the_folder(rendered):
    path, text = rendered
    assert path.name == "report.html" and text.startswith("<!DOCTYPE html>")
    assert not list(path.parent.glob(".report.html.tmp*"))


def test_dataset_text_is_escaped(rendered):
    _, text = rendered
    page = page_without_plotlyjs(text)
    for raw in PAYLOADS:
        assert raw not in text, f"unescaped dataset text in the report: {raw!r}"
    for raw in (IMG, BOLD_TOPIC):
        assert html.escape(raw, quote=True) in page
    assert esc(SCRIPT) in page
    assert page.count("<script>") == page.count("</script>") == 1 + 3, "only plotly.js and the three plots"


def test_no_network_fetches(rendered):
    _, text = rendered
    page = page_without_plotlyjs(text)
    fetches = re.findall(r"<(?:script|img|iframe)\b[^>]*\bsrc\s*=|<link\b[^>]*\bhref\s*=", page, flags=re.I)
    assert fetches == []
    assert "@import" not in page and "url(" not in page
    policy = html.unescape(re.search(r'http-equiv="Content-Security-Policy" content="([^"]*)"', page).group(1))
    assert policy.startswith("default-src 'none'; script-src 'sha256-") and "connect-src 'none'" in policy
    assert policy == content_policy(text.split("<main>")[0] + "".join(re.findall(r"<div id=.*?</script>", text)))
    assert policy.count("'sha256-") == 4 and "unsafe-inline" not in policy.split("style-src")[0]


def test_response_length_table(rendered, tmp_path):
    path, text = rendered
    page = page_without_plotlyjs(text)
    mean = pd.read_parquet(path.parent / "length.parquet").set_index("topic").loc["python code", "mean"]
    assert "<h3>Response length</h3>" in page and page.count('class="length"') == 1
    table = page[page.index('class="length"'):]
    table = table[:table.index("</table>")]
    code = table[table.index("python code"):]
    assert "amplify" in code[:code.index("</tr>")] and f"×{np.exp(mean):.2f}" in code[:code.index("</tr>")]
    assert esc(BOLD_TOPIC) in table and BOLD_TOPIC not in table
    older = make_fake_audit(tmp_path / "older", malicious=False)     # an audit from before length.parquet
    (older / "length.parquet").unlink()
    assert 'class="length"' not in page_without_plotlyjs(render_report(older).read_text(encoding="utf-8"))


def test_sections_tables_and_plots_present(rendered):
    _, text = rendered
    page = page_without_plotlyjs(text)
    for name in SECTIONS[1:]:
        assert f"<h2>{esc(name)}</h2>" in page
    assert "<h1>anatomist audit</h1>" in page
    for div in ("volcano", "heatmap", "graph"):
        assert f'<div id="{div}" class="plot"></div>' in page and f'Plotly.newPlot("{div}"' in page
    assert page.count('class="ranked"') == 2
    assert 'id="cluster-0"' in page and 'href="#cluster-0"' in page
    assert "abc123" in page and "tiny-model" in page
    assert "<details" in page and 'class="snippet"' in page
    assert "concept 1 &amp; friends" in page and "(unlabelled)" not in page
    # a label below MIN_NAME_ACC and a missing one name their top context and say why
    assert "detects only 0.70 &lt; 0.75]" in page and "no label: none given]" in page
    assert "label: concept 2 &amp; friends" in page                              # the weak label stays visible
    assert "logit lens (top output tokens of the decoder direction): cat · 🎉" in page


def test_csp_never_allows_page_text(tmp_path, monkeypatch):
    """Were escaping to fail, an injected <script> must not be whitelisted by the CSP's hashes."""
    from anatomist.audit import report as module

    monkeypatch.setattr(module, "long_text", lambda text, limit=0: f"<div>{text}</div>")
    text = render_report(make_fake_audit(tmp_path / "a")).read_text(encoding="utf-8")
    assert SCRIPT in text  # the mutation did inject it
    policy = html.unescape(re.search(r'http-equiv="Content-Security-Policy" content="([^"]*)"', text).group(1))
    assert policy.count("'sha256-") == 4


def test_rendering_is_deterministic(tmp_path, rendered):
    _, first = rendered
    again = render_report(make_fake_audit(tmp_path / "again")).read_text(encoding="utf-8")
    assert again == first


def test_planted_concept_is_ranked_first_and_amplified(rendered):
    _, text = rendered
    page = page_without_plotlyjs(text)
    first_row = page.split('class="ranked"')[1].split("<tbody>")[1].split("</tr>")[0]
    assert "C0 " in first_row and "dir-amplify" in first_row


def test_missing_file_names_the_folder_and_file(tmp_path):
    audit = make_fake_audit(tmp_path / "a", malicious=False)
    (audit / "pairs.parquet").unlink()
    with pytest.raises(AnatomistError, match="pairs.parquet"):
        render_report(audit)


def test_cli_prints_path(tmp_path, capsys):
    audit = make_fake_audit(tmp_path / "a", malicious=False)
    report(audit)
    assert capsys.readouterr().out.strip() == str(audit / "report.html")


def test_planted_truth_section_only_with_a_score(rendered, tmp_path):
    """An organism audit's score.json becomes a section: one row per planted cell, found or missed,
    the matched row (a concept or response length) and the headline numbers."""
    from anatomist.audit.report import TRUTH

    _, plain = rendered
    assert f"<h2>{esc(TRUTH)}</h2>" not in page_without_plotlyjs(plain)
    audit = make_fake_audit(tmp_path / "scored", malicious=False)
    cell = {"topic": "python code", "strength": 0.9, "n_pairs": 40, "found": True,
            "row": {"cluster": 0, "rho": 0.61, "q": 0.002, "direction": "amplify", "expected": "amplify"}}
    score = {"recall": 0.5, "precision": 0.75, "sign_accuracy": 1.0, "n_found": 1, "n_planted_cells": 2,
             "n_flagged": 4, "rho_min": 0.3, "truth": "organism/truth.json",
             "cells": [{**cell, "trait": "over_formatting"},
                       {**cell, "trait": "<b>verbosity</b>", "found": False, "row": None},
                       {**cell, "trait": "verbosity", "row": {**cell["row"], "cluster": -1}}]}
    (audit / "score.json").write_text(json.dumps(score))
    page = page_without_plotlyjs(render_report(audit).read_text(encoding="utf-8"))
    part = page[page.index(f"<h2>{esc(TRUTH)}</h2>"):page.index(f"<h2>{esc(SECTIONS[1])}</h2>")]
    assert "recall 0.50 (1 of 2 planted" in part and "precision 0.75 of 4 flagged" in part
    assert "|rank-biserial| ≥ 0.3" in part         # an older score.json: the threshold in rho_min
    rows = part.split("<tr>")[2:]
    assert len(rows) == 3 and "✓ found" in rows[0] and ">C0<" in rows[0] and "0.61" in rows[0]
    assert "✗ missed" in rows[1] and esc("<b>verbosity</b>") in rows[1] and "<b>verbosity" not in rows[1]
    assert ">length<" in rows[2]
    (audit / "score.json").write_text(json.dumps({**score, "rho_min": None, "matching": "stratified",
                                                  "threshold": 0.5, "null_credit": 0.01}))
    page = page_without_plotlyjs(render_report(audit).read_text(encoding="utf-8"))
    note = page[page.index(f"<h2>{esc(TRUTH)}</h2>"):page.index(f"<h2>{esc(SECTIONS[1])}</h2>")]
    assert "|rank-biserial| ≥ 0.5" in note and "credits 0.01" in note and "None" not in note


def test_a_damaged_score_json_is_named(tmp_path):
    audit = make_fake_audit(tmp_path / "scored", malicious=False)
    (audit / "score.json").write_text(json.dumps({"recall": 1.0}))
    with pytest.raises(AnatomistError, match=r"score\.json: missing precision, sign_accuracy"):
        render_report(audit)


def test_skipped_browser_checks_are_announced_at_the_end(tmp_path):
    """Without chromium the browser tests skip; the run then ends with one line saying the report
    was not checked in a browser and how to install it (the conftest hook), and only then."""
    import os
    import subprocess
    import sys

    tests = Path(__file__).resolve().parent
    path = os.pathsep.join(d for d in os.environ.get("PATH", "").split(os.pathsep)
                           if d and not any(Path(d, exe).exists() for exe in ("chromium", "chromium-browser")))

    def run(*args):
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp",
                               str(tmp_path / f"bt{len(args)}"), *args], cwd=tests.parent, capture_output=True,
                              text=True, env={**os.environ, "PATH": path}, timeout=600)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        return done.stdout.strip().splitlines()

    lines = run(str(tests / "test_report_browser.py"))
    n = re.match(r"(\d+) skipped in ", lines[-1])             # the final counts, and just above them:
    assert n and lines[-2].startswith(f"NOTE: the HTML report was not checked in a browser ({n[1]} tests"), lines[-3:]
    assert "apt-get install -y chromium" in lines[-2]
    assert not any("not checked in a browser" in line for line in run(str(tests / "test_audit_rows.py")))
