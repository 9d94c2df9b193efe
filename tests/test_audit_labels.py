"""Concept labels: offline contrastive n-grams, the OpenAI-compatible labeller against a local stub,
held-out detection scoring, failures as statuses, and the no-remote guard."""

from __future__ import annotations

import json
import logging
import math
import socket
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from anatomist.audit.labels import (LABELLERS, Context, OfflineLabeller, concept_name, highlight, label_clusters,
                                    log_odds, ngram_spans, peak_counts, render, token_units, unit_context)
from anatomist.audit.labels_llm import LabelFailure, check_endpoint, parse_label, parse_numbers
from anatomist.errors import AnatomistError

FILLER = [" the", " weather", " is", " nice", " today", " and", " we", " went", " to", " park", " with",
          " a", " dog", " ball", " green", " tree", " river", " walk", " long", " happy", ".", ","]


def _ctx(tokens, acts=None, rid="r", side="chosen"):
    return Context(tuple(tokens), tuple(acts if acts is not None else [0.0] * len(tokens)), rid, side)


def _filler(rng, n):
    return [FILLER[i] for i in rng.integers(0, len(FILLER), n)]


def _refusals(n_act=30, n_non=30, seed=0):
    """Activating responses contain ' Sorry I cannot' with the peak on ' cannot'; others are filler."""
    rng = np.random.default_rng(seed)
    act, non = [], []
    for i in range(n_act):
        toks = _filler(rng, 15)
        at = int(rng.integers(2, 12))
        toks[at:at] = [" Sorry", ",", " I", " cannot"]
        acts = [0.0] * len(toks)
        acts[at], acts[at + 3] = 1.0, 2.0 + rng.random()
        act.append(_ctx(toks, acts, f"a{i}"))
    for i in range(n_non):
        toks = _filler(rng, 19)
        non.append(_ctx(toks, rng.random(len(toks)) * 0.1, f"n{i}", "rejected"))
    return act, non


def _null(n=40, seed=1):
    """Same filler distribution on both sides; activations are noise."""
    rng = np.random.default_rng(seed)
    sides = [[_ctx(_filler(rng, 12), rng.exponential(1.0, 12), f"{side}{i}", side) for i in range(n)]
             for side in ("chosen", "rejected")]
    return sides[0], sides[1]


# ---------------------------------------------------------------- offline

def test_offline_finds_planted_refusal():
    labels = label_clusters({0: _refusals()}, progress=False)
    lab = labels[0]
    assert lab.status == "ok" and lab.labeller == "offline"
    assert "sorry" in lab.text or "cannot" in lab.text
    assert len(lab.text.split(", ")) <= 3
    assert lab.detection_acc >= 0.9 and lab.n_heldout == 30
    assert lab.evidence and "log-odds" in lab.evidence[0]


def test_offline_null_is_near_chance():
    lab = label_clusters({3: _null()}, progress=False)[3]
    assert lab.status.startswith("failed: no n-gram") or lab.detection_acc <= 0.75
    forced = label_clusters({3: _null()}, z_min=-math.inf, progress=False)[3]  # label from noise anyway
    assert forced.status == "ok" and forced.text
    assert forced.detection_acc <= 0.75


def test_deterministic_under_seed():
    ctx = {0: _refusals(seed=2), 1: _null(seed=3)}
    a = label_clusters(ctx, seed=5, progress=False)
    b = label_clusters(ctx, seed=5, progress=False)
    assert a == b


def test_ngrams_skip_punctuation_and_special_tokens():
    toks = (" Sorry", ",", " I", "'m", " Par", "is", "<|im_end|>", "\n")
    grams = [g for _, _, g in ngram_spans(toks)]
    assert grams == ["sorry", "i", "i'm", "'m", "'m par", "par", "paris", "is"]


def test_log_odds_hand_checked():
    # N_a = 3, N_n = 4, α = 0.5
    d = log_odds({"a": 2, "b": 1}, {"a": 1, "b": 3}, alpha=0.5)
    assert d["a"] == pytest.approx(math.log(2.5 / 1.5) - math.log(1.5 / 3.5))
    assert d["b"] == pytest.approx(math.log(1.5 / 2.5) - math.log(3.5 / 1.5))
    assert d["a"] > 0 > d["b"]


def test_peak_counts_window_and_weights():
    # Peak at index 3 (" x"); window ±1 → tokens 2..4. Second context has half the peak.
    c1 = _ctx([" a", " b", " c", " x", " d", " e"], [0, 0, 0, 2.0, 0, 0])
    c2 = _ctx([" x", " q"], [1.0, 0])
    counts, support = peak_counts([c1, c2], window=1)
    # weights: peak / mean peak = 2/1.5 and 1/1.5
    w1, w2 = 2 / 1.5, 1 / 1.5
    assert counts == pytest.approx({"c": w1, "x": w1 + w2, "d": w1, "c x": w1, "x d": w1, "q": w2, "x q": w2})
    assert support["x"] == 2 and support["c"] == 1


def test_offline_failure_is_a_status_not_a_label():
    lab = label_clusters({0: ([], [_ctx([" a"])])}, progress=False)[0]
    assert lab.text is None and lab.status.startswith("failed: ") and lab.detection_acc is None
    only_punct = [_ctx([".", "!"], [1.0, 0.0], f"p{i}") for i in range(4)]
    lab = label_clusters({0: (only_punct, [_ctx([" a"])] * 4)}, progress=False)[0]
    assert lab.text is None and lab.status.startswith("failed: ")


def test_offline_detection_rule():
    pred, _ = OfflineLabeller().detect("sorry, i cannot", [_ctx([" Sorry"]), _ctx([" I", " cannot"]),
                                                           _ctx([" I"]), _ctx([" cannot"])])
    assert pred == [True, True, False, False]


def test_highlight_window():
    toks = [f" t{i}" for i in range(100)]
    acts = [0.0] * 100
    acts[70] = 3.0
    win = highlight(_ctx(toks, acts), max_tokens=10)
    assert [t for t, _ in win] == [f" t{i}" for i in range(65, 75)]
    assert max(win, key=lambda p: p[1]) == (" t70", 3.0)
    acts[98] = 9.0  # peak near the end: window shifts inward, keeps its length
    assert [t for t, _ in highlight(_ctx(toks, acts), max_tokens=10)][-1] == " t99"
    assert len(highlight(_ctx(toks[:5], acts[:5]), max_tokens=10)) == 5
    assert render([(" I", 0.0), (" cannot", 2.0), (" help", 1.5), (".", 0.1)]) == " I «cannot help»."


def test_unknown_labeller_and_bad_frac():
    with pytest.raises(AnatomistError, match="offline"):
        label_clusters({}, labeller="gpt", progress=False)
    with pytest.raises(AnatomistError):
        label_clusters({}, heldout_frac=1.0, progress=False)
    assert set(LABELLERS) == {"offline", "openai"}


# ---------------------------------------------------------------- LLM labeller against a local stub

class _Stub:
    """OpenAI-style server on 127.0.0.1:<free port>; `reply(body) -> (status, bytes)` answers each request."""

    def __init__(self, reply):
        self.requests: list[dict] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                body = json.loads(raw)
                stub.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                status, payload = reply(body)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _completion(text: str) -> bytes:
    return json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}).encode()


@pytest.fixture
def stub_factory():
    stubs = []

    def make(reply):
        stubs.append(_Stub(reply))
        return stubs[-1]

    yield make
    for s in stubs:
        s.close()


def _snippets(prompt: str) -> dict[int, str]:
    """Numbered snippets of a detection prompt ('#i' header lines)."""
    out = {}
    for line in prompt.split("\n\n#")[1:]:
        num, _, text = line.partition("\n")
        out[int(num)] = text
    return out


def _smart_reply(wrong_extra: int):
    """Label prompt → a label; detection prompt → the true activating numbers plus `wrong_extra` false ones."""
    def reply(body):
        user = body["messages"][-1]["content"]
        if "has the label" not in user:
            return 200, _completion('Label: "Apologetic refusals."\n')
        snips = _snippets(user)
        hits = [i for i, s in snips.items() if "cannot" in s]
        misses = [i for i, s in snips.items() if "cannot" not in s][:wrong_extra]
        return 200, _completion("Texts " + ", ".join(map(str, sorted(hits + misses))) + " match.")
    return reply


def _llm(stub, **kw):
    return dict(labeller="openai", base_url=stub.url, model="stub-model", progress=False, **kw)


def test_llm_labeller_parses_label_and_scores_detection(stub_factory, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    stub = stub_factory(_smart_reply(wrong_extra=1))
    act, non = _refusals(n_act=4, n_non=6)
    lab = label_clusters({7: (act, non)}, **_llm(stub))[7]
    assert lab.status == "ok" and lab.text == "Apologetic refusals" and lab.labeller == "openai:stub-model"
    # held out: 2 activating, 3 non-activating → balanced mix of 2 + 2; stub names both hits and one miss
    assert lab.n_heldout == 4 and lab.detection_acc == pytest.approx(3 / 4)
    assert len(stub.requests) == 2
    first = stub.requests[0]
    assert first["path"] == "/v1/chat/completions"
    assert first["body"]["model"] == "stub-model" and first["body"]["temperature"] == 0
    assert "Authorization" not in first["headers"]
    assert "«cannot»" in first["body"]["messages"][-1]["content"]  # peak token marked
    detection = _snippets(stub.requests[1]["body"]["messages"][-1]["content"])
    assert len(detection) == 4 and not any("«" in s for s in detection.values())  # no marks leak the answer


def test_llm_api_key_header(stub_factory, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    stub = stub_factory(_smart_reply(0))
    label_clusters({0: _refusals(4, 4)}, **_llm(stub))
    assert stub.requests[0]["headers"]["Authorization"] == "Bearer sk-env"
    label_clusters({0: _refusals(4, 4)}, **_llm(stub, api_key="sk-arg"))
    assert stub.requests[-1]["headers"]["Authorization"] == "Bearer sk-arg"


@pytest.mark.parametrize("status,payload", [(500, b'{"error": "boom"}'), (200, b"<html>not json"),
                                            (200, b'{"choices": []}')])
def test_llm_errors_are_failed_statuses(stub_factory, status, payload):
    stub = stub_factory(lambda body: (status, payload))
    lab = label_clusters({0: _refusals(4, 4)}, **_llm(stub))[0]
    assert lab.text is None and lab.detection_acc is None
    assert lab.status.startswith("failed: ") and "\n" not in lab.status


def test_llm_failed_detection_keeps_label(stub_factory):
    answers = iter([(200, _completion("refusals")), (500, b"overloaded")])
    stub = stub_factory(lambda body: next(answers))
    lab = label_clusters({0: _refusals(4, 4)}, **_llm(stub))[0]
    assert lab.text == "refusals" and lab.detection_acc is None
    assert lab.status.startswith("failed: detection: HTTP 500")


def test_llm_unreachable_endpoint_is_a_status():
    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    lab = label_clusters({0: _refusals(4, 4)}, labeller="openai", base_url=f"http://127.0.0.1:{port}/v1",
                         model="m", timeout=5, progress=False)[0]
    assert lab.text is None and lab.status.startswith("failed: cannot reach")


def test_quotes_and_newlines_survive_the_json_body(stub_factory):
    stub = stub_factory(_smart_reply(0))
    tricky = ' He said "no"\n\tthen \\n left'
    act = [_ctx([tricky, " cannot"], [0.0, 1.0], f"a{i}") for i in range(4)]
    label_clusters({0: (act, [_ctx([" ok"], rid=f"n{i}") for i in range(4)])}, **_llm(stub))
    assert tricky in stub.requests[0]["body"]["messages"][-1]["content"]


def test_remote_endpoint_refused_before_any_request(stub_factory, monkeypatch):
    stub = stub_factory(_smart_reply(0))

    def no_network(*args, **kwargs):
        raise AssertionError("a request was attempted")
    monkeypatch.setattr(urllib.request.OpenerDirector, "open", no_network)
    with pytest.raises(AnatomistError, match="refusing to send dataset text to api.example.com: pass --allow-remote"):
        label_clusters({0: _refusals(4, 4)}, labeller="openai", base_url="https://api.example.com/v1", model="m",
                       progress=False)
    assert stub.requests == []


def test_remote_allowed_warns_once_naming_host(caplog):
    with caplog.at_level(logging.WARNING):
        assert check_endpoint("https://api.example.com/v1", allow_remote=True) == "api.example.com"
    assert [r.getMessage() for r in caplog.records if "api.example.com" in r.getMessage()]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        for url in ("http://localhost:8000/v1", "http://127.3.2.1/v1", "http://[::1]:9/v1"):
            check_endpoint(url, allow_remote=False)
    assert not caplog.records


@pytest.mark.parametrize("url", [None, "", "ftp://127.0.0.1/v1", "127.0.0.1:8000"])
def test_bad_base_url(url):
    with pytest.raises(AnatomistError, match="base-url"):
        check_endpoint(url, allow_remote=True)


def test_openai_needs_model():
    with pytest.raises(AnatomistError, match="model"):
        label_clusters({}, labeller="openai", base_url="http://127.0.0.1:1/v1", model=None, progress=False)


def test_parse_label_and_numbers():
    assert parse_label('**Label:** "Polite refusals to help."\nBecause…') == "Polite refusals to help"
    assert parse_label("<think>hmm</think>\n- Markdown headers") == "Markdown headers"
    with pytest.raises(LabelFailure):
        parse_label("  \n ")
    assert parse_numbers("Texts 2, 5 and 7 match.", 6) == {2, 5}
    assert parse_numbers("#1-#3, 9", 10) == {1, 2, 3, 9}
    assert parse_numbers("None of them.", 4) == set()
    assert parse_numbers("<think>1 2 3</think>4", 4) == {4}
    with pytest.raises(LabelFailure):
        parse_numbers("I am not sure.", 4)


# ---------------------------------------------------------------- readable units and names

def _bytes_decode(ids):
    """A byte-level 'tokenizer': every token is one UTF-8 byte."""
    return bytes(ids).decode("utf-8", errors="replace")


def test_units_join_byte_pieces_and_word_pieces():
    ids = list(" Hi 🎉! Спасибо 谢谢".encode())
    units = token_units(ids, _bytes_decode)
    assert [t for _, _, t in units] == [" Hi", " 🎉", "!", " Спасибо", " 谢", "谢"]
    assert [(a, b) for a, b, _ in units][:3] == [(0, 2), (3, 7), (8, 8)]          # the emoji is bytes 4..7
    assert all(b + 1 == a for (_, b, _), (a, _, _) in zip(units, units[1:])) and units[-1][1] == len(ids) - 1
    assert [t for _, _, t in token_units([0xF0, 0x9F], _bytes_decode)] == ["\ufffd", "\ufffd"]  # never completes


def test_units_join_contractions_not_quotes():
    vocab = [" I", "'m", " don", "’", "t", " '", "hi", "'", " ok"]
    decode = lambda ids: "".join(vocab[i] for i in ids)  # noqa: E731
    assert [t for _, _, t in token_units(range(len(vocab)), decode)] == [" I'm", " don’t", " '", "hi", "'", " ok"]
    assert [g for _, _, g in ngram_spans((" don’t",))] == ["don't"]


def test_units_keep_the_space_a_sentencepiece_decoder_drops():
    vocab = ["▁Par", "is", "▁is", "▁nice"]
    decode = lambda ids: "".join(vocab[i] for i in ids).replace("▁", " ").lstrip()  # noqa: E731
    assert [t for _, _, t in token_units([0, 1, 2, 3], decode)] == ["Paris", " is", " nice"]


def test_unit_context_takes_the_peak_of_its_tokens():
    ctx = unit_context([(0, 1, " Par"), (2, 2, "!")], [0.5, 2.0, 0.1], "r", "chosen")
    assert ctx.tokens == (" Par", "!") and ctx.acts == (2.0, 0.1)


@pytest.mark.parametrize("target", [" 🎉🎉", " большое спасибо", "非常谢谢你"])
def test_label_spells_emoji_and_non_latin_words(smol_tokenizer, target):
    """On the default tokenizer these split into byte pieces (emoji, CJK) or one-letter tokens
    (Cyrillic); the label built from decoded units spells them."""
    tok, rng = smol_tokenizer, np.random.default_rng(0)
    enc = lambda text: tok.encode(text, add_special_tokens=False)  # noqa: E731

    def context(i, with_target):
        before, after = enc("".join(_filler(rng, 6))), enc("".join(_filler(rng, 6)))
        mid = enc(target) if with_target else []
        ids = before + mid + after
        acts = [0.0] * len(before) + [2.0] * len(mid) + [0.0] * len(after)
        return unit_context(token_units(ids, tok.decode), acts, f"{with_target}{i}", "chosen")
    assert any("\ufffd" in tok.decode([t]) or len(tok.decode([t]).strip()) == 1 for t in enc(target))
    lab = label_clusters({0: ([context(i, True) for i in range(20)], [context(i, False) for i in range(20)])},
                         progress=False)[0]
    assert lab.status == "ok" and "\ufffd" not in lab.text
    words = target.lower().split()       # whole words where the script has spaces, else characters
    spelled = (lambda g: set(g.split()) <= set(words)) if len(words) > 1 else (lambda g: g in words[0])  # noqa: E731
    assert all(spelled(g) for g in lab.text.split(", ")), lab.text
    assert lab.detection_acc >= 0.9


def test_concept_name_says_why_there_is_no_name():
    top = _ctx([" I", " cannot", " help", "."], [0.0, 2.0, 0.2, 0.0])
    assert concept_name("sorry, cannot", "ok", 0.9, top) == "sorry, cannot"
    low = concept_name("in", "ok", 0.5, top)
    assert low.startswith("“I «cannot» help.”") and "detects only 0.50 < 0.75" in low
    assert "unscored: too few contexts" in concept_name("in", "ok", None, top)
    failed = concept_name(None, "failed: no n-gram is over-represented near activation peaks (z ≥ 1.96)", None, top)
    assert "no label: no n-gram" in failed and "«cannot»" in failed
    assert concept_name(None, "failed: no activating contexts to label from", None, None) == \
        "[no label: no activating contexts to label from; no activating context]"


def test_a_degenerate_run_is_cut_into_short_units():
    ids = list(("Data" + "ka" * 40).encode())
    units = token_units(ids, _bytes_decode, max_chars=24)
    assert "".join(t for _, _, t in units) == "Data" + "ka" * 40 and max(len(t) for _, _, t in units) == 24
