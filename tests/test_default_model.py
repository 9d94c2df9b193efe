"""The real default model end to end: install path, GGUF conversion, load, chat-template, capture.

The smoke test runs in `make test` (CI) so a broken install or conversion path cannot land green.
"""

from __future__ import annotations

import pytest
import torch

from anatomist.capture import capture, collate, items_from_pairs
from anatomist.models import apply_chat_template, encode_response
from conftest import HH_FILE


@pytest.mark.smoke
def test_default_model_loads_templates_and_captures(smol, tmp_path):
    from anatomist.data import load_pairs

    model, tok, source = smol
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_hidden_layers == 30
    assert next(model.parameters()).dtype == torch.float32
    assert source.endswith("smollm2-135m-instruct")

    # It is a real instruct model: greedy answer to a factual question.
    ids = torch.tensor([apply_chat_template(tok, [{"role": "user", "content": "What is the capital of France?"}])])
    out = model.generate(ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.shape[1]:])

    pairs = list(load_pairs(HH_FILE, limit=3))
    items = items_from_pairs(pairs)
    store = capture(model, tok, items, tmp_path / "acts", 15, keep="all", progress=False)
    data = store.load()
    # Stored activations equal the plain hidden-states forward at block 15 (= hidden_states[16]).
    encoded = [encode_response(tok, it.messages, it.response, max_length=256).input_ids for it in items]
    ids, mask = collate(encoded, tok.pad_token_id)
    with torch.no_grad():
        hs = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[16]
    for s, row in enumerate(encoded):
        torch.testing.assert_close(data["acts"][data["seq"] == s], hs[s, :len(row)], rtol=1e-4, atol=1e-4)
