"""Preference-data formats: a registry of converters (row dict → PreferencePair) and detection.

A converter is a pure function `convert(row, default_id) -> PreferencePair`; it raises a
`DataError` naming the field (the caller adds file and row). `default_id` is used when the row
has no "id" column. Every column a format does not consume goes to `PreferencePair.extra`.

Formats (`FORMATS`, keyed by the name `format=` / `--format` takes):
- standard        TRL standard: prompt, chosen, rejected are strings.
- conversational  TRL conversational: chosen, rejected (and prompt, if present) are message
                  lists; without a prompt (TRL's implicit prompt) the two conversations are split
                  at their longest common message prefix.
- hh              Anthropic HH-RLHF: chosen, rejected are "\\n\\nHuman: …\\n\\nAssistant: …"
                  transcripts sharing every turn but the last Assistant turn.
- sharegpt        LLaMA-Factory DPO: conversations [{from, value}], chosen / rejected {from, value}.

`detect_format(row)` picks one from the first row's columns and value types.
"""

from __future__ import annotations

import re
from typing import Callable

from anatomist.data.records import PreferencePair, describe, messages, require, type_name
from anatomist.errors import DataError

Converter = Callable[[dict, str], PreferencePair]


class FormatError(DataError):
    """The dataset's format cannot be detected: a property of the whole file, never skipped."""

IMPLICIT_PROMPT = ('implicit prompt: "chosen" and "rejected" are plain strings with no "prompt" column, '
                   'so the prompt cannot be recovered; add a "prompt" column (TRL standard), use message '
                   'lists (TRL conversational) or HH transcripts ("\\n\\nHuman: …\\n\\nAssistant: …")')


def _id(row: dict, default_id: str) -> str:
    if "id" not in row:
        return default_id
    value = require(row, "id", (str, int), "a string or an int")
    if not str(value).strip():
        raise DataError(f"empty id: {value!r}", field="id")
    return str(value)


def _extra(row: dict, used: tuple[str, ...]) -> dict:
    return {k: v for k, v in row.items() if k not in used and k != "id"}


# --- standard ---------------------------------------------------------------------------------

def standard(row: dict, default_id: str) -> PreferencePair:
    """TRL standard: {"prompt": str, "chosen": str, "rejected": str}; prompt → one user message.

    Texts are kept verbatim (leading spaces in TRL completions are deliberate)."""
    if "prompt" not in row and isinstance(row.get("chosen"), str):
        raise DataError(IMPLICIT_PROMPT, field="prompt")
    prompt = require(row, "prompt", str, "a string")
    chosen = require(row, "chosen", str, "a string")
    rejected = require(row, "rejected", str, "a string")
    if not prompt.strip():
        raise DataError(f"empty prompt: {prompt!r}", field="prompt")
    return PreferencePair(_id(row, default_id), ({"role": "user", "content": prompt},),
                          chosen, rejected, _extra(row, ("prompt", "chosen", "rejected")))


# --- conversational ---------------------------------------------------------------------------

def _common_prefix(a: tuple[dict, ...], b: tuple[dict, ...]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _response(tail: tuple[dict, ...], name: str, offset: int) -> str:
    """The text of the single assistant message a response list must be (after the prompt)."""
    if len(tail) != 1:
        roles = ", ".join(m["role"] for m in tail) or "none"
        where = f" after the {offset} shared prompt messages" if offset else ""
        raise DataError(f"wrong shape: expected exactly one assistant message{where}, got "
                        f"{len(tail)} (roles: {roles})", field=name)
    if tail[0]["role"] != "assistant":
        raise DataError(f"bad message role: the response must be 'assistant', got {tail[0]['role']!r}",
                        field=f"{name}[{offset}].role")
    return tail[0]["content"]


def conversational(row: dict, default_id: str) -> PreferencePair:
    """TRL conversational: chosen / rejected are message lists, prompt too when present.

    Explicit prompt: chosen and rejected must each be one assistant message.
    Implicit prompt (no "prompt" column): chosen and rejected are whole conversations; the
    prompt is their longest common message prefix and what follows it must be exactly one
    assistant message on each side.
    """
    chosen = messages(require(row, "chosen", list, "a list of messages"), "chosen")
    rejected = messages(require(row, "rejected", list, "a list of messages"), "rejected")
    if "prompt" in row:
        prompt = messages(require(row, "prompt", list, "a list of messages"), "prompt")
        offset = 0
    else:
        offset = _common_prefix(chosen, rejected)
        if offset == len(chosen) == len(rejected):
            raise DataError("identical chosen and rejected: the conversations are equal", field="rejected")
        prompt = chosen[:offset]
    return PreferencePair(_id(row, default_id), prompt,
                          _response(chosen[offset:], "chosen", offset),
                          _response(rejected[offset:], "rejected", offset),
                          _extra(row, ("prompt", "chosen", "rejected")))


# --- hh ---------------------------------------------------------------------------------------

# Turn markers only count at the start or after a blank line: real HH text contains "Human:"
# mid-turn (e.g. "...drag kings.  Human: Then how...", "Assistant: Human: So she..."), which is
# content the annotators saw, not a turn boundary.
_HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):")
_HH_ROLE = {"Human": "user", "Assistant": "assistant"}


def looks_like_transcript(text: str) -> bool:
    return bool(_HH_TURN.search(text)) and "Assistant:" in text


def parse_transcript(text: str, name: str) -> list[dict]:
    """HH transcript → messages with stripped content; the last one must be an Assistant turn."""
    parts = _HH_TURN.split(text)
    head, roles, contents = parts[0], parts[1::2], parts[2::2]
    if not roles:
        raise DataError('not an HH transcript: no "\\n\\nHuman:" or "\\n\\nAssistant:" turns', field=name)
    if head.strip():
        raise DataError(f"not an HH transcript: text before the first turn: {head[:40]!r}", field=name)
    if roles[-1] != "Assistant":
        raise DataError(f"not an HH transcript: the last turn is {roles[-1]}, expected Assistant",
                        field=name)
    return [{"role": _HH_ROLE[r], "content": c.strip()} for r, c in zip(roles, contents)]


def hh(row: dict, default_id: str) -> PreferencePair:
    """Anthropic HH-RLHF: prompt = every turn before the final Assistant turn (which must be the
    same on both sides); chosen / rejected = the final Assistant turns, stripped.

    Consecutive turns of one role (a few real rows have two Assistant turns in a row) are kept
    as they are, not merged."""
    chosen = parse_transcript(require(row, "chosen", str, "a string"), "chosen")
    rejected = parse_transcript(require(row, "rejected", str, "a string"), "rejected")
    prompt, other = chosen[:-1], rejected[:-1]
    if prompt != other:
        turn = _common_prefix(tuple(prompt), tuple(other)) + 1
        raise DataError(f"prompt mismatch: the transcripts differ at turn {turn} before their final "
                        f"Assistant turn (chosen has {len(prompt)} prompt turns, rejected {len(other)})",
                        field="rejected")
    return PreferencePair(_id(row, default_id), tuple(prompt), chosen[-1]["content"],
                          rejected[-1]["content"], _extra(row, ("chosen", "rejected")))


# --- sharegpt ---------------------------------------------------------------------------------

_SHAREGPT_ROLE = {"human": "user", "gpt": "assistant", "system": "system"}


def _sharegpt_message(m, path: str, roles: dict[str, str]) -> dict:
    if not isinstance(m, dict):
        raise DataError(f"bad message: expected an object, got {describe(m)}", field=path)
    missing = [k for k in ("from", "value") if k not in m]
    if missing:
        raise DataError(f"bad message: missing {' and '.join(missing)} (keys: {sorted(m)})", field=path)
    if m["from"] not in roles:
        raise DataError(f"bad message role: {m['from']!r} (expected one of {', '.join(roles)})",
                        field=f"{path}.from")
    if not isinstance(m["value"], str):
        raise DataError(f"wrong type: expected a string, got {describe(m['value'])}", field=f"{path}.value")
    return {"role": roles[m["from"]], "content": m["value"]}


def sharegpt(row: dict, default_id: str) -> PreferencePair:
    """LLaMA-Factory DPO (ShareGPT style): conversations [{"from": "human"|"gpt"|"system",
    "value"}] is the prompt; chosen / rejected are {"from": "gpt", "value"}. Messages keep only
    role and content."""
    conversations = require(row, "conversations", list, "a list of {from, value} messages")
    prompt = tuple(_sharegpt_message(m, f"conversations[{i}]", _SHAREGPT_ROLE)
                   for i, m in enumerate(conversations))
    gpt = {"gpt": "assistant"}
    chosen = _sharegpt_message(require(row, "chosen", dict, "a {from, value} object"), "chosen", gpt)
    rejected = _sharegpt_message(require(row, "rejected", dict, "a {from, value} object"), "rejected", gpt)
    return PreferencePair(_id(row, default_id), prompt, chosen["content"], rejected["content"],
                          _extra(row, ("conversations", "chosen", "rejected")))


# --- registry and detection -------------------------------------------------------------------

FORMATS: dict[str, Converter] = {
    "standard": standard,
    "conversational": conversational,
    "hh": hh,
    "sharegpt": sharegpt,
}

# Decided from the first row. Rules look at columns first and at value types only where two
# formats share columns, so a later row of the wrong type gets the converter's precise error.
DETECTORS: dict[str, Callable[[dict], bool]] = {
    "standard": lambda r: {"prompt", "chosen", "rejected"} <= r.keys() and isinstance(r["prompt"], str),
    "conversational": lambda r: {"chosen", "rejected"} <= r.keys() and isinstance(r["chosen"], list)
                                and isinstance(r.get("prompt", []), list),
    "hh": lambda r: {"chosen", "rejected"} <= r.keys() and "prompt" not in r
                    and isinstance(r["chosen"], str) and looks_like_transcript(r["chosen"]),
    "sharegpt": lambda r: {"conversations", "chosen", "rejected"} <= r.keys(),
}

SHAPES: dict[str, str] = {
    "standard": "prompt, chosen, rejected: strings",
    "conversational": "chosen, rejected (and prompt): message lists",
    "hh": "chosen, rejected: Human/Assistant transcripts",
    "sharegpt": "conversations, chosen, rejected: {from, value}",
}
assert FORMATS.keys() == DETECTORS.keys() == SHAPES.keys()


def detect_format(row: dict) -> str:
    """The one format whose rule matches `row`, else a `FormatError` naming the columns seen."""
    matches = [name for name, rule in DETECTORS.items() if rule(row)]
    if len(matches) == 1:
        return matches[0]
    seen = ", ".join(f"{k} ({type_name(v)})" for k, v in row.items()) or "none"
    if matches:
        raise FormatError(f"ambiguous format: columns {seen} match {' and '.join(matches)}; "
                          "choose one with format= / --format")
    if {"chosen", "rejected"} <= row.keys() and "prompt" not in row and isinstance(row["chosen"], str):
        raise FormatError(IMPLICIT_PROMPT, field="prompt")
    expected = "; ".join(f"{name} ({shape})" for name, shape in SHAPES.items())
    raise FormatError(f"unknown format: columns seen: {seen}; expected one of: {expected}")
