"""The screen's part of the audit folder (folder.py re-exports these names; it stays the one place
that reads the folder, through `read_screen`):

    screen.parquet        the screen's table, one row per (detector, topic) (`anatomist.screen.run.COLUMNS`)
    screen_fires.parquet  per pair, in audit order: id, topic, <detector>_chosen / _rejected (bool)
    screen.json           the key it was computed for (data hash, detectors, topics, alpha, seed: a rerun
                          with the same key reuses it), detectors, alpha, seconds, pair hygiene

Audits written before the screen lack all three; they read as "no screen" (None).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd

from anatomist.errors import AnatomistError
from anatomist.fileio import atomic_write_parquet, atomic_write_text

SCREEN = "screen.parquet"
SCREEN_FIRES = "screen_fires.parquet"
SCREEN_META = "screen.json"
SCREEN_FILES = (SCREEN, SCREEN_FIRES, SCREEN_META)


def screen_key(data_hash: str, detectors: list[str], topics: list[str] | None, alpha: float, seed: int) -> dict:
    """What a stored screen must match to be reused: the data, the detectors, the topic of every pair."""
    topics_hash = None if topics is None else hashlib.sha256("\n".join(topics).encode()).hexdigest()[:16]
    return {"data_hash": data_hash, "detectors": list(detectors), "topics_hash": topics_hash,
            "alpha": float(alpha), "seed": int(seed)}


def write_screen(out: str | Path, result, key: dict) -> None:
    """Write a `ScreenResult` into audit folder `out`, atomically; screen.json last (it marks them whole)."""
    from anatomist.screen.report import result_dict

    out = Path(out)
    atomic_write_parquet(result.table, out / SCREEN)
    atomic_write_parquet(result.fires, out / SCREEN_FIRES)
    atomic_write_text(out / SCREEN_META, json.dumps({"key": key, **result_dict(result)}, ensure_ascii=False,
                                                    default=float))


def read_screen(path: str | Path, key: dict | None = None):
    """The stored `ScreenResult` of audit folder `path`, or None where it has none (or, given `key`,
    where it was computed for another key)."""
    from anatomist.screen.report import result_from
    from anatomist.screen.run import COLUMNS

    path = Path(path)
    if not all((path / n).is_file() for n in SCREEN_FILES):
        return None
    try:
        meta = json.loads((path / SCREEN_META).read_text(encoding="utf-8"))
        if key is not None and meta.get("key") != key:
            return None
        table, fires = pd.read_parquet(path / SCREEN), pd.read_parquet(path / SCREEN_FIRES)
        missing = [c for c in COLUMNS if c not in table.columns]
        if missing:
            raise AnatomistError(f"missing column(s) {', '.join(missing)}")
        return result_from(table, fires, meta)
    except Exception as e:  # json / pyarrow / a missing field: all mean an unreadable screen
        first = str(e).splitlines()[0] if str(e) else ""
        raise AnatomistError(f"{path / SCREEN_META}: unreadable screen ({type(e).__name__}: {first}); delete "
                             f"{', '.join(SCREEN_FILES)} and re-run `anatomist audit`") from e
