"""The one internal preference record, and the message checks every format shares.

Every input format (see `formats.py`) becomes a `PreferencePair`; nothing downstream looks at
the raw row again except through `extra`.

Conventions used by all of `anatomist.data`:
- Rows are numbered from 1 in errors ("row N", for humans); for JSON Lines, row N is line N
  (blank lines count but hold no record). Generated ids use the same number.
- A field path inside a row is written like JSON, with 0-based list indices: `prompt[2].role`.
- A `DataError` reason reads "<category>[: <detail>]" (e.g. "wrong type: expected a string,
  got int"), so reports can group skipped rows by category; it never contains a newline.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from anatomist.errors import DataError

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class PreferencePair:
    """One preference pair (x, y⁺, y⁻).

    id: from the row's "id" column if present, else f"{source stem}:{row}".
    prompt: chat messages {"role": "system"|"user"|"assistant", "content": str, ...} — everything
        before the two responses; may hold earlier assistant turns. Other message keys a
        conversational source carries (e.g. "name") are kept.
    chosen / rejected: the final assistant response text y⁺ / y⁻.
    extra: every other column of the row, untouched.

    Invariants, checked on construction (raises `DataError` naming the record field): the
    prompt has at least one message and some non-blank text, every message has a known role and
    string content, both responses are non-blank strings, and they differ after stripping
    surrounding whitespace (a pair that differs only in whitespace teaches nothing).
    """

    id: str
    prompt: tuple[dict, ...]
    chosen: str
    rejected: str
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.id, str) or not self.id.strip():
            raise DataError(f"empty id: {self.id!r}", field="id")
        check_messages(self.prompt, "prompt")
        object.__setattr__(self, "prompt", tuple(self.prompt))  # a list passed in stays immutable
        if not self.prompt:
            raise DataError("empty prompt: no messages", field="prompt")
        if not any(m["content"].strip() for m in self.prompt):
            raise DataError("empty prompt: all messages are blank", field="prompt")
        for name in ("chosen", "rejected"):
            text = getattr(self, name)
            if not isinstance(text, str):
                raise DataError(f"wrong type: expected a string, got {describe(text)}", field=name)
            if not text.strip():
                raise DataError(f"empty response: {text!r}", field=name)
        if self.chosen.strip() == self.rejected.strip():
            raise DataError("identical chosen and rejected", field="rejected")


def type_name(value: Any) -> str:
    """JSON-flavoured type name for error messages (null, not NoneType)."""
    if value is None:
        return "null"
    return {dict: "object", list: "list", tuple: "list", str: "string", bool: "bool",
            int: "int", float: "float"}.get(type(value), type(value).__name__)


def describe(value: Any) -> str:
    """Type name plus the value itself when it is a short scalar: `int 42`, `string "ab…"`."""
    if value is None or not isinstance(value, (str, int, float, bool)):
        return type_name(value)
    text = value[:40] + "…" if isinstance(value, str) and len(value) > 40 else value
    return f"{type_name(value)} {json.dumps(text, ensure_ascii=False)}"


def require(row: dict, name: str, kind: type | tuple[type, ...], expected: str) -> Any:
    """row[name], which must exist and be an instance of `kind` (`expected` names it for humans)."""
    if name not in row:
        raise DataError("missing field", field=name)
    value = row[name]
    # bool is an int subclass; a true/false where text belongs is always a mistake.
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
        raise DataError(f"wrong type: expected {expected}, got {describe(value)}", field=name)
    return value


def _as_tuple(kind) -> tuple:
    return kind if isinstance(kind, tuple) else (kind,)


def check_messages(messages: Any, path: str) -> None:
    """Raise a `DataError` at `path[i].key` unless `messages` is a sequence of chat messages."""
    if not isinstance(messages, (list, tuple)):
        raise DataError(f"wrong type: expected a list of messages, got {describe(messages)}",
                        field=path)
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise DataError(f"bad message: expected an object, got {describe(m)}", field=f"{path}[{i}]")
        if "role" not in m or "content" not in m:
            missing = [k for k in ("role", "content") if k not in m]
            raise DataError(f"bad message: missing {' and '.join(missing)} (keys: {sorted(m)})",
                            field=f"{path}[{i}]")
        if m["role"] not in ROLES:
            raise DataError(f"bad message role: {m['role']!r} (expected one of {', '.join(ROLES)})",
                            field=f"{path}[{i}].role")
        if not isinstance(m["content"], str):
            raise DataError(f"wrong type: expected string content, got {describe(m['content'])}"
                            " (multimodal content parts are not supported)",
                            field=f"{path}[{i}].content")


def messages(value: Any, path: str) -> tuple[dict, ...]:
    """Checked copy of a message list (each message a fresh dict, so records share nothing)."""
    check_messages(value, path)
    return tuple(dict(m) for m in value)


def canonical(pair: PreferencePair) -> dict:
    """The record's content as plain JSON-able data (for hashing and export); `id` excluded."""
    return {"prompt": [dict(m) for m in pair.prompt], "chosen": pair.chosen,
            "rejected": pair.rejected, "extra": pair.extra}
