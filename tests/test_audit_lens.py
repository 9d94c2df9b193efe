"""Logit lens of concept directions: the final norm and unembedding of a tiny random Llama."""

from __future__ import annotations

import numpy as np
import torch

from anatomist.audit.concepts import Concepts
from anatomist.audit.lens import concept_lens, lens_logits, top_tokens
from anatomist.models.layers import final_norm
from conftest import tiny_llama


def test_lens_logits_are_the_unembedding_of_the_normed_direction():
    model = tiny_llama(vocab_size=64, hidden_size=32, layers=1)
    with torch.no_grad():
        model.model.norm.weight.copy_(torch.linspace(0.5, 2.0, 32))        # a gain the lens must apply
    d = torch.randn(3, 32)
    rms = d.pow(2).mean(-1, keepdim=True).add(model.config.rms_norm_eps).sqrt()
    expected = (d / rms * model.model.norm.weight) @ model.lm_head.weight.T   # [3, V]
    torch.testing.assert_close(lens_logits(model, d), expected, rtol=1e-5, atol=1e-5)
    assert final_norm(model) is model.model.norm


def test_a_concept_along_a_token_embedding_promotes_that_token():
    model = tiny_llama(vocab_size=64, hidden_size=32, layers=1)          # tied: lm_head = embeddings
    E = model.lm_head.weight.detach()                                    # [V, D]
    W_dec = torch.randn(6, 32)
    W_dec[[1, 4]] = E[[7, 7]] * torch.tensor([[1.0], [3.0]])              # cluster 0: two features on token 7
    W_dec[2] = E[20]                                                     # cluster 1: token 20
    concepts = Concepts(np.array([1, 4, 2]), np.array([0, 0, 1]), np.array([1.0, 0.5, 1.0]), np.zeros(2), np.ones(2))
    decode = lambda ids: "".join(f"<{i}>" for i in ids)  # noqa: E731
    lens = concept_lens(model, decode, W_dec, concepts, k=3)
    assert [row[0] for row in lens] == ["<7>", "<20>"] and all(len(row) == 3 for row in lens)


def test_top_tokens_skip_byte_pieces_and_blanks():
    logits = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0]])
    text = {0: "\ufffd", 1: " ", 2: " cat", 3: "🎉", 4: " dog"}
    assert top_tokens(logits, lambda ids: text[ids[0]], k=2) == [[" cat", "🎉"]]
