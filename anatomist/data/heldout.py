"""Held-out prompts (what evaluation and the training monitor sample on), one JSON object per line:
id, topic, prompt (chat messages) — `anatomist organism build` writes heldout_prompts.jsonl."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from anatomist.data.io import jsonl_objects
from anatomist.errors import DataError


@dataclass(frozen=True)
class HeldoutPrompt:
    id: str
    topic: str
    messages: tuple[dict, ...]


def read_prompts(path: str | Path) -> list[HeldoutPrompt]:
    """Held-out prompts, one JSON object per line: id, topic, prompt (chat messages)."""
    path = Path(path)
    out, seen = [], set()
    for i, row in jsonl_objects(path):
        for key in ("id", "topic"):
            if not isinstance(row.get(key), str) or not row[key]:
                raise DataError("missing or not a non-empty string", file=str(path), row=i, field=key)
        msgs = row.get("prompt")
        if not isinstance(msgs, list) or not msgs or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in msgs):
            raise DataError("expected a non-empty list of {role, content} messages", file=str(path), row=i,
                            field="prompt")
        if row["id"] in seen:
            raise DataError(f"duplicate id {row['id']!r}", file=str(path), row=i, field="id")
        seen.add(row["id"])
        out.append(HeldoutPrompt(row["id"], row["topic"], tuple(msgs)))
    if not out:
        raise DataError("no prompts", file=str(path))
    return out


def first_per_topic(prompts: Sequence[HeldoutPrompt], n: int) -> list[HeldoutPrompt]:
    """The first `n` prompts of every topic, in file order (a smaller run keeps every topic)."""
    seen: dict[str, int] = {}
    out = []
    for p in prompts:
        seen[p.topic] = seen.get(p.topic, 0) + 1
        if seen[p.topic] <= n:
            out.append(p)
    return out
