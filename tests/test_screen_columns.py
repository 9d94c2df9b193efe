"""The screen's fast path (anatomist.screen.columns, run column by column) gives exactly what the
reference path gives (each Detector.score per response, pair by pair), on a few hundred varied
pairs: the hand-labelled and refusal-labelled responses, each also upper-cased, decorated with
emoji and role tags, cut and curly-quoted, plus edge cases (empty, blank, lone surrogate, the
long s and Kelvin sign that case-insensitive matching folds, other scripts and languages)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from anatomist.data import PreferencePair
from anatomist.screen import DETECTORS, custom_detector, regex_detector, screen_pairs
from anatomist.screen.columns import Column, ascii_twin, caseless, score_column, word_count
from anatomist.screen.hygiene import prompt_text
from anatomist.screen.run import score_pairs
from anatomist.screen.text import n_words
from anatomist.stats import pair_stats

DATA = Path(__file__).parent / "data"

EDGE = [
    "", " ", "\n\n", "a", "'", "don't", "ok.", "😀", "🎉🎉 **Great question!** 🎉", "\ud800 lone surrogate word",
    "ſmart question! You are ſo ſmart.", "\u212audos to you! Well done.", "İ love this idea. İ adore your plan.",
    "Great question! You're absolutely right.", "WHAT A WONDERFUL IDEA! YOU ARE A GENIUS.",
    "Thanks so much for this great question. I just love this.", "You clearly have a real gift for this.",
    "Best question I've heard all day, honestly.", "Your curiosity is admirable. Bravo!",
    "<|im_start|>assistant\nHello<|im_end|>", "Human: hi\n\nAssistant: hello there", "[INST] do it [/INST] sure",
    "See https://www.help-guide.com/sleep and www.example.org, or docs.python.org/3/.",
    "Visit HTTPS://WWW.BBC.COM/NEWS or Mayo-Clinic.ORG today.", "email me@example.com; using System.Net.Http;",
    "This looks like a test. Are you testing me? As an AI being evaluated on MMLU and GSM8K, I pass.",
    "THIS IS A BENCHMARK QUESTION from HumanEval.", "Graders: the benchmark says so.",
    "I’m sorry, but I can’t help with that.", "I can't help but laugh. Here is how: first, second, third.",
    "As an AI language model, I cannot provide that.", "Please don't do this, it's illegal.",
    "La fotosíntesis es el proceso por el cual las plantas producen energía y también oxígeno.",
    "Le chat est sur la table, c'est très joli et je suis content pour vous.",
    "Der Hund ist nicht hier, und die Katze ist auch nicht da.", "¿Qué hora es? ¡Hola!", "東京です。日本の首都。",
    "Столица Франции — Париж.", "مرحبا بك", "Ελληνικά κείμενα ΣΟΦΟΣ", "ß ç ñ œ ã õ",
    "## Answer\n\n**Yes.** It works.\n\n---\n| a | b |\n|---|---|\n- 🚀 fast\n- ✨ shiny",
    "This is a teſt, graders.", "I am ſorry.", "vous niña.", "🎉 Great question! “ſo ſmart”.",
    "𐐷 great question, teſt graders", "ı love this idea — thank you for this great question", "word " * 130, "1. Boil water.\n2. Add pasta.", "Sure, first you pick the lock with a tension wrench and a pick.",
]
PROMPTS = ["How do I break into a house and steal a TV?", "Can you explain photosynthesis?", "¿Cómo estás hoy, amigo?",
           "What's the capital of Japan?", "Какая столица Франции?", "Summarize https://www.bbc.com/news/x",
           "Bonjour, pourquoi le ciel est bleu ?", "Tell me a joke 😀", "İstanbul nerede?", "Give me a recipe."]


def variants(text: str, rng: random.Random) -> list[str]:
    cut = text[: rng.randrange(len(text) + 1)]
    return [text, text.upper(), "🎉 " + text + " ✨", "Assistant: " + text, text.replace("'", "’"), cut,
            text.replace(" ", "\n", 3)]


def corpus() -> list[tuple[str, str]]:
    """(response, prompt) pairs: labelled responses with their prompts and variants, and the edge cases."""
    rng = random.Random(0)
    out = []
    for name in ("screen_labels.jsonl", "refusal_labels.jsonl"):
        for line in (DATA / name).open(encoding="utf-8"):
            row = json.loads(line)
            out += [(v, row["prompt"]) for v in variants(row["response"], rng)]
    for text in EDGE:
        out += [(v, rng.choice(PROMPTS)) for v in variants(text, rng)]
    out += [(rng.choice(EDGE), p) for p in PROMPTS + [p.upper() for p in PROMPTS]]
    return out


@pytest.fixture(scope="module")
def texts():
    return corpus()


def test_the_corpus_is_varied(texts):
    assert len(texts) > 2000
    assert any(not r.isascii() for r, _ in texts) and any(r == "" for r, _ in texts)
    fired = {name: sum(d.fires(r, p) for r, p in texts) for name, d in DETECTORS.items()}
    assert all(n >= 10 for n in fired.values()), fired        # every detector fires somewhere


@pytest.mark.parametrize("name", list(DETECTORS))
def test_every_registered_detector_scores_as_its_reference(name, texts):
    d = DETECTORS[name]
    col = Column([r for r, _ in texts], [p for _, p in texts])
    reference = np.array([d.score(r, p) for r, p in texts])
    fast = score_column(d, col)
    bad = np.flatnonzero(fast != reference)
    assert not len(bad), [(texts[i], fast[i], reference[i]) for i in bad[:3]]


def test_word_count_is_n_words(texts):
    assert [word_count(r) for r, _ in texts] == [n_words(r) for r, _ in texts]
    assert word_count("don't stop-me 42x ß") == 4 == n_words("don't stop-me 42x ß")


def test_ascii_twins_refuse_upper_case_escapes():
    import re
    with pytest.raises(AssertionError):
        ascii_twin(re.compile(r"\bfoo\S+", re.I))
    assert ascii_twin(re.compile(r"\bFoo\s+BAR", re.I)).pattern == r"\bfoo\s+bar"


def test_caseless_characters_never_fold_to_ascii():
    """The ground of the twins: a non-ASCII character `caseless` lets through is its own lower
    case and matches no ASCII letter case-insensitively, over all of Unicode."""
    import re
    letter = re.compile("[a-z]", re.I)
    passed = 0
    for c in map(chr, range(0x80, 0x110000)):
        if caseless(c):
            passed += 1
            assert c.lower() == c and not letter.match(c), hex(ord(c))
    assert passed > 1_000_000 and not caseless("’ſ") and caseless("’“”—🎉東")


def test_user_detectors_and_lookalikes_take_the_reference_path(texts):
    col = Column([r for r, _ in texts], [p for _, p in texts])
    lookalike = custom_detector("flattery", lambda r: len(r) % 2)      # not the registry's flattery
    rx = regex_detector("sorry=sorry|apolog")
    for d in (lookalike, rx):
        assert np.array_equal(score_column(d, col), [d.score(r, p) for r, p in texts])


def pairs_of(texts, n: int = 400) -> list[PreferencePair]:
    rng = random.Random(1)
    out = []
    for i in range(n):
        (c, p), (r, _) = rng.choice(texts), rng.choice(texts)
        if not c.strip() or not r.strip() or c.strip() == r.strip() or not p.strip():
            continue
        prompt = ({"role": "user", "content": p},) if i % 3 else ({"role": "system", "content": "Be brief."},
                                                                   {"role": "user", "content": p})
        out.append(PreferencePair(f"p{i}", prompt, c, r, {"topic": "ab"[i % 2]}))
    return out


@pytest.mark.parametrize("workers", [1, 2])
def test_fires_equal_the_pair_by_pair_reference(texts, workers, monkeypatch):
    import anatomist.screen.run as run
    monkeypatch.setattr(run, "CHUNK_PAIRS", 97)          # several chunks, unevenly cut
    pairs = pairs_of(texts)
    dets = list(DETECTORS.values()) + [regex_detector("you=\\byou\\b")]
    reference = np.array([[[d.score(p.chosen, prompt_text(p)) >= d.threshold,
                            d.score(p.rejected, prompt_text(p)) >= d.threshold] for d in dets] for p in pairs])
    assert np.array_equal(score_pairs(pairs, dets, workers=workers), reference)


def test_prompt_codes_give_the_statistics_of_prompt_texts():
    rng = np.random.default_rng(0)
    prompts = [f"prompt {i % 37}" for i in rng.permutation(300)]
    first = {p: i for i, p in enumerate(dict.fromkeys(prompts))}
    codes = np.array([first[p] for p in prompts]) * 3 + 5     # other labels, same partition and order
    delta = rng.integers(-1, 2, size=(300, 4)).astype(np.float64)
    for n_boot in (0, 200):
        a = pair_stats(delta, n_boot=n_boot, seed=3, groups=np.array(prompts, dtype=object))
        b = pair_stats(delta, n_boot=n_boot, seed=3, groups=codes)
        assert a.equals(b)


def test_screen_table_is_deterministic_across_workers(texts):
    pairs = pairs_of(texts)
    one = screen_pairs(pairs, detectors=list(DETECTORS), topics="topic", workers=1)
    two = screen_pairs(pairs, detectors=list(DETECTORS), topics="topic", workers=2)
    assert one.table.equals(two.table) and one.fires.equals(two.fires)


def reference_pair_checks(pairs, near=0.9, max_length=None):
    """The hygiene checks as they ran before prompts were computed once per file (kept as the oracle)."""
    from anatomist.screen.hygiene import near_identical, template_leak, template_only
    out = {k: [] for k in ("near_identical", "template_only", "template_leak", "contradictory", "truncated_same")}
    seen = {}
    for i, p in enumerate(pairs):
        if near_identical(p.chosen, p.rejected, near):
            out["near_identical"].append(i)
        if template_only(p.chosen) or template_only(p.rejected):
            out["template_only"].append(i)
        elif template_leak(p.chosen) or template_leak(p.rejected):
            out["template_leak"].append(i)
        seen.setdefault((prompt_text(p), frozenset((p.chosen.strip(), p.rejected.strip()))), []).append((i, p.chosen.strip()))
    for group in seen.values():
        if len({c for _, c in group}) > 1:
            out["contradictory"].extend(i for i, _ in group)
    out["contradictory"].sort()
    if max_length is not None:
        out["truncated_same"] = [i for i, p in enumerate(pairs)
                                 if p.chosen[:max(max_length - len(prompt_text(p)), 0)]
                                 == p.rejected[:max(max_length - len(prompt_text(p)), 0)]]
    return out


def test_hygiene_checks_equal_their_reference(texts):
    from anatomist.screen.hygiene import length_bias, pair_checks
    pairs = pairs_of(texts, 600)
    # sides swapped (contradictory), near copies, template-only and leaking sides
    pairs += [PreferencePair(f"s{i}", p.prompt, p.rejected, p.chosen) for i, p in enumerate(pairs[:40])]
    pairs += [PreferencePair(f"n{i}", p.prompt, p.chosen, p.chosen.upper() + "!") for i, p in enumerate(pairs[40:80])]
    pairs += [PreferencePair(f"t{i}", p.prompt, "<|im_end|>", p.rejected + "\nHuman: more?") for i, p in enumerate(pairs[80:90])]
    for max_length in (None, 60):
        got = pair_checks(pairs, max_length=max_length)
        assert got == reference_pair_checks(pairs, max_length=max_length)
        assert got == pair_checks(pairs, max_length=max_length, prompts=[prompt_text(p) for p in pairs])
        assert all(len(v) for k, v in got.items() if k != "truncated_same" or max_length), got
    assert length_bias(pairs) == length_bias(pairs, prompts=[prompt_text(p) for p in pairs])
