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


@pytest.mark.smoke
def test_cli_model_info_and_capture(tmp_path):
    import json
    import subprocess
    import sys

    def run(*args):
        return subprocess.run([sys.executable, "-m", "anatomist.cli", *args], capture_output=True, text=True,
                              timeout=300)

    info = run("model", "info")
    assert info.returncode == 0, info.stderr
    assert "LlamaForCausalLM" in info.stdout and "134,515,008" in info.stdout

    out = tmp_path / "acts"
    cap = run("capture", "--data", str(HH_FILE), "--limit", "2", "--layer", "3", "--out", str(out))
    assert cap.returncode == 0, cap.stderr
    assert "4 sequences" in cap.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and manifest["n_sequences"] == 4

    bad = run("capture", "--data", str(HH_FILE), "--limit", "2", "--layer", "30", "--out", str(tmp_path / "b"))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip() == "error: layer 30 is out of range: the model has 30 layers (0..29)"
