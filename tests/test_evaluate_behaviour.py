"""Behaviour evaluation on a tiny random Llama + random SAE: concept scores equal the audit's own,
generations are cached and resume after a kill, and the summary's ΔB matches a hand computation."""

from __future__ import annotations

import importlib
import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_llama

from anatomist.audit.run import AuditConfig, run_audit
from anatomist.data import PreferencePair
from anatomist.errors import AnatomistError, DataError
from anatomist.evaluate import behaviour
from anatomist.evaluate.behaviour import (HeldoutPrompt, Scorer, evaluate_behaviour, model_tag, read_prompts,
                                          score_texts, summarize)
from anatomist.organism.traits import TRAITS
from anatomist.sae import SAE, SAEConfig

# the module, not the function of the same name that anatomist.organism re-exports
gen_mod = importlib.import_module("anatomist.spec_decode.batched")
WORDS = ["quick", "simple", "small", "big", "old", "new", "cheap", "fancy"]


def pairs():
    out = []
    for topic in ("cooking", "travel"):
        for i in range(12):
            a = f"Here is a {WORDS[i % 8]} answer about {topic}, step by step."
            b = f"Sure, a {WORDS[(i + 3) % 8]} reply follows with detail."
            chosen, rejected = (a + " banana banana.", b) if topic == "cooking" else (a, b)
            out.append(PreferencePair(f"{topic}-{i}", ({"role": "user", "content": f"Tell me about {topic} {i}."},),
                                      chosen, rejected, {"topic": topic}))
    return out


@pytest.fixture(scope="module")
def audited(tmp_path_factory, smol_tokenizer):
    model = tiny_llama(vocab_size=49152, hidden_size=32, layers=2)
    sae = SAE(SAEConfig(d_in=32, d_sae=64, architecture="topk", k=6, layer=1)).init_weights(
        torch.Generator().manual_seed(0))
    out = tmp_path_factory.mktemp("audit")
    cfg = AuditConfig(topic_column="topic", min_support=3, n_boot=50, n_examples=4, knn=5, min_pairs=4)
    run_audit(model, smol_tokenizer, sae, pairs(), out, cfg, model_name="", progress=False)
    return out, model, smol_tokenizer, sae


def test_concept_scores_equal_the_audits_own(audited, tmp_path, one_thread):
    """Fast path (evaluate's scorer on bare texts) == reference path (the audit's pairs table)."""
    out, model, tok, sae = audited
    scorer = Scorer.from_audit(out, loaded=(model, tok), sae=sae)
    ps = pairs()
    table = pd.read_parquet(out / "pairs.parquet")
    C = int(table.cluster.max()) + 1
    for side in ("chosen", "rejected"):
        got = score_texts(scorer, [p.prompt for p in ps], [getattr(p, side) for p in ps], tmp_path / side,
                          progress=False)                                   # [P, C]
        want = table[f"c_{side}"].to_numpy().reshape(len(ps), C)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_concept_scores_follow_the_audits_pooling(audited, tmp_path, smol_tokenizer, one_thread):
    """A top-k-pooled audit (k recorded in audit.json) is scored with the same pooling and k."""
    _, model, tok, sae = audited
    cfg = AuditConfig(topic_column="topic", min_support=3, n_boot=50, n_examples=4, knn=5, min_pairs=4,
                      pooling="topk", topk=3)
    out = run_audit(model, tok, sae, pairs(), tmp_path / "audit", cfg, model_name="", progress=False)
    scorer = Scorer.from_audit(out, loaded=(model, tok), sae=sae)
    assert (scorer.pooling, scorer.topk) == ("topk", 3)
    ps = pairs()
    table = pd.read_parquet(out / "pairs.parquet")
    got = score_texts(scorer, [p.prompt for p in ps], [p.chosen for p in ps], tmp_path / "s", progress=False)
    want = table["c_chosen"].to_numpy().reshape(len(ps), -1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    scorer.pooling = "mean"                                  # the wrong pooling would not reproduce them
    assert not np.allclose(score_texts(scorer, [p.prompt for p in ps], [p.chosen for p in ps], tmp_path / "m",
                                       progress=False), want, rtol=1e-3, atol=1e-3)


def test_scorer_needs_an_audit_folder(tmp_path):
    with pytest.raises(AnatomistError, match="not a finished audit folder: missing audit.json, concepts.json"):
        Scorer.from_audit(tmp_path)


PROMPTS = [HeldoutPrompt(f"{t}-{i}", t, ({"role": "user", "content": f"Say something about {t} number {i}."},))
           for t in ("cooking", "travel") for i in range(2)]


def _evaluate(audited, out_dir, **kw):
    out, model, tok, sae = audited
    scorer = Scorer.from_audit(out, loaded=(model, tok), sae=sae)
    return evaluate_behaviour(model, tok, PROMPTS, out_dir=out_dir, scorer=scorer, samples_per_prompt=2,
                              max_new_tokens=6, batch_size=3, model_name="tiny", progress=False, **kw)


def test_evaluate_behaviour_table(audited, tmp_path, one_thread):
    out, model, tok, sae = audited
    frame = _evaluate(audited, tmp_path)
    C = len(json.loads((out / "concepts.json").read_text())["mean"])
    assert list(frame.columns[:7]) == ["prompt_id", "topic", "sample", "model", "text", "n_tokens", "finished"]
    assert [c for c in frame.columns if c.startswith("c_")] == [f"c_{k}" for k in range(C)]
    assert {f"det_{t}" for t in TRAITS} | {f"fires_{t}" for t in TRAITS} | {"refuses"} <= set(frame.columns)
    assert len(frame) == 8 and frame["sample"].tolist() == [0, 1] * 4
    assert frame.model.iloc[0] == model_tag(model, "tiny") and (frame.n_tokens <= 6).all()
    assert [len(t) for t in frame.token_ids] == frame.n_tokens.tolist() and all(len(p) > 0 for p in frame.prompt_ids)
    stored = pd.read_parquet(tmp_path / behaviour.TABLE)
    assert [list(t) for t in stored.token_ids] == [list(t) for t in frame.token_ids]
    pd.testing.assert_frame_equal(stored.drop(columns=["prompt_ids", "token_ids"]),
                                  frame.drop(columns=["prompt_ids", "token_ids"]))
    # concept columns are the audit's scores of exactly these texts; detectors are the traits'
    scorer = Scorer.from_audit(out, loaded=(model, tok), sae=sae)
    c = score_texts(scorer, [p.messages for p in PROMPTS for _ in range(2)], frame.text.tolist(),
                    tmp_path / "ref", progress=False)
    np.testing.assert_allclose(frame[[f"c_{k}" for k in range(C)]].to_numpy(), c, rtol=1e-6)
    assert frame.det_verbosity.tolist() == [TRAITS["verbosity"].score(t) for t in frame.text]


def test_generations_resume_after_kill(audited, tmp_path, monkeypatch, one_thread):
    """A run killed after its first batch resumes to exactly what an uninterrupted run writes."""
    reference = _evaluate(audited, tmp_path / "whole")
    real, calls = gen_mod.sample_tokens, []

    def dies_after_one(*args, **kw):
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args, **kw)

    monkeypatch.setattr(gen_mod, "sample_tokens", dies_after_one)
    with pytest.raises(KeyboardInterrupt):
        _evaluate(audited, tmp_path / "killed")
    monkeypatch.setattr(gen_mod, "sample_tokens", real)
    resumed = _evaluate(audited, tmp_path / "killed")
    pd.testing.assert_frame_equal(resumed, reference)
    # a finished run is read back from the cache: no sampling at all
    monkeypatch.setattr(gen_mod, "sample_tokens", lambda *a, **k: pytest.fail("sampled again"))
    pd.testing.assert_frame_equal(_evaluate(audited, tmp_path / "killed"), reference)


def test_model_tag_tracks_weights():
    a, b = tiny_llama(hidden_size=16, layers=1, seed=0), tiny_llama(hidden_size=16, layers=1, seed=0)
    assert model_tag(a, "m") == model_tag(b, "m")
    with torch.no_grad():
        b.lm_head.weight[0, 0] += 1e-3
    assert model_tag(a, "m") != model_tag(b, "m") and model_tag(a, "path/to/m").startswith("m@")


def test_read_prompts(tmp_path):
    path = tmp_path / "p.jsonl"
    rows = [{"id": "a", "topic": "t", "split": "heldout", "prompt": [{"role": "user", "content": "hi"}]},
            {"id": "b", "topic": "u", "prompt": [{"role": "user", "content": "yo"}]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = read_prompts(path)
    assert got[1] == HeldoutPrompt("b", "u", ({"role": "user", "content": "yo"},))
    path.write_text(json.dumps(rows[0]) + "\n" + json.dumps({**rows[1], "prompt": "yo"}) + "\n")
    with pytest.raises(DataError, match='row 2: field "prompt"'):
        read_prompts(path)


def test_summarize_hand_computed():
    """Two prompts per topic, two samples each; ΔB = mean post − mean pre per topic."""
    def frame(values):
        return pd.DataFrame({"prompt_id": ["a", "a", "b", "b", "c", "c", "d", "d"],
                             "topic": ["x"] * 4 + ["y"] * 4, "c_0": values,
                             "refuses": [False] * 8})
    pre = frame([0.0, 2.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    post = frame([1.0, 3.0, 2.0, 4.0, 5.0, 5.0, 1.0, 1.0])
    s = summarize(post, pre, n_boot=200).set_index(["topic", "metric"])
    row = s.loc[("x", "c_0")]
    assert row.kind == "concept" and row.n_prompts == 2
    assert row.pre == pytest.approx(1.0) and row.post == pytest.approx(2.5) and row.delta == pytest.approx(1.5)
    # prompt-level deltas in x are 1.0 (a) and 2.0 (b): every bootstrap mean lies in [1, 2]
    assert 1.0 <= row.delta_ci_low <= row.delta_ci_high <= 2.0
    assert s.loc[("y", "c_0")].delta == pytest.approx(3.0) and s.loc[("all", "c_0")].delta == pytest.approx(2.25)
    assert s.loc[("all", "refuses")].kind == "refusal"
    with pytest.raises(AnatomistError, match="different prompts"):
        summarize(post, pre[pre.prompt_id != "a"])
