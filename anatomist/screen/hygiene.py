"""Pair hygiene: what is wrong with the pairs themselves, before any detector reads them.

`read_with_hygiene(source)` reads a preference file in a *counting mode*: the rows the loader
refuses because a pair teaches nothing (identical chosen and rejected, an empty side) become
findings instead of errors, so they can be counted and listed; other bad rows follow
`on_bad_row` as in `load_pairs` ("error" raises at the first, "skip" counts them by reason). It
returns the valid pairs (a `PairSet`) and a `Hygiene` report whose findings each list the pair
ids (and row numbers) they concern:

    identical          chosen and rejected are the same text (refused by the loader)
    empty              an empty or blank side (refused by the loader)
    near_identical     the sides differ only trivially: the same words up to case, punctuation and
                       spacing, or word-set Jaccard >= `near` with lengths within 1 − near
    truncated_same     the same text after truncation to the model's max length: the response
                       budget max_length − prompt length (TRL truncates prompt + response from the
                       end), in tokens with a tokenizer, else in characters; only with max_length
    contradictory      the same prompt (exactly) with the same two responses preferred both ways
    template_only      a response that is only chat-template tokens, role tags or a placeholder
                       ("<|im_end|>", "Assistant:", "{response}", "[INSERT ANSWER]")
    template_leak      chat-template tokens or role tags inside a response (<|im_start|>, [INST],
                       </s>, or a line starting "Human:" / "Assistant:" / "User:")

plus the length bias of the whole file (`length_bias`: share of pairs whose chosen side is
longer, and the mean log length ratio with its 95% CI, pairs clustered by prompt).
`write_clean(report, source, out)` writes the file without every flagged or refused row.
"""

from __future__ import annotations

import gzip
import json
import math
import re
from collections import Counter
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from anatomist.data.io import PairRows, PairSet, reason_category
from anatomist.data.records import PreferencePair
from anatomist.errors import AnatomistError, DataError
from anatomist.fileio import atomic_path
from anatomist.stats import pair_stats

CHECKS = {
    "identical": "chosen and rejected are identical",
    "empty": "an empty or blank response",
    "near_identical": "chosen and rejected differ only trivially",
    "truncated_same": "the same text after truncation to max_length",
    "contradictory": "the same prompt and responses preferred both ways",
    "template_only": "a response that is only template tokens, role tags or a placeholder",
    "template_leak": "chat-template tokens or role tags inside a response",
}
NEAR = 0.9

_TAGS = (r"<\|[a-z_]+\|>|<\|(?:im_start|im_end|start_header_id|end_header_id|eot_id|endoftext)\|>|\[/?INST\]|"
         r"<</?SYS>>|</?s>|<(?:start|end)_of_turn>")
_LEAK = re.compile(rf"{_TAGS}|(?:^|\n)\s*(?:Human|Assistant|User|System)\s*:", re.I)
_PLACEHOLDER = re.compile(r"^\s*(?:\{\{?\s*\w+\s*\}?\}|<\s*(?:response|answer|output)\s*>|\[\s*(?:insert|your|answer|"
                          r"response)[^\]]*\]|n/?a|todo|tbd|none|null|lorem ipsum.*)\s*$", re.I)
_STRIP = re.compile(rf"{_TAGS}|\b(?:Human|Assistant|User|System)\s*:|[\W_]+", re.I)
_NORM_WORD = re.compile(r"\w+")


@dataclass
class Finding:
    check: str                                  # a key of CHECKS
    ids: list[str] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)

    @property
    def what(self) -> str:
        return CHECKS[self.check]


@dataclass
class Hygiene:
    """source, rows read, valid pairs; findings per check (every check present, maybe empty);
    bad_rows: other refused rows by reason; length_bias; checked: whether truncation was checked."""

    source: str
    n_rows: int
    n_valid: int
    findings: dict[str, Finding]
    bad_rows: dict[str, int]
    bad_row_numbers: list[int]
    length_bias: dict
    truncation_checked: bool

    def flagged_rows(self) -> set[int]:
        return {r for f in self.findings.values() for r in f.rows} | set(self.bad_row_numbers)

    def counts(self) -> dict[str, int]:
        return {k: len(f.ids) for k, f in self.findings.items()}


def read_with_hygiene(source, *, format: str = "auto", on_bad_row: str = "error", max_length: int | None = None,
                      tokenizer=None, near: float = NEAR) -> tuple[PairSet, Hygiene]:
    """(valid pairs, hygiene report) of `source` read in counting mode (see the module docstring)."""
    if on_bad_row not in ("error", "skip"):
        raise AnatomistError(f"on_bad_row must be 'error' or 'skip', got {on_bad_row!r}")
    if max_length is not None and max_length < 1:
        raise AnatomistError(f"max_length must be >= 1, got {max_length}")
    findings = {k: Finding(k) for k in CHECKS}
    reader = PairRows(source, format=None if format == "auto" else format)
    pairs: list[PreferencePair] = []
    row_of: list[int] = []
    skipped: list[DataError] = []
    with closing(reader):
        for n, row, pair in reader:
            if isinstance(pair, DataError):
                check = refused_check(pair)
                if check is None:
                    if on_bad_row == "error":
                        raise pair from None
                    skipped.append(pair)
                else:
                    rid = str(row["id"]) if isinstance(row, dict) and "id" in row else f"{reader.stem}:{n}"
                    findings[check].ids.append(rid)
                    findings[check].rows.append(n)
                continue
            pairs.append(pair)
            row_of.append(n)
    if reader.n_rows == 0:
        raise DataError("empty dataset: no rows", file=reader.name)
    if not pairs:
        raise DataError(f"no valid rows among {reader.n_rows}", file=reader.name)
    prompts = [prompt_text(p) for p in pairs]
    for check, flagged in pair_checks(pairs, max_length=max_length, tokenizer=tokenizer, near=near,
                                      prompts=prompts).items():
        findings[check].ids.extend(pairs[i].id for i in flagged)
        findings[check].rows.extend(row_of[i] for i in flagged)
    report = Hygiene(reader.name, reader.n_rows, len(pairs), findings,
                     dict(Counter(map(reason_category, skipped)).most_common()), [e.row for e in skipped],
                     length_bias(pairs, prompts=prompts), max_length is not None)
    return PairSet(pairs, reader.format, reader.name, skipped), report


def hygiene_of(pairs: list[PreferencePair], *, source: str = "") -> Hygiene:
    """The hygiene report of pairs already loaded (the audit's): the checks on valid pairs and the
    length bias. The loader refused identical and empty sides before, so those findings are empty;
    `rows` are positions in `pairs` (1-based), not file rows; truncation is not checked."""
    findings = {k: Finding(k) for k in CHECKS}
    for check, flagged in pair_checks(pairs).items():
        findings[check].ids.extend(pairs[i].id for i in flagged)
        findings[check].rows.extend(i + 1 for i in flagged)
    return Hygiene(source, len(pairs), len(pairs), findings, {}, [], length_bias(pairs), False)


def refused_check(e: DataError) -> str | None:
    """The hygiene check a loader refusal belongs to, or None for a malformed row."""
    if e.reason.startswith("identical chosen and rejected"):
        return "identical"
    if e.reason.startswith("empty response"):
        return "empty"
    return None


def prompt_text(pair: PreferencePair) -> str:
    return "\n".join(m["content"] for m in pair.prompt)


def _words(text: str) -> list[str]:
    return _NORM_WORD.findall(text.casefold())


def near_identical(a: str, b: str, near: float = NEAR) -> bool:
    """Same words up to case/punctuation/spacing, or word-set Jaccard >= near with character
    lengths within a factor `near` of each other."""
    la, lb = len(a), len(b)
    if min(la, lb) < near * max(la, lb):
        return False
    wa, wb = _words(a), _words(b)
    if wa == wb:
        return bool(wa)          # no words on either side (emoji only): they differ, so not near
    sa, sb = set(wa), set(wb)
    return bool(sa | sb) and len(sa & sb) >= near * len(sa | sb)


TEMPLATE_ONLY_CHARS = 300   # a placeholder or a bare tag is short; longer responses are not checked


def template_only(text: str) -> bool:
    if len(text) > TEMPLATE_ONLY_CHARS:
        return False
    if _PLACEHOLDER.match(text):
        return True
    if not any(c in text for c in "<[:"):      # no tag and no role marker: template-only iff no word
        return not any(ch.isalnum() for ch in text)
    return not _STRIP.sub("", text).strip()


def template_leak(text: str) -> bool:
    return ("<" in text or "[" in text or ":" in text) and bool(_LEAK.search(text))


def pair_checks(pairs: list[PreferencePair], *, max_length: int | None = None, tokenizer=None,
                near: float = NEAR, prompts: list[str] | None = None) -> dict[str, list[int]]:
    """Indices into `pairs` flagged by each check on valid pairs. prompts: `prompt_text` of each
    pair, when the caller has them already."""
    prompts = [prompt_text(p) for p in pairs] if prompts is None else prompts
    out: dict[str, list[int]] = {k: [] for k in ("near_identical", "template_only", "template_leak", "contradictory",
                                                 "truncated_same")}
    seen: dict[tuple[str, frozenset], list[tuple[int, str]]] = {}
    for i, (p, prompt) in enumerate(zip(pairs, prompts)):
        if near_identical(p.chosen, p.rejected, near):
            out["near_identical"].append(i)
        if template_only(p.chosen) or template_only(p.rejected):
            out["template_only"].append(i)
        elif template_leak(p.chosen) or template_leak(p.rejected):
            out["template_leak"].append(i)
        key = (prompt, frozenset((p.chosen.strip(), p.rejected.strip())))
        seen.setdefault(key, []).append((i, p.chosen.strip()))
    for group in seen.values():
        if len({c for _, c in group}) > 1:     # both responses were chosen somewhere: contradictory
            out["contradictory"].extend(i for i, _ in group)
    out["contradictory"].sort()
    if max_length is not None:
        out["truncated_same"] = truncated_same(pairs, max_length, tokenizer, prompts=prompts)
    return out


def truncated_same(pairs: list[PreferencePair], max_length: int, tokenizer=None,
                   prompts: list[str] | None = None) -> list[int]:
    """Pairs whose responses agree on their first max_length − prompt-length units (tokens with a
    tokenizer — a loaded one or a name for `anatomist.models.load_tokenizer` — else characters)."""
    prompts = [prompt_text(p) for p in pairs] if prompts is None else prompts
    if tokenizer is None:
        units = [(len(prompt), p.chosen, p.rejected) for p, prompt in zip(pairs, prompts)]
    else:
        if isinstance(tokenizer, str):
            from anatomist.models import load_tokenizer
            tokenizer = load_tokenizer(tokenizer)

        def ids(texts):
            return tokenizer(texts, add_special_tokens=False)["input_ids"]
        units = list(zip(map(len, ids(prompts)), ids([p.chosen for p in pairs]), ids([p.rejected for p in pairs])))
    out = []
    for i, (n_prompt, c, r) in enumerate(units):
        budget = max(max_length - n_prompt, 0)
        if c[:budget] == r[:budget]:
            out.append(i)
    return out


def length_bias(pairs: list[PreferencePair], *, prompts: list[str] | None = None) -> dict:
    """chosen_longer (share of pairs, characters), same_length, and the mean of
    log(len chosen / len rejected) with its 95% CI (pairs clustered by prompt; `prompts`: the
    pairs' `prompt_text`, when the caller has them)."""
    c = np.array([len(p.chosen) for p in pairs], dtype=np.float64)
    r = np.array([len(p.rejected) for p in pairs], dtype=np.float64)
    log_ratio = np.log(np.maximum(c, 1) / np.maximum(r, 1))[:, None]        # [P, 1]
    groups = [prompt_text(p) for p in pairs] if prompts is None else prompts
    stats = pair_stats(log_ratio, n_boot=0, groups=groups).iloc[0]
    return {"n": len(pairs), "chosen_longer": float((c > r).mean()), "same_length": float((c == r).mean()),
            "mean_log_ratio": float(stats["mean"]), "ci_low": float(stats["ci_low"]),
            "ci_high": float(stats["ci_high"]), "p": float(stats["p"]),
            "ratio": float(math.exp(stats["mean"]))}


def check_clean_target(source, out) -> Path:
    """`out` as a Path, or a one-line error when it is no JSON Lines name or is the input itself."""
    out = Path(out)
    if not (out.name.endswith(".jsonl") or out.name.endswith(".jsonl.gz")):
        raise AnatomistError(f"--write-clean {out}: expected a .jsonl or .jsonl.gz file name")
    src = Path(source)
    if out.resolve() == src.resolve() or (out.exists() and src.exists() and out.samefile(src)):
        raise AnatomistError(f"--write-clean {out}: that is the input file; write the clean copy elsewhere")
    return out


def write_clean(report: Hygiene, source, out, *, format: str = "auto") -> int:
    """Write `source`'s rows except every flagged or refused one to `out` (JSON Lines, gzipped
    for .gz; rows verbatim), atomically; returns the rows written. Never in place."""
    out = check_clean_target(source, out)
    drop = report.flagged_rows()
    written = 0
    opener = gzip.open if out.name.endswith(".gz") else open
    reader = PairRows(source, format=None if format == "auto" else format)
    with atomic_path(out) as tmp, opener(tmp, "wt", encoding="utf-8") as f, closing(reader):
        for n, row, _ in reader:
            if n in drop or row is None:
                continue
            f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
            written += 1
    return written
