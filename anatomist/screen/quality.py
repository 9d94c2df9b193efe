"""Detector quality on a hand-labelled set: precision and recall per detector, per split.

The set (tests/data/screen_labels.jsonl) holds one response per line: id, split ("dev" | "heldout"),
source, prompt, response and labels {detector: 0 | 1}, labelled by reading the response. Detectors
were revised on the dev half only; `quality(rows, split="heldout")` is the measurement a detector
must pass (precision >= MIN_PRECISION) to be enabled by default.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from anatomist.data.io import jsonl_objects
from anatomist.errors import DataError
from anatomist.screen.detectors import DETECTORS, Detector

SPLITS = ("dev", "heldout")
MIN_PRECISION = 0.8
LABELS_FILE = Path(__file__).resolve().parents[2] / "tests" / "data" / "screen_labels.jsonl"


def read_labelled(path: str | Path = LABELS_FILE) -> list[dict]:
    """The labelled rows, each checked (one-line DataError naming file, row and field)."""
    rows = []
    for n, row in jsonl_objects(path):
        for key in ("id", "prompt", "response", "split"):
            if not isinstance(row.get(key), str):
                raise DataError("missing or not a string", file=str(path), row=n, field=key)
        if row["split"] not in SPLITS:
            raise DataError(f"expected one of {SPLITS}, got {row['split']!r}", file=str(path), row=n, field="split")
        labels = row.get("labels")
        if not isinstance(labels, dict) or any(v not in (0, 1) for v in labels.values()):
            raise DataError("expected an object of 0/1 labels", file=str(path), row=n, field="labels")
        rows.append(row)
    return rows


def quality(rows: list[dict], *, split: str | None = "heldout", detectors: list[Detector] | None = None) -> pd.DataFrame:
    """One row per detector labelled in `rows` (of `split`; None = all): n, positives, tp, fp, fn,
    precision, recall (NaN where undefined), and whether it reaches MIN_PRECISION."""
    dets = detectors if detectors is not None else list(DETECTORS.values())
    picked = [r for r in rows if split is None or r["split"] == split]
    out = []
    for d in dets:
        labelled = [r for r in picked if d.name in r["labels"]]
        truth = [bool(r["labels"][d.name]) for r in labelled]
        pred = [d.fires(r["response"], r["prompt"]) for r in labelled]
        tp = sum(t and p for t, p in zip(truth, pred))
        fp = sum(p and not t for t, p in zip(truth, pred))
        fn = sum(t and not p for t, p in zip(truth, pred))
        precision = tp / (tp + fp) if tp + fp else math.nan
        out.append({"detector": d.name, "default": d.default, "n": len(labelled), "positives": sum(truth),
                    "tp": tp, "fp": fp, "fn": fn, "precision": precision,
                    "recall": tp / (tp + fn) if tp + fn else math.nan,
                    "passes": bool(precision >= MIN_PRECISION) if tp + fp else None})
    return pd.DataFrame(out)
