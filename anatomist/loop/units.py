"""Skip-or-run by input hash: the one mechanism behind every stage of `anatomist loop` (and the
benchmarks' cached runs).

A unit is a folder plus the inputs that decide its content (a config section, the digests of the
upstream results). Its record, FOLDER/stage.json, holds the hash of those inputs, the inputs
themselves (so a rerun can say what changed), `done`, and, once done, the digest of its result
files. `run_unit`:
- done with the same input hash: skipped;
- the same hash, not done (a killed run): the body runs again in the same folder, and the stage
  resumes there (every stage below the loop resumes on its own: pooled latents, DPO checkpoints,
  generation caches);
- another hash: the folder is emptied, then the body runs (a changed input leaves nothing stale).
A folder without a record (written before records existed) is resumed, not emptied.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

from anatomist.errors import AnatomistError
from anatomist.fileio import atomic_write_text

RECORD = "stage.json"


def inputs_hash(inputs: dict) -> str:
    """sha256 of the inputs as canonical JSON (sorted keys; paths and other objects by str)."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]


def digest_files(folder: Path, patterns: Sequence[str]) -> str:
    """sha256 over the files matching `patterns` in `folder` (relative names and bytes, sorted), so
    a downstream unit's hash changes exactly when this one's result does."""
    h = hashlib.sha256()
    files = sorted({p for pat in patterns for p in folder.glob(pat) if p.is_file() and p.name != RECORD})
    for p in files:
        h.update(str(p.relative_to(folder)).encode() + b"\0")
        with p.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def read_record(folder: Path) -> dict | None:
    path = Path(folder) / RECORD
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise AnatomistError(f"{path}: not valid JSON ({e.msg}); delete it to rerun this stage") from None


def status(folder: Path, inputs: dict) -> str:
    """"done" (same inputs, finished), "resume" (same inputs, unfinished, or no record) or "changed"."""
    rec = read_record(folder)
    if rec is None:
        return "resume"
    if rec.get("inputs_hash") != inputs_hash(inputs):
        return "changed"
    return "done" if rec.get("done") else "resume"


def run_unit(folder: str | Path, inputs: dict, body: Callable[[], object], *, outputs: Sequence[str] = ("**/*",),
             name: str = "") -> str:
    """Run `body` for `folder` unless its record says it is done with these inputs (module doc);
    returns "skipped", "resumed", "ran" or "reran"."""
    folder = Path(folder)
    state = status(folder, inputs)
    if state == "done":
        return "skipped"
    if state == "changed" and folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    resumed = state == "resume" and any(p.name != RECORD for p in folder.iterdir())
    record = {"stage": name or folder.name, "inputs_hash": inputs_hash(inputs), "inputs": inputs, "done": False}
    atomic_write_text(folder / RECORD, json.dumps(record, indent=1, sort_keys=True, default=str) + "\n")
    body()
    record.update(done=True, outputs=list(outputs), outputs_hash=digest_files(folder, outputs))
    atomic_write_text(folder / RECORD, json.dumps(record, indent=1, sort_keys=True, default=str) + "\n")
    return {"resume": "resumed" if resumed else "ran", "changed": "reran"}[state]


def outputs_hash(folder: Path) -> str:
    """The result digest of a finished unit (what downstream units hash); raises when unfinished."""
    rec = read_record(folder)
    if rec is None or not rec.get("done"):
        raise AnatomistError(f"{folder}: this stage has not finished; run the loop up to it first")
    return rec["outputs_hash"]
