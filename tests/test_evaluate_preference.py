"""Held-out preference accuracy: batched log-probs equal a per-sequence reference, and the implicit
reward ranks hand-constructed pairs as built."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_llama

from anatomist.data import PreferencePair
from anatomist.errors import AnatomistError
from anatomist.evaluate.preference import pair_logps, preference_accuracy, ranked, response_logps
from anatomist.models import encode_response


class Bigram(torch.nn.Module):
    """logits(next | current token) = E[current] @ W + bias: a model whose log-probs we can
    compute by hand from its tables."""

    def __init__(self, vocab: int, bias: torch.Tensor | None = None, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.E = torch.nn.Parameter(torch.randn(vocab, 4, generator=g))
        self.W = torch.nn.Parameter(torch.randn(4, vocab, generator=g) * 0.5)
        self.bias = torch.nn.Parameter(torch.zeros(vocab) if bias is None else bias)

    def forward(self, input_ids, attention_mask=None):
        return SimpleNamespace(logits=self.E[input_ids] @ self.W + self.bias)   # [B, T, V]

    def logp_by_hand(self, tokenizer, prompt, response) -> float:
        enc = encode_response(tokenizer, prompt, response)
        ids = enc.input_ids
        with torch.no_grad():
            return sum(float(torch.log_softmax(self.E[ids[t - 1]] @ self.W + self.bias, dim=-1)[ids[t]])
                       for t in range(1, len(ids)) if enc.response_mask[t])


PROMPT = ({"role": "user", "content": "Name a fruit, please."},)


def fruit_pairs(smol_tokenizer):
    rows = [("I like banana.", "I like cherry."), ("Banana is best.", "Cherry is best."),
            ("A banana, of course.", "A cherry, of course."), ("Cherry, I think.", "Banana, I think.")]
    return [PreferencePair(f"p{i}", PROMPT, c, r, {"topic": "fruit" if i < 2 else "more"}) for i, (c, r) in enumerate(rows)]


def test_batched_logps_equal_per_sequence_reference(smol_tokenizer, one_thread):
    model = tiny_llama(vocab_size=49152, hidden_size=16, layers=2)
    prompts = [PROMPT, ({"role": "system", "content": "Be brief."}, *PROMPT), PROMPT]
    responses = ["Apple.", "A pear, ripe and sweet, is my favourite.", "Kiwi"]
    got, counts = response_logps(model, smol_tokenizer, prompts, responses, batch_size=2)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        enc = encode_response(smol_tokenizer, p, r)
        with torch.no_grad():
            logits = model(torch.tensor([enc.input_ids])).logits[0]              # [T, V]
        logp = torch.log_softmax(logits.double(), -1)
        want = sum(float(logp[t - 1, enc.input_ids[t]]) for t in range(1, len(enc.input_ids)) if enc.response_mask[t])
        assert got[i] == pytest.approx(want, rel=1e-5, abs=1e-4)
        assert counts[i] == enc.n_response


def test_implicit_reward_ranks_hand_constructed_pairs(smol_tokenizer):
    """The policy adds +4 to the logit of every "banana"-ish token: pairs whose chosen side says
    banana are ranked right, the last pair (chosen says cherry) wrong — accuracy 3/4 exactly."""
    pairs = fruit_pairs(smol_tokenizer)
    vocab = len(smol_tokenizer)
    banana = {t for w in ("banana", " banana", "Banana", " Banana")
              for t in smol_tokenizer(w, add_special_tokens=False)["input_ids"]}
    cherry = {t for w in ("cherry", " cherry", "Cherry", " Cherry")
              for t in smol_tokenizer(w, add_special_tokens=False)["input_ids"]}
    bias = torch.zeros(vocab)
    bias[list(banana - cherry)] = 4.0
    ref, policy = Bigram(vocab), Bigram(vocab, bias=bias)
    table, summary = preference_accuracy(policy, smol_tokenizer, pairs, reference=ref, beta=0.5, progress=False)
    assert table.correct.tolist() == [1.0, 1.0, 1.0, 0.0]
    assert summary["method"] == "implicit_reward" and summary["accuracy"] == 0.75 and summary["n"] == 4
    assert summary["by_topic"]["fruit"]["accuracy"] == 1.0 and summary["by_topic"]["more"]["accuracy"] == 0.5
    # rewards are β·(log π − log π_ref), computed by hand from the bigram tables
    for row, p in zip(table.itertuples(), pairs):
        for side in ("chosen", "rejected"):
            want = 0.5 * (policy.logp_by_hand(smol_tokenizer, p.prompt, getattr(p, side))
                          - ref.logp_by_hand(smol_tokenizer, p.prompt, getattr(p, side)))
            assert getattr(row, f"reward_{side}") == pytest.approx(want, rel=1e-4, abs=1e-4)
    # the reference's log-probs computed once (shared by several policies) give the same table
    ref_c, ref_r, _, _ = pair_logps(ref, smol_tokenizer, pairs)
    shared, _ = preference_accuracy(policy, smol_tokenizer, pairs, reference_logps=(ref_c, ref_r), beta=0.5,
                                    progress=False)
    pd.testing.assert_frame_equal(shared, table)
    with pytest.raises(AnatomistError, match="not both"):
        preference_accuracy(policy, smol_tokenizer, pairs, reference=ref, reference_logps=(ref_c, ref_r))
    # β scales margins, never the ranking
    _, other = preference_accuracy(policy, smol_tokenizer, pairs, reference=ref, beta=2.0, progress=False)
    assert other["accuracy"] == 0.75 and other["mean_margin"] == pytest.approx(4 * summary["mean_margin"], rel=1e-5)


def test_base_model_ranks_by_logprob_and_ties_count_half(smol_tokenizer):
    pairs = fruit_pairs(smol_tokenizer)
    model = Bigram(len(smol_tokenizer), seed=3)
    table, summary = preference_accuracy(model, smol_tokenizer, pairs, progress=False)
    assert summary["method"] == "logprob" and summary["beta"] is None
    np.testing.assert_allclose(table.margin, table.logp_chosen - table.logp_rejected)
    assert summary["accuracy"] == pytest.approx(float((table.margin > 0).mean()))
    assert 0 <= summary["accuracy_per_token"] <= 1
    _, same = preference_accuracy(model, smol_tokenizer, pairs, reference=model, progress=False)
    assert same["accuracy"] == 0.5 and same["ties"] == 4


def test_ranked_and_errors(smol_tokenizer):
    assert ranked(np.array([1.0, -2.0, 0.0])).tolist() == [1.0, 0.0, 0.5]
    with pytest.raises(AnatomistError, match="no held-out pairs"):
        preference_accuracy(None, smol_tokenizer, [])
