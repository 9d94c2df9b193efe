"""Loading, layer access, chat templating with response masks."""

from __future__ import annotations

import os

import pytest
import torch

from anatomist.errors import AnatomistError
from anatomist.models import apply_chat_template, decoder_layers, encode_response, resolve
from anatomist.models.cli import describe
from anatomist.models.layers import check_layer
from conftest import tiny_llama

Q = [{"role": "user", "content": "What is the capital of France?"}]


def test_decoder_layers_and_range_check():
    model = tiny_llama(layers=3)
    assert len(decoder_layers(model)) == 3
    assert check_layer(model, -1) == 2
    with pytest.raises(AnatomistError, match=r"layer 3 is out of range: the model has 3 layers \(0..2\)"):
        check_layer(model, 3)
    with pytest.raises(AnatomistError, match="cannot find the decoder layers of Linear"):
        decoder_layers(torch.nn.Linear(2, 2))


def test_resolve_rejects_missing_gguf_and_plain_files(tmp_path):
    with pytest.raises(AnatomistError, match="GGUF file not found"):
        resolve(str(tmp_path / "nope.gguf"))
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x")
    with pytest.raises(AnatomistError, match="expected a model folder"):
        resolve(str(f))
    assert resolve(str(tmp_path)) == str(tmp_path)


def test_unknown_model_is_a_one_line_error():
    from anatomist.models import load

    with pytest.raises(AnatomistError) as e:
        load("no-such-org/no-such-model-xyz")
    assert "cannot load" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("allow, local_only", [("", True), ("1", False)])
def test_hub_ids_read_the_local_cache_only_unless_allowed(monkeypatch, allow, local_only):
    """Offline by default: a hub id is looked up with local_files_only (no retries against the hub);
    ANATOMIST_ALLOW_HUB=1 lets transformers download. The error names the aliases and close matches."""
    import transformers

    from anatomist.models import loading

    seen = []

    def fake(name, **kwargs):
        seen.append(kwargs["local_files_only"])
        raise OSError("no such model")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", fake)
    monkeypatch.setenv(loading.HUB_ENV, allow)
    with pytest.raises(AnatomistError) as e:
        loading.load_tokenizer("SmolLM2-135M-instruc")
    assert seen == [local_only]
    assert "aliases: smollm2-135m-instruct; did you mean smollm2-135m-instruct?" in str(e.value)
    assert ("ANATOMIST_ALLOW_HUB=1" in str(e.value)) == local_only and "\n" not in str(e.value)


def test_response_mask_covers_exactly_the_response(smol_tokenizer):
    tok = smol_tokenizer
    enc = encode_response(tok, Q, "Paris is the capital.")
    ids = torch.tensor(enc.input_ids)
    mask = torch.tensor(enc.response_mask)
    assert tok.decode(ids[mask]) == "Paris is the capital.<|im_end|>"
    # The unmasked part is exactly the generation prompt a model would be given.
    assert ids[~mask].tolist() == apply_chat_template(tok, Q, add_generation_prompt=True)
    assert tok.decode(ids[~mask]).endswith("<|im_start|>assistant\n")
    assert mask.tolist() == sorted(mask.tolist())  # response tokens form the suffix


def test_truncation_cuts_prompt_from_left_then_response_end(smol_tokenizer):
    tok = smol_tokenizer
    long_prompt = [{"role": "user", "content": "word " * 300 + "What is the capital of France?"}]
    full = encode_response(tok, long_prompt, "Paris.", max_length=10_000)
    enc = encode_response(tok, long_prompt, "Paris.", max_length=64)
    assert len(enc.input_ids) == 64
    assert enc.prompt_truncated == len(full.input_ids) - 64 and enc.response_truncated == 0
    assert enc.input_ids[-enc.n_response:] == full.input_ids[-full.n_response:]
    capped = encode_response(tok, Q, "one two three four five six seven", max_response_tokens=3)
    assert capped.n_response == 3 and capped.response_truncated > 0
    # A prompt that leaves no room: the response is cut, never to nothing silently.
    with pytest.raises(AnatomistError, match="response has 0 tokens left after truncation"):
        encode_response(tok, Q, "Paris.", max_length=1)


def test_tokenizer_without_chat_template_is_an_error(smol_tokenizer):
    import copy

    tok = copy.deepcopy(smol_tokenizer)
    tok.chat_template = None
    with pytest.raises(AnatomistError, match="has no chat template"):
        encode_response(tok, Q, "Paris.")


def test_describe_tiny_model(smol_tokenizer):
    facts = describe(tiny_llama(layers=2), smol_tokenizer, "tiny")
    assert facts["layers"] == 2 and facts["d_model"] == 32 and facts["chat_template"]
    assert facts["parameters"] == sum(p.numel() for p in tiny_llama(layers=2).parameters())


def test_clear_stale_conversions_removes_dead_processes_folders_only(tmp_path):
    """A conversion killed mid-write leaves .<name>.pid<PID>.<random>/ (~0.5 GB); the next one
    removes it, but not the folder of a conversion still running, nor other models' folders."""
    import subprocess
    import sys

    from anatomist.models.loading import clear_stale_conversions

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead_pid = int(dead.stdout)
    name = "smollm2-135m-instruct"
    stale = tmp_path / f".{name}.pid{dead_pid}.ab12"
    running = tmp_path / f".{name}.pid{os.getpid()}.cd34"
    other = tmp_path / f".other-model.pid{dead_pid}.ef56"
    for d in (stale, running, other):
        (d / "sub").mkdir(parents=True)
        (d / "sub" / "model.safetensors").write_bytes(b"x")
    assert clear_stale_conversions(tmp_path, name) == [stale]
    assert not stale.exists() and running.is_dir() and other.is_dir()
