"""Detector quality on the hand-labelled set (tests/data/screen_labels.jsonl): every default
detector reaches precision >= 0.8 on the held-out half, which detector revisions never used."""

from __future__ import annotations

from anatomist.screen import DETECTORS
from anatomist.screen.quality import MIN_PRECISION, quality, read_labelled


def test_the_labelled_set_covers_every_detector_in_two_halves():
    rows = read_labelled()
    for name in DETECTORS:
        assert sum(name in r["labels"] for r in rows) >= 100, name
    halves = [sum(r["split"] == s for r in rows) for s in ("dev", "heldout")]
    assert abs(halves[0] - halves[1]) <= 1


def test_default_detectors_reach_the_precision_bar_on_the_heldout_half():
    table = quality(read_labelled(), split="heldout").set_index("detector")
    for name, d in DETECTORS.items():
        row = table.loc[name]
        if d.default:
            assert row.tp + row.fp > 0, f"{name}: never fires on the held-out half"
            assert row.precision >= MIN_PRECISION, f"{name}: held-out precision {row.precision:.2f}"
