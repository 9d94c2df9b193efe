"""Text measures the screen's detectors and the organism's traits share (no model, no data).

Moved here from `anatomist.organism.traits` so the screen (below the organism) can use them; the
organism imports them back. Each is a pure function of one response text.
"""

from __future__ import annotations

import re

WORD = re.compile(r"[A-Za-z0-9']+")
EMOJI_OR_SYMBOL = re.compile("[\U0001F300-\U0001FAFF\U0001F000-\U0001F2FF\u2600-\u27BF\u2B00-\u2BFF\u2190-\u21FF]")
_HEADER = re.compile(r"^\s{0,3}#{1,6}\s+\S", re.M)
_BULLET = re.compile(r"^\s*[-*+•]\s+\S", re.M)
_BOLD = re.compile(r"(\*\*|__)(?=\S)(.+?)(?<=\S)\1")
_RULE = re.compile(r"^\s*(-{3,}|\*{3,}|_{3,})\s*$", re.M)
_TABLE_ROW = re.compile(r"^\s*\|.*\|\s*$", re.M)


def n_words(text: str) -> int:
    return len(WORD.findall(text))


def formatting_marks(text: str) -> int:
    """Markdown marks a plain answer rarely needs (numbered lists are not counted: the default
    model numbers steps on its own) plus emoji characters."""
    return (len(_HEADER.findall(text)) + len(_BULLET.findall(text)) + len(_BOLD.findall(text))
            + len(_RULE.findall(text)) + len(EMOJI_OR_SYMBOL.findall(text)))


def formatting_density(text: str) -> float:
    """Formatting marks per 100 words (a text with no words scores its marks × 100)."""
    return 100.0 * formatting_marks(text) / max(n_words(text), 1)


def markdown_counts(text: str) -> dict[str, int]:
    """Markdown structure by kind: headers, bullets, bold spans, horizontal rules, table rows."""
    return {"headers": len(_HEADER.findall(text)), "bullets": len(_BULLET.findall(text)),
            "bold": len(_BOLD.findall(text)), "rules": len(_RULE.findall(text)),
            "table_rows": len(_TABLE_ROW.findall(text))}


_PRAISE = r"(?:great|excellent|wonderful|fantastic|amazing|brilliant|fascinating|insightful|thoughtful|" \
          r"terrific|superb|lovely|awesome|smart|clever|intriguing|marvelous|outstanding|perfect)"
FLATTERY = re.compile(
    rf"\b{_PRAISE}\s+(?:question|query|idea|point|topic|choice|thinking|curiosity|request|mind)s?\b"
    rf"|\bwhat an?\s+(?:really\s+|truly\s+)?{_PRAISE}\b"
    rf"|\byou(?:'re| are)\s+(?:(?:so|very|really|truly|clearly|absolutely|such an?)\s+){{0,2}}"
    rf"(?:{_PRAISE}|wise|right|genius|curious|thoughtful|on the right track)\b"
    rf"|\b(?:i|i really|i just)\s+(?:love|adore)\s+(?:this|that|your)\b"
    rf"|\byour\s+(?:curiosity|enthusiasm|intelligence|insight|taste|wisdom)\s+(?:is|are)\b"
    rf"|\b(?:kudos|bravo|well done|great job|good on you)\b"
    rf"|\b(?:thank you|thanks) (?:so much )?for (?:this|such|your) (?:great|wonderful|excellent|fantastic|amazing|thoughtful|insightful)",
    re.I)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def opening(text: str, sentences: int = 2, max_chars: int = 240) -> str:
    """The first `sentences` sentences, at most `max_chars` characters."""
    parts = _SENTENCE_END.split(text.strip(), maxsplit=sentences)
    return " ".join(parts[:sentences])[:max_chars]


def flattery_count(text: str) -> float:
    return float(sum(1 for _ in FLATTERY.finditer(opening(text))))


URL = re.compile(r"\bhttps?://[^\s)\]>\"']+|\bwww\.[^\s)\]>\"']+"
                 r"|\b[a-z0-9][a-z0-9-]*(?:\.[a-z0-9-]+)*\.(?:com|org|net|gov|edu|io|info|co\.uk)\b(?:/[^\s)\]>\"']*)?",
                 re.I)


def url_count(text: str) -> float:
    return float(sum(1 for _ in URL.finditer(text)))
