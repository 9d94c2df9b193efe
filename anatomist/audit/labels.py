"""Concept labels: a short text per concept cluster, scored by a held-out detection test.

For each cluster the runner supplies activating and non-activating contexts (responses with the
cluster's per-token activation). Each side is split, deterministically under the seed, into a
labelling part and a held-out part. The labeller writes a label from the labelling part only; the
label is then scored on a balanced, shuffled mix of held-out contexts: the labeller predicts from
the label alone which contexts activate, and `detection_acc` is the fraction it gets right
(0.5 = chance). A labeller that fails returns `text=None` and `status="failed: <reason>"` — never a
made-up label; a label whose detection failed is kept with `detection_acc=None` and
`status="failed: detection: <reason>"`.

Labellers (registry `LABELLERS`, one `--labeller` string each) have `name`,
`max_heldout_per_side` (None = no cap), `describe(activating, non_activating) -> (text, evidence)`
and `detect(text, mix) -> (predicted [bool], evidence)`; both raise `LabelFailure` to fail.
  offline  contrastive 1–2-grams near activation peaks vs. non-activating text (add-α log-odds,
           z-filtered); detection: a context is predicted activating iff it contains a label n-gram.
  openai   any OpenAI-compatible /chat/completions endpoint (wire in labels_llm.py); loopback only
           unless allow_remote=True.
Both see the same contexts and are scored by the same `label_one`, so their accuracies compare.

Contexts are made of readable units, not tokenizer pieces (`token_units`): a byte-level BPE splits
an emoji or a CJK character over several tokens whose single decodes are '\ufffd', and a Cyrillic
word over many one-letter tokens; decoding each unit's token-id span with the tokenizer gives the
characters and words a person reads, so n-gram labels spell them.

A person reads `concept_name`: the label where held-out detection trusts it, otherwise why not
and the top context.
"""

from __future__ import annotations

import math
import os
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from anatomist.audit.labels_llm import (LabelFailure, chat, check_endpoint, detection_messages, label_messages,
                                        one_line, parse_label, parse_numbers)
from anatomist.errors import AnatomistError
from anatomist.progress import progress_bar

__all__ = ["Context", "Label", "LABELLERS", "OfflineLabeller", "OpenAILabeller", "LabelFailure", "highlight",
           "render", "ngram_spans", "log_odds", "log_odds_z", "label_clusters", "token_units", "unit_context",
           "concept_name", "MIN_NAME_ACC"]


@dataclass(frozen=True)
class Context:
    tokens: tuple[str, ...]     # response units as display strings (leading spaces kept; `token_units`)
    acts: tuple[float, ...]     # the concept's activation per unit (>= 0, max over its tokens), same length
    record_id: str
    side: str                   # "chosen" | "rejected"

    def __post_init__(self):
        if len(self.tokens) != len(self.acts):
            raise ValueError(f"context {self.record_id}: {len(self.tokens)} tokens but {len(self.acts)} activations")

    @property
    def peak(self) -> float:
        return max(self.acts, default=0.0)


@dataclass(frozen=True)
class Label:
    text: str | None            # None when the labeller failed
    status: str                 # "ok" | "failed: <one-line reason>"
    labeller: str               # "offline" | "openai:<model>"
    detection_acc: float | None # held-out accuracy on a balanced mix; None if not scored
    n_heldout: int              # size of that mix (both sides together)
    evidence: tuple[str, ...]   # contrastive n-grams with log-odds, or the LLM's raw answers (truncated)


# ---------------------------------------------------------------- readable units

INCOMPLETE = "\ufffd"   # what a tokenizer decodes a partial UTF-8 character to


def _unspaced(ch: str) -> bool:
    # Scripts written without spaces (Han, kana, CJK punctuation): joining their runs into one
    # "word" would make a whole sentence one n-gram; each character group stays its own unit.
    o = ord(ch)
    return 0x2E80 <= o <= 0x9FFF or 0xF900 <= o <= 0xFAFF or 0xFF00 <= o <= 0xFFEF or 0x20000 <= o <= 0x3FFFF


def _word_char(ch: str) -> bool:
    return (ch.isalnum() or ch == "_" or unicodedata.category(ch).startswith("M")) and not _unspaced(ch)


APOSTROPHES = "'’"


def _continues(last: str, text: str, after: str) -> bool:
    """Whether piece `text` (followed by piece `after`) continues the word `last` ends with:
    letters on both sides with no space between, or a contraction ("don" + "’" + "t", "I" + "'m");
    a closing quote ("hi" + "'" + " ok") does not."""
    if _word_char(last[-1]):
        return _word_char(text[0]) or (text[0] in APOSTROPHES and (text[1:2] or after[:1]).isalpha())
    core = last.strip()
    return core[-1:] in tuple(APOSTROPHES) and len(core) > 1 and _word_char(core[-2]) and text[0].isalpha()


def _char_pieces(ids: Sequence[int], decode: Callable[[list[int]], str], max_tokens: int) -> list[tuple[int, int]]:
    """[first, last] token ranges that each decode to whole characters: a span whose decode ends in
    INCOMPLETE grows by one token, up to `max_tokens` (a 4-byte emoji can take 4 byte tokens);
    bytes that never complete stay single tokens."""
    out, i, n = [], 0, len(ids)
    while i < n:
        j = i
        while decode(list(ids[i:j + 1])).endswith(INCOMPLETE) and j + 1 < n and j - i + 1 < max_tokens:
            j += 1
        if decode(list(ids[i:j + 1])).endswith(INCOMPLETE):
            j = i
        out.append((i, j))
        i = j + 1
    return out


def token_units(ids: Sequence[int], decode: Callable[[list[int]], str], *, max_tokens: int = 8,
                max_chars: int = 24) -> list[tuple[int, int, str]]:
    """(first, last, text) of the readable units of a token-id sequence, in order, covering it.

    A unit is a run of whole characters: the token span is decoded as one (`decode`, e.g. the
    tokenizer's), so byte pieces become the emoji or letters they spell; pieces that continue a
    word (word character on both sides, no space between, not a CJK script) join it, so ' Спас'
    'и' 'бо' is one unit ' Спасибо', ' don' '’' 't' one unit ' don’t' (a unit grows while
    shorter than `max_chars`), and bare whitespace leads the unit after it. A piece's text is
    decode(previous + piece) minus decode(previous), which keeps the leading space that
    SentencePiece-style decoders drop from a span's first token.
    """
    pieces, prev = [], None                # (first, last, text) of whole-character token spans
    for a, b in _char_pieces(ids, decode, max_tokens):
        text = decode(list(ids[a:b + 1]))
        if prev is not None:
            before, both = decode(list(ids[prev[0]:prev[1] + 1])), decode(list(ids[prev[0]:b + 1]))
            if both.startswith(before) and not both.endswith(INCOMPLETE):
                text = both[len(before):]
        prev = (a, b)
        pieces.append((a, b, text))
    units: list[list] = []                # [first, last, text]
    for i, (a, b, text) in enumerate(pieces):
        last, after = units[-1][2] if units else "", pieces[i + 1][2] if i + 1 < len(pieces) else ""
        word = bool(text) and bool(last) and len(last.strip()) < max_chars and _continues(last, text, after)
        if word or (text.strip() and last and not last.strip()):
            units[-1][1], units[-1][2] = b, last + text
        else:
            units.append([a, b, text])
    return [(a, b, t) for a, b, t in units]


def unit_context(units: list[tuple[int, int, str]], acts: Sequence[float], record_id: str, side: str) -> Context:
    """A Context over readable units (`token_units`) from per-token activations acts [n_tokens]:
    each unit carries the largest activation of its tokens (its peak is the concept's there)."""
    acts = np.asarray(acts, dtype=np.float64)
    assert not units or units[-1][1] < len(acts), "units cover more tokens than there are activations"
    return Context(tuple(t for _, _, t in units), tuple(float(acts[a:b + 1].max()) for a, b, _ in units),
                   record_id, side)


# ---------------------------------------------------------------- snippets

def highlight(context: Context, max_tokens: int = 40) -> list[tuple[str, float]]:
    """The ≤ `max_tokens` consecutive (token, activation) pairs centred on the peak activation
    (shifted inward at the ends of the response); the start of the response if nothing fires."""
    n = len(context.tokens)
    peak = int(np.argmax(context.acts)) if n else 0
    start = max(0, min(peak - max_tokens // 2, n - max_tokens))
    return list(zip(context.tokens[start:start + max_tokens], context.acts[start:start + max_tokens]))


def render(pairs: list[tuple[str, float]], *, mark_frac: float = 0.5, marks: bool = True) -> str:
    """Join tokens into text, wrapping runs of tokens with activation ≥ mark_frac·peak in «»
    (leading whitespace stays outside the marks)."""
    peak = max((a for _, a in pairs), default=0.0)
    hot = [marks and peak > 0 and a >= mark_frac * peak for _, a in pairs]
    out = []
    for i, (tok, _) in enumerate(pairs):
        if hot[i] and (i == 0 or not hot[i - 1]):
            lead = tok[:len(tok) - len(tok.lstrip())]
            tok = lead + "«" + tok[len(lead):]
        out.append(tok)
        if hot[i] and (i + 1 == len(pairs) or not hot[i + 1]):
            out.append("»")
    return "".join(out)


# Below this held-out detection accuracy a label is not shown as the concept's name: on the usual
# 6 + 6 held-out mix, chance reaches 0.75 with p ≈ 0.07, and the stray n-grams of real audits
# ("in", "f, s") sit below it.
MIN_NAME_ACC = 0.75


def concept_name(text: str | None, status: str, detection_acc: float | None, top: Context | None, *,
                 min_acc: float = MIN_NAME_ACC, max_tokens: int = 8) -> str:
    """The name a person reads for a concept: its label where held-out detection reached
    `min_acc`; otherwise the top context's peak (`top`, «marked») and, in brackets, why there is
    no name (no label and the labeller's reason, low detection accuracy, too few contexts to score)."""
    scored = detection_acc is not None and detection_acc == detection_acc     # NaN: unscored
    if text and status == "ok" and scored and detection_acc >= min_acc:
        return text
    if text and status == "ok" and not scored:
        why = "label unscored: too few contexts to hold out"
    elif text and scored:
        why = f"label “{text}” detects only {detection_acc:.2f} < {min_acc:g}"
    elif text:
        why = f"label “{text}” unscored: {status.removeprefix('failed: ')}"
    else:
        why = "no label: " + (status.removeprefix("failed: ") if status.startswith("failed: ") else "none given")
    if top is None or not top.tokens:
        return f"[{why}; no activating context]"
    snippet = " ".join(render(highlight(top, max_tokens)).split())
    return f"“{snippet}” [{why}]"


# ---------------------------------------------------------------- offline labeller

_SPECIAL = re.compile(r"^<\|?[^<>]*\|?>$")  # <|im_end|>, <s>, </s>, <pad>


def _is_content(token: str) -> bool:
    # Letters and digits of any script, and symbols such as emoji (category So); never a lone
    # undecodable byte piece.
    t = token.strip()
    return (bool(t) and not _SPECIAL.match(t) and INCOMPLETE not in t
            and any(ch.isalnum() or unicodedata.category(ch) == "So" for ch in t))


def ngram_spans(tokens: tuple[str, ...]) -> list[tuple[int, int, str]]:
    """(first, last, text) of every unigram and bigram of content tokens (not pure punctuation,
    whitespace or special tokens). Text is the tokens concatenated as decoded (so subword pieces
    re-join: ' Par'+'is' → 'paris'), lower-cased, ’ as ', whitespace-collapsed; n-grams with a comma are
    dropped because labels join n-grams with ', '."""
    ok = [_is_content(t) for t in tokens]
    spans = []
    for i in range(len(tokens)):
        for j in (i, i + 1):
            if j < len(tokens) and ok[i] and ok[j]:
                g = " ".join("".join(tokens[i:j + 1]).lower().replace("’", "'").split())
                if "," not in g:
                    spans.append((i, j, g))
    return spans


def peak_counts(activating: list[Context], window: int = 2, peak_frac: float = 0.5) -> tuple[Counter, Counter]:
    """Activation-weighted n-gram counts near the peaks of activating contexts.

    Centres are the tokens with activation ≥ peak_frac·(context peak); an n-gram counts if it lies
    within ±`window` tokens of a centre, once per context span, with weight peak / mean peak (so
    strong contexts count more while the totals stay on the scale of plain counts).
    Returns (weighted counts, number of contexts containing each n-gram near a peak).
    """
    mean_peak = float(np.mean([c.peak for c in activating])) if activating else 0.0
    counts, support = Counter(), Counter()
    for c in activating:
        w = c.peak / mean_peak if mean_peak > 0 else 1.0
        centres = [i for i, a in enumerate(c.acts) if a >= peak_frac * c.peak]
        near = set()
        for a, b, g in ngram_spans(c.tokens):
            if any(a >= t - window and b <= t + window for t in centres):
                counts[g] += w
                near.add(g)
        support.update(near)
    return counts, support


def log_odds(y_a: dict[str, float], y_n: dict[str, float], alpha: float = 0.5) -> dict[str, float]:
    """Add-α smoothed log-odds ratio of each n-gram, activating (a) vs. non-activating (n):
        δ_g = log[(y_a,g + α) / (N_a − y_a,g + α)] − log[(y_n,g + α) / (N_n − y_n,g + α)],
    N = total count on that side. δ > 0: the n-gram is over-represented near peaks."""
    n_a, n_n = sum(y_a.values()), sum(y_n.values())
    return {g: math.log((y_a.get(g, 0) + alpha) / (n_a - y_a.get(g, 0) + alpha))
            - math.log((y_n.get(g, 0) + alpha) / (n_n - y_n.get(g, 0) + alpha))
            for g in set(y_a) | set(y_n)}


def log_odds_z(y_a: dict[str, float], y_n: dict[str, float], delta: dict[str, float],
               alpha: float = 0.5) -> dict[str, float]:
    """z = δ / sqrt(1/(y_a,g + α) + 1/(y_n,g + α)) (Monroe et al. 2008's variance approximation):
    separates a well-supported δ from a large δ on two counts."""
    return {g: d / math.sqrt(1 / (y_a.get(g, 0) + alpha) + 1 / (y_n.get(g, 0) + alpha)) for g, d in delta.items()}


def _redundant(g: str, chosen: list[str]) -> bool:
    # A label n-gram that shares a word with one already chosen adds little to detection.
    words = set(g.split())
    return any(words & set(c.split()) for c in chosen)


def select_by_detection(ranked: list[str], activating: list[set[str]], non_activating: list[set[str]],
                        top_k: int) -> list[str]:
    """Greedy forward selection of ≤ top_k n-grams for the rule "a context activates iff it
    contains one": each step adds the candidate (in `ranked` order on ties) that most raises the
    balanced accuracy ½·(TPR + TNR) on the labelling contexts (each given as its set of n-grams),
    and stops when none raises it. [] when no single n-gram beats chance (0.5)."""
    hit_a, hit_n = np.zeros(len(activating), bool), np.zeros(len(non_activating), bool)
    has = {g: (np.array([g in c for c in activating], bool), np.array([g in c for c in non_activating], bool))
           for g in ranked}
    chosen, best = [], 0.5
    while len(chosen) < top_k:
        scores = [(0.5 * (np.mean(hit_a | has[g][0]) + 1 - (np.mean(hit_n | has[g][1]) if len(hit_n) else 0.0)), -i, g)
                  for i, g in enumerate(ranked) if g not in chosen and not _redundant(g, chosen)]
        if not scores or max(scores)[0] <= best + 1e-12:
            break
        best, _, g = max(scores)
        chosen.append(g)
        hit_a, hit_n = hit_a | has[g][0], hit_n | has[g][1]
    return chosen


class OfflineLabeller:
    """Label = ≤ `top_k` contrastive n-grams joined by ', ' (e.g. "sorry, cannot, i'm").

    Candidates are n-grams enriched near activation peaks (log-odds δ > 0, z ≥ z_min, near the
    peak of ≥ min_contexts contexts). select="detection" (default) keeps the ones that together
    best tell the labelling contexts apart under the detection rule itself (`select_by_detection`;
    the top-δ n-gram where none beats chance), so the label is what will be scored; select="log-odds"
    takes the top_k by δ (the labeller before issue 25: frequent words near peaks, such as "and",
    ranked high and pulled detection to chance)."""

    name = "offline"
    max_heldout_per_side: int | None = None

    def __init__(self, *, top_k: int = 3, window: int = 2, alpha: float = 0.5, min_contexts: int = 2,
                 z_min: float = 1.96, n_evidence: int = 10, select: str = "detection"):
        if select not in ("detection", "log-odds"):
            raise AnatomistError(f"offline labeller: select must be 'detection' or 'log-odds', got {select!r}")
        self.top_k, self.window, self.alpha, self.z_min = top_k, window, alpha, z_min
        self.min_contexts, self.n_evidence, self.select = min_contexts, n_evidence, select

    def describe(self, activating: list[Context], non_activating: list[Context]) -> tuple[str, tuple[str, ...]]:
        if not activating:
            raise LabelFailure("no activating contexts to label from")
        y_a, support = peak_counts(activating, self.window)
        y_n = Counter(g for c in non_activating for _, _, g in ngram_spans(c.tokens))
        delta = log_odds(y_a, y_n, self.alpha)
        z = log_odds_z(y_a, y_n, delta, self.alpha)
        # Near the peak of ≥ min_contexts contexts and z ≥ z_min: one-off or weakly enriched
        # n-grams are noise, and a noise word in the label drags detection towards chance.
        need = min(self.min_contexts, len(activating))
        ranked = sorted((g for g in y_a if support[g] >= need and delta[g] > 0 and z[g] >= self.z_min),
                        key=lambda g: (-delta[g], g))
        if not ranked:
            raise LabelFailure(f"no n-gram is over-represented near activation peaks (z ≥ {self.z_min:g})")
        chosen: list[str] = []
        if self.select == "detection":
            grams = lambda cs: [{g for _, _, g in ngram_spans(c.tokens)} for c in cs]  # noqa: E731
            chosen = select_by_detection(ranked, grams(activating), grams(non_activating), self.top_k)
        for g in ([] if chosen else ranked):
            if len(chosen) == self.top_k:
                break
            if not _redundant(g, chosen):
                chosen.append(g)
        evidence = tuple(f"{g}: log-odds {delta[g]:+.2f}, z {z[g]:.1f} (near peaks {y_a[g]:.1f}, "
                         f"non-activating {y_n[g]})"
                         for g in ranked[:self.n_evidence])
        return ", ".join(chosen), evidence

    def detect(self, text: str, contexts: list[Context]) -> tuple[list[bool], tuple[str, ...]]:
        grams = set(text.split(", "))
        return [bool(grams & {g for _, _, g in ngram_spans(c.tokens)}) for c in contexts], ()


# ---------------------------------------------------------------- LLM labeller

class OpenAILabeller:
    """Label with any OpenAI-compatible chat endpoint; detection asks the same model which snippets
    of a numbered mix the label describes. Refuses non-loopback endpoints unless allow_remote."""

    def __init__(self, *, base_url: str | None = None, model: str | None = None, api_key: str | None = None,
                 allow_remote: bool = False, timeout: float = 60.0, n_examples: int = 10, max_tokens: int = 40,
                 max_heldout_per_side: int = 10):
        if not model:
            raise AnatomistError("--labeller openai needs a model name for the endpoint (e.g. --llm-model gpt-4o-mini)")
        self.host = check_endpoint(base_url, allow_remote)  # before anything can be sent
        self.base_url, self.model, self.timeout = base_url, model, timeout
        self.api_key = api_key or os.environ.get("OPENAI_API_KEY") or None
        self.n_examples, self.max_tokens = n_examples, max_tokens
        self.max_heldout_per_side = max_heldout_per_side
        self.name = f"openai:{model}"

    def _chat(self, messages: list[dict]) -> str:
        return chat(self.base_url, self.model, messages, api_key=self.api_key, timeout=self.timeout)

    def describe(self, activating: list[Context], non_activating: list[Context]) -> tuple[str, tuple[str, ...]]:
        if not activating:
            raise LabelFailure("no activating contexts to label from")
        top = sorted(activating, key=lambda c: -c.peak)[:self.n_examples]
        low = non_activating[:max(1, self.n_examples // 2)]
        answer = self._chat(label_messages([render(highlight(c, self.max_tokens)) for c in top],
                                           [render(highlight(c, self.max_tokens), marks=False) for c in low]))
        return parse_label(answer), (f"label answer: {one_line(answer, 300)}",)

    def detect(self, text: str, contexts: list[Context]) -> tuple[list[bool], tuple[str, ...]]:
        answer = self._chat(detection_messages(text, [render(highlight(c, self.max_tokens), marks=False)
                                                      for c in contexts]))
        picked = parse_numbers(answer, len(contexts))
        return [i + 1 in picked for i in range(len(contexts))], (f"detection answer: {one_line(answer, 300)}",)


LABELLERS: dict[str, type] = {"offline": OfflineLabeller, "openai": OpenAILabeller}


# ---------------------------------------------------------------- split, score, run

def split_heldout(items: list, frac: float, rng: np.random.Generator) -> tuple[list, list]:
    """(labelling part, held-out part), each in the original order. round(frac·n) items are held
    out, but at least one is always kept for labelling."""
    n = len(items)
    n_hold = min(int(round(frac * n)), max(n - 1, 0))
    hold = set(rng.permutation(n)[:n_hold].tolist())
    return [x for i, x in enumerate(items) if i not in hold], [x for i, x in enumerate(items) if i in hold]


def balanced_mix(activating: list[Context], non_activating: list[Context], rng: np.random.Generator,
                 cap: int | None = None) -> tuple[list[Context], np.ndarray]:
    """Shuffled mix of k activating and k non-activating contexts (k = the smaller side, ≤ cap) and
    the truth [2k] (True = activating); subsampling the larger side keeps chance at 0.5."""
    k = min(len(activating), len(non_activating), cap if cap is not None else math.inf)
    a = [activating[i] for i in sorted(rng.choice(len(activating), k, replace=False))] if k else []
    b = [non_activating[i] for i in sorted(rng.choice(len(non_activating), k, replace=False))] if k else []
    order = rng.permutation(2 * k)
    truth = np.array([True] * k + [False] * k)[order]
    return [(a + b)[i] for i in order], truth


def label_one(labeller, activating: list[Context], non_activating: list[Context], *, rng: np.random.Generator,
              heldout_frac: float = 0.5) -> Label:
    """Label one cluster from its labelling split; score it on the held-out balanced mix."""
    act_fit, act_hold = split_heldout(activating, heldout_frac, rng)
    non_fit, non_hold = split_heldout(non_activating, heldout_frac, rng)
    try:
        text, evidence = labeller.describe(act_fit, non_fit)
    except LabelFailure as e:
        return Label(None, f"failed: {one_line(str(e))}", labeller.name, None, 0, ())
    mix, truth = balanced_mix(act_hold, non_hold, rng, labeller.max_heldout_per_side)
    if not mix:  # too few contexts to hold any out: a label, but unscored
        return Label(text, "ok", labeller.name, None, 0, evidence)
    try:
        predicted, more = labeller.detect(text, mix)
    except LabelFailure as e:
        return Label(text, f"failed: detection: {one_line(str(e))}", labeller.name, None, len(mix), evidence)
    acc = float(np.mean(np.asarray(predicted, dtype=bool) == truth))
    return Label(text, "ok", labeller.name, acc, len(mix), evidence + more)


def label_clusters(contexts: dict[int, tuple[list[Context], list[Context]]], *, labeller: str = "offline",
                   seed: int = 0, heldout_frac: float = 0.5, progress: bool = True,
                   **labeller_kwargs) -> dict[int, Label]:
    """Label every concept cluster. contexts[c] = (activating, non_activating) for cluster c.

    Each list is split into a labelling part and a held-out part (deterministically under `seed`
    and c); the label comes from the labelling part only and is scored on the held-out mix.
    `labeller_kwargs` go to the labeller (openai: base_url, model, api_key, allow_remote, timeout).
    """
    if labeller not in LABELLERS:
        raise AnatomistError(f"--labeller {labeller!r}: choose one of {', '.join(sorted(LABELLERS))}")
    if not 0 <= heldout_frac < 1:
        raise AnatomistError(f"heldout_frac must be in [0, 1), got {heldout_frac}")
    impl = LABELLERS[labeller](**labeller_kwargs)
    labels = {}
    with progress_bar(f"labelling concepts ({impl.name})", total=len(contexts), enabled=progress) as bar:
        for c in sorted(contexts):
            activating, non_activating = contexts[c]
            rng = np.random.default_rng([seed % 2**32, c % 2**32])  # per cluster: stable if others change
            labels[c] = label_one(impl, list(activating), list(non_activating), rng=rng, heldout_frac=heldout_frac)
            bar.advance()
    return labels
