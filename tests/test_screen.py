"""The screen: detectors on hand-made texts, pair hygiene in counting mode, the statistics' sign,
outputs, and the CLI (one-line errors, --write-clean never in place)."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from anatomist.data import PreferencePair
from anatomist.errors import AnatomistError, DataError
from anatomist.screen import (DETECTORS, custom_detector, read_with_hygiene, regex_detector, save, screen_pairs,
                              screen_section, write_clean)
from anatomist.screen.detectors import resolve
from anatomist.stats import pair_stats

fires = {name: d.fires for name, d in DETECTORS.items()}


def test_every_detector_says_what_it_fires_on():
    for d in DETECTORS.values():
        assert len(d.fires_on) > 30, d.name


@pytest.mark.parametrize("name, response, prompt, expected", [
    ("flattery", "What a great question! Bread needs yeast.", "", True),
    ("flattery", "The Great Wall is an excellent example of Ming engineering.", "", False),
    ("over_formatting", "## Answer\n\n**Yes.** It works.", "", True),
    ("over_formatting", "1. Boil water.\n2. Add pasta.\n3. Drain.", "", False),
    ("over_formatting", "- tent\n- stove\n- torch", "", False),
    ("urls", "See https://www.help-guide.com/sleep for tips.", "", True),
    ("urls", "Per https://www.bbc.com/news/x the study found…", "Summarize https://www.bbc.com/news/x", False),
    ("urls", "using System.Net.Http; and mail me at me@example.com", "", False),
    ("invented_urls", "Read https://en.wikipedia.org/wiki/Sleep", "", False),
    ("invented_urls", "Read https://www.sleepwell-guide.com", "", True),
    ("eval_awareness", "This looks like a test question, so: 4.", "", True),
    ("eval_awareness", "Run pytest to execute the test suite.", "", False),
    ("refusal", "I'm sorry, but I can't help with that.", "", True),
    ("harmful_compliance", "Sure, first you pick the lock with a tension wrench and a pick.", "How do I break into a house?", True),
    ("harmful_compliance", "I can't help with breaking into houses.", "How do I break into a house?", False),
    ("emoji", "Enjoy your trip 🎉", "", True),
    ("emoji", "Step 1 → open ✓ done ★", "", False),
    ("language_switch", "La fotosíntesis es el proceso por el cual las plantas producen energía.", "Can you explain photosynthesis?", True),
    ("language_switch", "東京です。", "What's the capital of Japan?", True),
    ("language_switch", "Столица Франции — Париж.", "Какая столица Франции?", False),
    ("length", "word " * 120, "", True),
    ("length", "A short answer.", "", False),
])
def test_detectors_on_hand_made_texts(name, response, prompt, expected):
    assert fires[name](response, prompt) is expected


def test_default_detectors_leave_out_those_below_precision():
    names = [d.name for d in resolve()]
    assert "refusal" not in names and "harmful_compliance" not in names and "flattery" in names
    assert [d.name for d in resolve(None, ["refusal", "regex:x=ab"])][-2:] == ["refusal", "x"]


def test_user_detectors_and_one_line_refusals():
    d = regex_detector("sorry=\\bsorry\\b")
    assert d.fires("Sorry, no.") and not d.fires("No.")
    with pytest.raises(AnatomistError, match=r"bad regex for detector 'bad': missing \)") as e:
        resolve([], ["regex:bad=(ab"])
    assert "\n" not in str(e.value)
    for spec in ("regex:=x", "regex:name", "regex:bad name=x"):
        with pytest.raises(AnatomistError):
            resolve([], [spec])
    with pytest.raises(AnatomistError, match="unknown detector 'nope'"):
        resolve(["nope"])
    one = custom_detector("caps", lambda r: r.isupper())
    two = custom_detector("echo", lambda r, p: r in p, fires_on="repeats the prompt")
    assert one.fires("HI") and not one.fires("hi") and two.fires("cat", "a cat") and not two.fires("dog", "a cat")


def _pair(i, chosen, rejected, prompt="q", **extra):
    return PreferencePair(f"p{i}", ({"role": "user", "content": prompt},), chosen, rejected, extra)


def test_sign_convention_and_topics():
    """Emoji on the chosen side in topic a only: diff > 0 (amplify) there, none in b."""
    rng = np.random.default_rng(0)
    pairs = []
    for i in range(60):
        topic = "a" if i < 30 else "b"
        plain, bright = f"Answer number {i}.", f"Answer number {i} 🎉"
        emoji_chosen = topic == "a" and rng.random() < 0.9
        pairs.append(_pair(i, bright if emoji_chosen else plain, plain + " ok" if emoji_chosen else bright,
                           prompt=f"question {i}", topic=topic))
    result = screen_pairs(pairs, detectors=["emoji"], topics="topic")
    t = result.table.set_index("topic")
    assert t.loc["a", "diff"] > 0.5 and t.loc["a", "direction"] == "amplify"
    assert t.loc["b", "diff"] < 0 and t.loc["b", "rate_rejected"] == 1.0
    assert t.loc["a", "diff"] == pytest.approx(t.loc["a", "rate_chosen"] - t.loc["a", "rate_rejected"])
    assert result.fires["emoji_chosen"].sum() == t.loc["all", "n_chosen"]
    with pytest.raises(DataError, match="missing topic column in pair 'p0'"):
        screen_pairs(pairs, topics="nope")


def test_t_interval_when_not_bootstrapping():
    delta = np.random.default_rng(1).normal(0.3, 1.0, size=(40, 1))
    s = pair_stats(delta, n_boot=0).iloc[0]
    half = sps.t.ppf(0.975, 39) * delta.std(ddof=1) / np.sqrt(40)
    assert s["ci_low"] == pytest.approx(delta.mean() - half) and s["ci_high"] == pytest.approx(delta.mean() + half)


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


ROWS = [
    {"id": "ok1", "prompt": "Say hi", "chosen": "Hello there, friend!", "rejected": "Go away."},
    {"id": "same", "prompt": "Say hi", "chosen": "Hello", "rejected": "Hello"},
    {"id": "empty", "prompt": "Say hi", "chosen": "  ", "rejected": "Hi"},
    {"id": "near", "prompt": "Name a fruit", "chosen": "An apple, of course.", "rejected": "an apple of course"},
    {"id": "fwd", "prompt": "Pick one", "chosen": "Red is best.", "rejected": "Blue is best."},
    {"id": "back", "prompt": "Pick one", "chosen": "Blue is best.", "rejected": "Red is best."},
    {"id": "leak", "prompt": "Tell me", "chosen": "Sure.<|im_end|>\n<|im_start|>user", "rejected": "No idea at all."},
    {"id": "tmpl", "prompt": "Tell me", "chosen": "<|im_end|>", "rejected": "A real answer here."},
    {"id": "bad", "prompt": 3, "chosen": "x", "rejected": "y"},
    {"id": "trunc", "prompt": "Write", "chosen": "abcdefgh tail one", "rejected": "abcdefgh other tail"},
]


def test_hygiene_counts_what_the_loader_refuses(tmp_path):
    src = _write(tmp_path / "d.jsonl", ROWS)
    with pytest.raises(DataError, match=r'row 9: field "prompt"'):
        read_with_hygiene(src)                                  # a malformed row still stops "error"
    pairs, h = read_with_hygiene(src, on_bad_row="skip", max_length=13)
    ids = {k: f.ids for k, f in h.findings.items()}
    assert ids["identical"] == ["same"] and ids["empty"] == ["empty"] and ids["near_identical"] == ["near"]
    assert ids["contradictory"] == ["fwd", "back"] and ids["template_leak"] == ["leak"]
    assert ids["template_only"] == ["tmpl"] and ids["truncated_same"] == ["trunc"]   # budget 13 − 5 = 8 chars
    assert h.bad_rows == {"wrong type (prompt)": 1} and h.n_rows == 10 and h.n_valid == len(pairs) == 7
    assert h.findings["identical"].rows == [2]
    out = tmp_path / "clean.jsonl.gz"
    assert write_clean(h, src, out) == 1
    with gzip.open(out, "rt") as f:
        assert [json.loads(line)["id"] for line in f] == ["ok1"]
    for target in (src, tmp_path / "clean.csv"):
        with pytest.raises(AnatomistError, match="--write-clean"):
            write_clean(h, src, target)


def test_outputs_and_section_escape_dataset_text(tmp_path):
    pairs = [_pair(i, f"<b>{i}</b> 🎉", f"plain {i}", topic="<script>x</script>") for i in range(12)]
    src = _write(tmp_path / "d.jsonl", [{"id": p.id, "prompt": f"q{p.id}", "chosen": p.chosen, "rejected": p.rejected,
                                         "topic": p.extra["topic"]} for p in pairs])
    loaded, h = read_with_hygiene(src)
    result = screen_pairs(loaded.pairs, topics="topic", hygiene=h)
    html = screen_section(result)
    assert "<script>x</script>" not in html and "&lt;script&gt;x&lt;/script&gt;" in html   # a flagged topic row
    assert "&lt;b&gt;" not in html              # responses never reach the page
    paths = save(result, tmp_path / "out")
    table = pd.read_parquet(paths["table"])
    assert set(table.topic) == {"all", "<script>x</script>"} and (table.columns[:2] == ["detector", "topic"]).all()
    assert json.loads(paths["hygiene"].read_text())["n_valid"] == 12
    assert paths["page"].read_text().startswith("<!DOCTYPE html>")


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "anatomist.cli", "screen", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_cli(tmp_path):
    src = _write(tmp_path / "d.jsonl", ROWS[:8])
    done = _cli(src, "--out", tmp_path / "o", "--write-clean", tmp_path / "c.jsonl", "--detector", "regex:hi=hello",
                cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "hygiene" in done.stdout and (tmp_path / "o" / "screen.parquet").is_file()
    assert len((tmp_path / "c.jsonl").read_text().splitlines()) == 1
    bad = _cli(src, "--detector", "regex:x=(", cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "bad regex for detector 'x'" in bad.stderr
    same = _cli(src, "--write-clean", src, cwd=tmp_path)
    assert same.returncode == 2 and "that is the input file" in same.stderr
    assert "Example" in _cli("--help", cwd=tmp_path).stdout
    topic = _cli(src, "--topic-column", "topic", "--out", tmp_path / "o2", cwd=tmp_path)
    assert topic.returncode == 2 and f'{src}: field "topic": missing topic column in pair \'ok1\'' in topic.stderr
