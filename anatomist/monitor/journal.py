"""The one reader/writer of a run's monitor files (the on-disk hand-off between the monitor, its
report and `benchmarks/monitor.py`):

    monitor.json   what is measured: metrics (name → label), the prompts (id, topic), samples per
                   prompt, seed, cadence, alarms; a resumed run must measure the same things
    monitor.jsonl  one line per point, in step order:
                   step, metrics {name: {mean, shift, ci_low, ci_high}}, prompt_means {name: [P]}
                   (per-prompt means, what every later point is paired with), alarms [specs fired],
                   seconds (wall time of the point; the only field a resumed run does not repeat);
                   a paired monitor adds ess_share (median over prompts of ESS / samples) and
                   fallback (the prompts whose weights collapsed and were sampled afresh)
    monitor_anchor.json  (paired monitor only) the samples later points reweigh, as a list of
                   anchors in step order: step, prompts (their indices), prompt_ids, token_ids
                   (prompt-major, samples per prompt each), logp (their log π_T under that step's
                   policy), values [·, M] (their metric values); the first holds every prompt, each
                   later one the prompts sampled afresh at its step. A prompt's anchor is its latest.

Both are rewritten whole and atomically (`anatomist.fileio`) after each point: a kill leaves the
old file or the new one. On resume the points after the run's checkpoint step are dropped; they
are measured again, on the same policy, to the same values.
"""

from __future__ import annotations

import json
from pathlib import Path

from anatomist.errors import AnatomistError
from anatomist.fileio import atomic_write_text

META = "monitor.json"
POINTS = "monitor.jsonl"
ANCHOR = "monitor_anchor.json"
REPORT = "monitor.html"
VOLATILE = ("seconds",)


def read_meta(folder: str | Path) -> dict | None:
    path = Path(folder) / META
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise AnatomistError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}); delete it to start over") from None


def write_meta(folder: str | Path, meta: dict) -> None:
    atomic_write_text(Path(folder) / META, json.dumps(meta, indent=1, sort_keys=True) + "\n")


def read_points(folder: str | Path) -> list[dict]:
    path = Path(folder) / POINTS
    if not path.is_file():
        return []
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise AnatomistError(f"{path}: line {i} is not valid JSON ({e.msg})") from None
    return rows


def write_points(folder: str | Path, rows: list[dict]) -> None:
    atomic_write_text(Path(folder) / POINTS, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def read_anchors(folder: str | Path) -> list[dict]:
    path = Path(folder) / ANCHOR
    if not path.is_file():
        return []
    try:
        anchors = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise AnatomistError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}); delete the run's monitor "
                             "files to start over") from None
    fields = ("step", "prompts", "prompt_ids", "token_ids", "logp", "values")
    if not isinstance(anchors, list):
        raise AnatomistError(f"{path}: not a list of anchors; delete the run's monitor files to start over")
    bad = next((i for i, a in enumerate(anchors) if not isinstance(a, dict) or any(k not in a for k in fields)), None)
    if bad is not None:
        raise AnatomistError(f"{path}: anchor {bad} lacks one of {', '.join(fields)}; delete the run's monitor "
                             "files to start over")
    return anchors


def write_anchors(folder: str | Path, anchors: list[dict]) -> None:
    atomic_write_text(Path(folder) / ANCHOR, json.dumps(anchors) + "\n")
