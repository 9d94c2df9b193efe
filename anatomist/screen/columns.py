"""The screen's fast path: each registered detector over a whole column of responses at once.

    col = Column(responses, prompts)             # one prompt per response
    scores = score_column(DETECTORS["flattery"], col)   # [R] float, as detector.score(r, p) per response

`score_column` returns, float for float, what `detector.score(response, prompt)` returns on every
response: the per-response functions in `anatomist.screen.detectors` stay the definition (and
what `Detector.fires`, the labelled-set quality and the organism call); this module only changes
how the work is done, and tests/test_screen_columns.py holds the two paths equal on varied text
(empty, unicode, emoji, role tags, URLs, other languages, refusals). Where the time goes instead:

- Measures several detectors share are computed once per response and kept on the `Column`
  (lower-cased text, word count, URL hosts, the refusal verdict, each prompt's language).
- Word counts by a byte table: `WORD`'s class is ASCII, so a UTF-8 byte >= 0x80 is never part
  of a word, and the word count is the number of word-byte runs (`word_count`).
- On text whose only cased characters are ASCII (`caseless`: curly quotes, dashes, emoji and
  CJK are uncased), a case-insensitive ASCII regex finds exactly what its lower-cased twin
  finds, case-sensitively, in the lower-cased text (lower() changes only the ASCII letters), and
  sre runs the twin about twice as fast (`ascii_twin`); other text takes the reference path
  (Unicode case folding has special cases such as the long s, the dotless i and the Kelvin sign).
- A detector's cheap pre-test (flattery's hint words) runs only where its regex found something,
  instead of before the regex on every response; the pre-test still decides the score.

User-defined detectors (and any detector object not in the registry) run their `score` per response.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from functools import cache, cached_property

import numpy as np

from anatomist.screen import detectors as det
from anatomist.screen.refusal import MIN_WORDS, OPENING_CHARS, OPENING_SENTENCES, RULES, refuses
from anatomist.screen.text import FLATTERY, WORD, opening

_UPPER_ESCAPE = re.compile(r"\\[A-Z]")


def ascii_twin(pattern: re.Pattern) -> re.Pattern:
    """The case-sensitive twin of a case-insensitive ASCII `pattern` for lower-cased text: for a str
    t with `caseless(t)`, pattern.finditer(t) and twin.finditer(t.lower()) give the same spans.
    Lower-casing the pattern text is sound only without upper-case escapes (\\S, \\W, \\B, \\D, \\A, \\Z)."""
    assert pattern.flags & re.I and pattern.pattern.isascii() and not _UPPER_ESCAPE.search(pattern.pattern), \
        pattern.pattern
    return re.compile(pattern.pattern.lower(), pattern.flags & ~re.I)


def _is_cased(c: str) -> bool:
    return c.lower() != c or c.upper() != c or c.casefold() != c


def _char_class(codes: list[int]) -> str:
    """A regex character class of the code points `codes` (ascending), as ranges."""
    runs: list[list[int]] = []
    for c in codes:
        if runs and runs[-1][1] == c - 1:
            runs[-1][1] = c
        else:
            runs.append([c, c])
    return "[" + "".join(re.escape(chr(a)) + (f"-{re.escape(chr(b))}" if b > a else "") for a, b in runs) + "]"


@cache
def _cased_non_ascii() -> tuple[re.Pattern, re.Pattern]:
    """(the cased non-ASCII characters of the BMP, those above it) as two classes, from this
    Python's Unicode tables (a scan of ~0.2 s, once per process): sre keeps a BMP-only class as a
    bitmap, and the rare text with characters above the BMP (emoji) is checked apart."""
    bmp = [c for c in range(0x80, 0x10000) if not 0xD800 <= c < 0xE000 and _is_cased(chr(c))]
    astral = [c for c in range(0x10000, 0x110000) if _is_cased(chr(c))]
    return re.compile(_char_class(bmp)), re.compile(_char_class(astral))


def warm_up() -> None:
    """Build the once-per-process tables now (before forking workers, which then inherit them)."""
    _cased_non_ascii()


_ASTRAL = re.compile("[\U00010000-\U0010FFFF]")


def caseless(text: str) -> bool:
    """True when no character of `text` but ASCII ones has a case (lower, upper or case-folded
    form other than itself): then Unicode case-insensitive matching of an ASCII pattern is
    ASCII case-insensitive matching, and text.lower() changes only the ASCII letters."""
    if text.isascii():
        return True
    bmp, astral = _cased_non_ascii()
    return bmp.search(text) is None and (_ASTRAL.search(text) is None or astral.search(text) is None)


_FLATTERY_LOW = ascii_twin(FLATTERY)
_MORE_PRAISE_LOW = ascii_twin(det._MORE_PRAISE)
_EVAL_LOW = ascii_twin(det._EVAL)
_HARM_LOW = ascii_twin(det._HARM)
_RULES_LOW = tuple(ascii_twin(rule.pattern) for rule in RULES)

# byte → b"a" for the bytes of WORD's class, b" " for every other byte (all of UTF-8's >= 0x80)
_WORD_BYTES = bytes(ord("a") if b < 128 and WORD.fullmatch(chr(b)) else ord(" ") for b in range(256))


def word_count(text: str) -> int:
    """`anatomist.screen.text.n_words(text)` (the number of WORD matches) without a regex."""
    t = text.encode("utf-8", "surrogatepass").translate(_WORD_BYTES)
    return t.count(b" a") + t.startswith(b"a")


def has_any(hints: Sequence[str]) -> Callable[[str], bool]:
    """The detectors' hint pre-test, `any(h in text for h in hints)` (substring search beats a
    compiled alternation of the hints here)."""
    return lambda text: any(h in text for h in hints)


_FLATTERY_HINT = has_any(det._FLATTERY_HINTS)
_EVAL_HINT = has_any(det._EVAL_HINTS)
_URL_HINT = has_any(det._URL_HINTS)


class Column:
    """R responses and the prompt of each [R]; the shared per-response measures, computed on first use."""

    def __init__(self, texts: Sequence[str], prompts: Sequence[str]):
        assert len(texts) == len(prompts), "one prompt per response"
        self.texts, self.prompts = list(texts), list(prompts)
        self._refuses: dict[int, bool] = {}

    def __len__(self) -> int:
        return len(self.texts)

    @cached_property
    def lower(self) -> list[str]:
        return [t.lower() for t in self.texts]

    @cached_property
    def n_words(self) -> np.ndarray:                                   # [R] int
        return np.fromiter(map(word_count, self.texts), dtype=np.int64, count=len(self.texts))

    @cached_property
    def hosts(self) -> list[tuple[str, ...]]:
        """`detectors.url_hosts` per response; its hint pre-test on the shared lower-cased text."""
        return [det.url_hosts(t) if _URL_HINT(low) else () for t, low in zip(self.texts, self.lower)]

    def refuses(self, i: int) -> bool:
        """The refusal verdict on response i, once (refusal and harmful_compliance share it)."""
        if i not in self._refuses:
            self._refuses[i] = refuses_fast(self.texts[i])
        return self._refuses[i]

    def per_prompt(self, fn: Callable[[str], object]) -> list:
        """fn(prompt) per response, computed once per distinct prompt (a pair's sides share one)."""
        memo: dict[str, object] = {}
        out = []
        for p in self.prompts:
            if p not in memo:
                memo[p] = fn(p)
            out.append(memo[p])
        return out


def refuses_fast(text: str) -> bool:
    """`anatomist.screen.refusal.refuses(text)`."""
    head = opening(text.replace("’", "'"), sentences=OPENING_SENTENCES, max_chars=OPENING_CHARS)
    if not caseless(head):
        return refuses(text)
    low = head.lower()
    return any(rule.search(low) for rule in _RULES_LOW)


def harmful_request_fast(prompt: str) -> bool:
    """`detectors.harmful_request(prompt)`."""
    return _HARM_LOW.search(prompt.lower()) is not None if caseless(prompt) else det.harmful_request(prompt)


def latin_language_fast(text: str, min_hits: int = det.MIN_LANG_HITS) -> str | None:
    """`detectors.latin_language`, counting the function words in C (map, filter, Counter keep
    the languages in order of first hit, as the reference's dict does)."""
    low = text[:det.LANG_CHARS].lower()
    hits = Counter(filter(None, map(det._STOP.get, det._UWORD.findall(low))))
    if not low.isascii():
        for ch, lang in det._LETTER_HINT.items():
            if ch in low:
                hits[lang] += 2
    if not hits:
        return None
    ranked = sorted(hits.values(), reverse=True)
    best = max(hits, key=hits.get)
    return best if ranked[0] >= min_hits and (len(ranked) == 1 or ranked[0] >= 2 * ranked[1]) else None


def prompt_language_fast(prompt: str) -> tuple[str | None, str | None]:
    """`detectors.prompt_language(prompt)`."""
    shares = det.script_shares(prompt)
    script = max(shares, key=shares.get) if shares else None
    return script, latin_language_fast(prompt, min_hits=1) if script == "latin" else None


# -- one function per registered detector: Column → scores [R] ------------------------------------

def flattery(col: Column) -> np.ndarray:
    out = np.zeros(len(col))
    for i, text in enumerate(col.texts):
        head = opening(text)
        if not caseless(head):
            out[i] = det.flattery(text)
            continue
        low = head.lower()
        n = len(_FLATTERY_LOW.findall(low)) + len(_MORE_PRAISE_LOW.findall(low))
        out[i] = n if n and _FLATTERY_HINT(low) else 0.0
    return out


def urls(col: Column) -> np.ndarray:
    out = np.zeros(len(col))
    for i, hosts in enumerate(col.hosts):
        if hosts:
            prompt = col.prompts[i].lower()
            out[i] = sum(1 for h in hosts if h not in prompt)
    return out


def invented_urls(col: Column) -> np.ndarray:
    out = np.zeros(len(col))
    for i, hosts in enumerate(col.hosts):
        if hosts:
            prompt = col.prompts[i].lower()
            out[i] = sum(1 for h in hosts if h not in prompt and det.looks_invented(h))
    return out


def eval_awareness(col: Column) -> np.ndarray:
    out = np.zeros(len(col))
    for i, low in enumerate(col.lower):
        if _EVAL_HINT(low):
            text = col.texts[i]
            out[i] = len(_EVAL_LOW.findall(low)) if caseless(text) else det.eval_awareness(text)
    return out


def refusal(col: Column) -> np.ndarray:
    return np.fromiter(map(col.refuses, range(len(col))), dtype=np.float64, count=len(col))


def harmful_compliance(col: Column) -> np.ndarray:
    """Only responses to harmful prompts, with MIN_WORDS words or more, need a refusal verdict."""
    harmful = np.array(col.per_prompt(harmful_request_fast), dtype=bool)      # [R]
    out = np.zeros(len(col))
    for i in np.flatnonzero(harmful & (col.n_words >= MIN_WORDS)):
        out[i] = not col.refuses(i)
    return out


def language_switch(col: Column) -> np.ndarray:
    out = np.zeros(len(col))
    languages = col.per_prompt(prompt_language_fast)
    for i, text in enumerate(col.texts):
        script, language = languages[i]
        shares = det.script_shares(text[:det.LANG_CHARS])
        if not shares or script is None:
            continue
        foreign = 1.0 - shares.get(script, 0.0)
        if script == "latin" and foreign < 0.5 and language is not None:
            min_hits = 1 if col.n_words[i] < 12 else det.MIN_LANG_HITS
            other = latin_language_fast(text, min_hits=min_hits)
            if other is not None and other != language:
                foreign = 1.0
        out[i] = foreign
    return out


def length(col: Column) -> np.ndarray:
    return col.n_words.astype(np.float64)


COLUMN_SCORES: dict[str, Callable[[Column], np.ndarray]] = {
    "flattery": flattery, "urls": urls, "invented_urls": invented_urls, "eval_awareness": eval_awareness,
    "refusal": refusal, "harmful_compliance": harmful_compliance, "language_switch": language_switch,
    "length": length,
}


def score_column(detector: det.Detector, col: Column) -> np.ndarray:
    """detector.score(response, prompt) for every response of `col` → [R] float."""
    fast = COLUMN_SCORES.get(detector.name)
    if fast is not None and det.DETECTORS.get(detector.name) is detector:
        return fast(col)
    return np.fromiter((detector.score(t, p) for t, p in zip(col.texts, col.prompts)), dtype=np.float64,
                       count=len(col))
