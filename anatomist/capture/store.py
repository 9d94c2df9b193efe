"""On-disk activation store: safetensors shards, written atomically, resumable.

Layout of a store folder:

    capture.json              settings of the run (model, layer, data hash, ...); fixed at start
    shard_00000.safetensors   tensors for a contiguous range of sequences
    shard_00001.safetensors
    manifest.json             summary (shards, token counts, complete flag), rewritten atomically

Each shard holds one row per stored token:
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
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from anatomist.errors import AnatomistError

FORMAT = "anatomist.activations/1"
SHARD_RE = re.compile(r"shard_(\d{5})\.safetensors$")
FIELDS = ("acts", "seq", "pos", "token", "response")


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


@dataclass
class ShardInfo:
    file: str
    seq_start: int
    seq_end: int
    n_tokens: int
    ids: list[str] = field(repr=False)
    sides: list[str] = field(repr=False)


def _read_shard_info(path: Path) -> ShardInfo:
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            n_tokens = f.get_slice("seq").get_shape()[0]
        return ShardInfo(path.name, int(meta["seq_start"]), int(meta["seq_end"]), n_tokens,
                         json.loads(meta["ids"]), json.loads(meta["sides"]))
    except Exception as e:  # a foreign or damaged file: name it instead of failing deep inside
        raise AnatomistError(f"{path}: not a readable activation shard ({type(e).__name__}: {e})") from e


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


class ShardWriter:
    """Append sequences' activations; flush a shard every `shard_tokens` tokens (at sequence edges)."""

    def __init__(self, folder: str | Path, settings: dict, *, shard_tokens: int = 1 << 17):
        self.folder = Path(folder)
        self.shard_tokens = shard_tokens
        self.folder.mkdir(parents=True, exist_ok=True)
        for stale in self.folder.glob(".*.tmp*"):
            stale.unlink()
        settings_path = self.folder / "capture.json"
        settings = {"format": FORMAT, **settings}
        if settings_path.exists():
            existing = json.loads(settings_path.read_text())
            if existing != json.loads(json.dumps(settings)):
                diff = sorted(k for k in set(existing) | set(settings) if existing.get(k) != settings.get(k))
                raise AnatomistError(f"{self.folder}: holds a capture with other settings ({', '.join(diff)}); "
                                     "use another output folder or --overwrite")
        else:
            atomic_write_text(settings_path, json.dumps(settings, indent=2))
        self.settings = settings
        self.shards = scan_shards(self.folder)
        self._pending: list[dict] = []
        self._pending_tokens = 0

    @property
    def next_seq(self) -> int:
        """First sequence not yet on disk (pending ones count as not on disk)."""
        return self.shards[-1].seq_end if self.shards else 0

    def add(self, seq: int, record_id: str, side: str, acts: torch.Tensor, pos: torch.Tensor,
            token: torch.Tensor, response: torch.Tensor) -> None:
        """Queue one sequence's tokens: acts [n, D], pos/token/response [n]."""
        expected = self.next_seq + len(self._pending)
        assert seq == expected, f"sequences must arrive in order: got {seq}, expected {expected}"
        self._pending.append(dict(id=record_id, side=side, acts=acts, pos=pos, token=token, response=response))
        self._pending_tokens += acts.shape[0]
        if self._pending_tokens >= self.shard_tokens:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        start = self.next_seq
        n = [p["acts"].shape[0] for p in self._pending]
        tensors = {
            "acts": torch.cat([p["acts"] for p in self._pending]).contiguous(),
            "seq": torch.repeat_interleave(torch.arange(start, start + len(n)), torch.tensor(n)),
            "pos": torch.cat([p["pos"] for p in self._pending]).to(torch.int32),
            "token": torch.cat([p["token"] for p in self._pending]).to(torch.int64),
            "response": torch.cat([p["response"] for p in self._pending]).to(torch.bool),
        }
        info = ShardInfo(f"shard_{len(self.shards):05d}.safetensors", start, start + len(n), sum(n),
                         [p["id"] for p in self._pending], [p["side"] for p in self._pending])
        meta = {"seq_start": str(info.seq_start), "seq_end": str(info.seq_end),
                "ids": json.dumps(info.ids), "sides": json.dumps(info.sides)}
        path = self.folder / info.file
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        save_file(tensors, str(tmp), metadata=meta)
        os.replace(tmp, path)
        self.shards.append(info)
        self._pending, self._pending_tokens = [], 0
        self._write_manifest(complete=False)

    def close(self, n_sequences: int) -> None:
        self.flush()
        assert self.next_seq == n_sequences, (self.next_seq, n_sequences)
        self._write_manifest(complete=True)

    def _write_manifest(self, *, complete: bool) -> None:
        manifest = {
            "format": FORMAT, "complete": complete,
            "n_sequences": self.next_seq, "n_tokens": sum(s.n_tokens for s in self.shards),
            "shards": [{"file": s.file, "seq_start": s.seq_start, "seq_end": s.seq_end,
                        "n_tokens": s.n_tokens} for s in self.shards],
        }
        atomic_write_text(self.folder / "manifest.json", json.dumps(manifest, indent=2))


class ActivationStore:
    """Read a finished (or partial, with `allow_partial`) capture folder."""

    def __init__(self, folder: str | Path, *, allow_partial: bool = False):
        self.folder = Path(folder)
        if not (self.folder / "capture.json").is_file():
            raise AnatomistError(f"{self.folder}: not an activation store (no capture.json)")
        self.settings = json.loads((self.folder / "capture.json").read_text())
        manifest_path = self.folder / "manifest.json"
        complete = manifest_path.is_file() and json.loads(manifest_path.read_text()).get("complete")
        if not complete and not allow_partial:
            raise AnatomistError(f"{self.folder}: capture is not finished; rerun the same capture command to resume")
        self.shards = scan_shards(self.folder)

    @property
    def n_tokens(self) -> int:
        return sum(s.n_tokens for s in self.shards)

    @property
    def n_sequences(self) -> int:
        return self.shards[-1].seq_end if self.shards else 0

    @property
    def d_model(self) -> int:
        return int(self.settings["d_model"])

    def sequences(self) -> list[tuple[str, str]]:
        """(record id, side) for every sequence index."""
        return [(i, s) for sh in self.shards for i, s in zip(sh.ids, sh.sides)]

    def iter_shards(self, fields: tuple[str, ...] = FIELDS) -> Iterator[dict[str, torch.Tensor]]:
        for s in self.shards:
            with safe_open(str(self.folder / s.file), framework="pt") as f:
                yield {name: f.get_tensor(name) for name in fields}

    def load(self, fields: tuple[str, ...] = FIELDS) -> dict[str, torch.Tensor]:
        parts = list(self.iter_shards(fields))
        return {name: torch.cat([p[name] for p in parts]) for name in fields}
