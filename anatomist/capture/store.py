"""On-disk shard stores: safetensors shards of per-sequence rows, written atomically, resumable.

`ShardWriter` is generic: each sequence contributes rows of named tensors (any fields sharing
dim 0) and a `seq` column is added. The activation store below is its main use; the audit's
pooled features are another.

Layout of a store folder:

    capture.json              settings of the run (model, layer, data hash, ...); fixed at start
    shard_00000.safetensors   tensors for a contiguous range of sequences
    shard_00001.safetensors
    manifest.json             summary (shards, token counts, complete flag), rewritten atomically

Each shard of an activation store holds one row per stored token:
    acts      [N, D]  residual activations (dtype of the run)
    seq       [N]     int64, global sequence index (0-based, in input order)
    pos       [N]     int32, token position inside its sequence (0 = first token)
    token     [N]     int64, token id
    response  [N]     bool, True on response tokens (see anatomist.models.chat)
and in its metadata the sequence range [seq_start, seq_end) and each sequence's record id and
side ("chosen", "rejected" or "text").

A shard is written to a temporary name and renamed, so it is either complete or absent; a
finished shard is never rewritten. Resuming derives progress from the shards themselves (the
manifest is only a summary), so a kill between a shard's rename and the manifest update loses
nothing.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, NamedTuple

import torch
from safetensors import safe_open

from anatomist.errors import AnatomistError
from anatomist.fileio import atomic_save_safetensors, atomic_write_text

FORMAT = "anatomist.activations/1"
SHARD_RE = re.compile(r"shard_(\d{5})\.safetensors$")
FIELDS = ("acts", "seq", "pos", "token", "response")


@dataclass
class ShardInfo:
    file: str
    seq_start: int
    seq_end: int
    n_rows: int
    ids: list[str] = field(repr=False)
    sides: list[str] = field(repr=False)
    infos: list[dict] = field(repr=False, default_factory=list)  # per-sequence extras (may be empty)


def _read_shard_info(path: Path) -> ShardInfo:
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            n_rows = f.get_slice("seq").get_shape()[0]
        return ShardInfo(path.name, int(meta["seq_start"]), int(meta["seq_end"]), n_rows,
                         json.loads(meta["ids"]), json.loads(meta["sides"]), json.loads(meta.get("infos", "[]")))
    except Exception as e:  # a foreign or damaged file: name it instead of failing deep inside
        raise AnatomistError(f"{path}: not a readable activation shard ({type(e).__name__}: {e})") from e


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise AnatomistError(f"{path}: unreadable ({type(e).__name__}: {e})") from e
    if not isinstance(value, dict):
        raise AnatomistError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def scan_shards(folder: Path) -> list[ShardInfo]:
    """Complete shards in order, checked to cover sequences 0..n contiguously."""
    shards = [_read_shard_info(p) for p in sorted(folder.glob("shard_*.safetensors")) if SHARD_RE.search(p.name)]
    expected = 0
    for s in shards:
        if s.seq_start != expected:
            raise AnatomistError(f"{folder / s.file}: covers sequences from {s.seq_start}, expected "
                                 f"{expected}; the store is inconsistent")
        expected = s.seq_end
    return shards


class _Seq(NamedTuple):
    id: str
    side: str
    info: dict | None
    per_seq: dict[str, torch.Tensor]
    rows: dict[str, torch.Tensor]


class ShardWriter:
    """Append sequences' rows; flush a shard every `shard_rows` rows (at sequence edges)."""

    def __init__(self, folder: str | Path, settings: dict, *, shard_rows: int = 1 << 17, format: str = FORMAT):
        self.folder = Path(folder)
        self.shard_rows = shard_rows
        self.folder.mkdir(parents=True, exist_ok=True)
        for stale in self.folder.glob(".*.tmp*"):
            stale.unlink()
        settings_path = self.folder / "capture.json"
        settings = {"format": format, **settings}
        if settings_path.exists():
            existing = _read_json(settings_path)
            if existing != json.loads(json.dumps(settings)):
                diff = sorted(k for k in set(existing) | set(settings) if existing.get(k) != settings.get(k))
                raise AnatomistError(f"{self.folder}: holds a capture with other settings ({', '.join(diff)}); "
                                     "use another output folder or delete this one")
        else:
            atomic_write_text(settings_path, json.dumps(settings, indent=2))
        self.settings = settings
        self.shards = scan_shards(self.folder)
        self._pending: list[_Seq] = []
        self._pending_rows = 0

    @property
    def next_seq(self) -> int:
        """First sequence not yet on disk (pending ones count as not on disk)."""
        return self.shards[-1].seq_end if self.shards else 0

    def add(self, seq: int, record_id: str, side: str, info: dict | None = None,
            per_seq: dict[str, torch.Tensor] | None = None, **rows: torch.Tensor) -> None:
        """Queue one sequence: its rows (tensors sharing dim 0), optional JSON-able `info`, and
        optional `per_seq` tensors (one value per sequence; stored stacked as "seq.<name>")."""
        expected = self.next_seq + len(self._pending)
        assert seq == expected, f"sequences must arrive in order: got {seq}, expected {expected}"
        lengths = {t.shape[0] for t in rows.values()}
        assert len(lengths) == 1, f"row fields differ in length: { {k: v.shape for k, v in rows.items()} }"
        self._pending.append(_Seq(record_id, side, info, per_seq or {}, rows))
        self._pending_rows += lengths.pop()
        if self._pending_rows >= self.shard_rows:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        start = self.next_seq
        pending = self._pending
        n = [next(iter(p.rows.values())).shape[0] for p in pending]
        tensors = {name: torch.cat([p.rows[name] for p in pending]).contiguous() for name in pending[0].rows}
        tensors["seq"] = torch.repeat_interleave(torch.arange(start, start + len(n)), torch.tensor(n))
        for name in pending[0].per_seq:
            tensors[f"seq.{name}"] = torch.stack([p.per_seq[name] for p in pending])
        infos = [p.info for p in pending] if pending[0].info is not None else []
        info = ShardInfo(f"shard_{len(self.shards):05d}.safetensors", start, start + len(n), sum(n),
                         [p.id for p in pending], [p.side for p in pending], infos)
        meta = {"seq_start": str(info.seq_start), "seq_end": str(info.seq_end),
                "ids": json.dumps(info.ids), "sides": json.dumps(info.sides), "infos": json.dumps(infos)}
        atomic_save_safetensors(self.folder / info.file, tensors, meta)
        self.shards.append(info)
        self._pending, self._pending_rows = [], 0
        self._write_manifest(complete=False)

    def close(self, n_sequences: int) -> None:
        self.flush()
        assert self.next_seq == n_sequences, (self.next_seq, n_sequences)
        self._write_manifest(complete=True)

    def _write_manifest(self, *, complete: bool) -> None:
        manifest = {
            "format": self.settings["format"], "complete": complete,
            "n_sequences": self.next_seq, "n_rows": sum(s.n_rows for s in self.shards),
            "shards": [{"file": s.file, "seq_start": s.seq_start, "seq_end": s.seq_end,
                        "n_rows": s.n_rows} for s in self.shards],
        }
        atomic_write_text(self.folder / "manifest.json", json.dumps(manifest, indent=2))


class ShardStore:
    """Read a finished (or partial, with `allow_partial`) shard folder of the given format."""

    format = FORMAT

    def __init__(self, folder: str | Path, *, allow_partial: bool = False):
        self.folder = Path(folder)
        if not (self.folder / "capture.json").is_file():
            raise AnatomistError(f"{self.folder}: not a shard store (no capture.json)")
        self.settings = _read_json(self.folder / "capture.json")
        if self.settings.get("format") != self.format:
            raise AnatomistError(f"{self.folder}: holds format {self.settings.get('format')!r}, expected {self.format!r}")
        manifest_path = self.folder / "manifest.json"
        complete = manifest_path.is_file() and _read_json(manifest_path).get("complete")
        if not complete and not allow_partial:
            raise AnatomistError(f"{self.folder}: capture is not finished; rerun the same capture command to resume")
        self.shards = scan_shards(self.folder)

    @property
    def n_rows(self) -> int:
        return sum(s.n_rows for s in self.shards)

    @property
    def n_sequences(self) -> int:
        return self.shards[-1].seq_end if self.shards else 0

    def sequences(self) -> list[tuple[str, str]]:
        """(record id, side) for every sequence index."""
        return [(i, s) for sh in self.shards for i, s in zip(sh.ids, sh.sides)]

    def iter_shards(self, fields: tuple[str, ...] | None = None) -> Iterator[dict[str, torch.Tensor]]:
        """Each shard's tensors (all of them, or only `fields`)."""
        for s in self.shards:
            with safe_open(str(self.folder / s.file), framework="pt") as f:
                yield {name: f.get_tensor(name) for name in (fields or f.keys())}

    def load(self, fields: tuple[str, ...] | None = None) -> dict[str, torch.Tensor]:
        parts = list(self.iter_shards(fields))
        return {name: torch.cat([p[name] for p in parts]) for name in parts[0]}


class ActivationStore(ShardStore):
    """Per-token residual activations written by `anatomist.capture.capture` (fields: FIELDS)."""

    @property
    def n_tokens(self) -> int:
        return self.n_rows

    @property
    def d_model(self) -> int:
        return int(self.settings["d_model"])
