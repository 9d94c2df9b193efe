"""`continuation_logps`: the log-prob of sampled tokens under the tempered distribution they were
drawn from — against the sampler's own record and a hand-built unpadded forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_llama

from anatomist.errors import AnatomistError
from anatomist.spec_decode.generate import generate
from anatomist.spec_decode.logps import continuation_logps

PROMPTS = [[5, 9, 17], [3], [40, 41, 42, 43, 44, 45], [7, 7]]


@torch.no_grad()
def _hand(model, prompt, tokens, temperature):
    ids = torch.tensor([prompt + tokens])
    logits = model(input_ids=ids).logits[0, len(prompt) - 1:-1].double() / temperature
    return float(logits.log_softmax(-1)[torch.arange(len(tokens)), torch.tensor(tokens)].sum())


def test_logps_are_what_the_sampler_recorded(one_thread):
    model = tiny_llama(vocab_size=96, hidden_size=32, layers=2)
    T = 0.7
    out = generate(model, PROMPTS, temperature=T, max_new_tokens=5, generator=torch.Generator().manual_seed(3))
    lp = continuation_logps(model, PROMPTS, out.tokens, temperature=T, batch_size=3)   # padded, two batches
    np.testing.assert_allclose(lp, [float(x.sum()) for x in out.logprobs], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(lp, [_hand(model, p, t, T) for p, t in zip(PROMPTS, out.tokens)], rtol=1e-5, atol=1e-4)
    # the temperature is the sampler's: at T = 1 the numbers differ
    assert not np.allclose(continuation_logps(model, PROMPTS, out.tokens, temperature=1.0), lp, atol=1e-3)
    assert not model.training


def test_logps_leave_a_training_model_in_training_mode(one_thread):
    model = tiny_llama(vocab_size=96, hidden_size=32, layers=2).train()
    continuation_logps(model, [[1, 2]], [[3]], temperature=1.0)
    assert model.training


@pytest.mark.parametrize("prompts, tokens, T, match", [([[1]], [[]], 1.0, "sequence 0: empty"),
                                                       ([[1], [2]], [[3]], 1.0, "2 prompts but 1"),
                                                       ([[1]], [[3]], 0.0, "temperature must be > 0")])
def test_bad_input_is_one_line(prompts, tokens, T, match):
    with pytest.raises(AnatomistError, match=match):
        continuation_logps(tiny_llama(vocab_size=96, hidden_size=32, layers=2), prompts, tokens, temperature=T)
