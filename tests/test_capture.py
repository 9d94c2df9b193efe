"""Residual capture: equals a plain hidden-states forward, stops early, stores and resumes."""

from __future__ import annotations

import json

import pytest
import torch

from anatomist.capture import ActivationStore, CaptureItem, capture, collate, residual_stream
from anatomist.capture import run as capture_run
from anatomist.errors import AnatomistError
from conftest import tiny_llama


def _ids(seed=0, b=3, t=9, vocab=128):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (b, t), generator=g)


@pytest.mark.parametrize("layer", [0, 2, -2])
def test_capture_equals_output_hidden_states(layer):
    model = tiny_llama(layers=4)
    ids = _ids()
    mask = torch.ones_like(ids)
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    got = residual_stream(model, ids, mask, layer)
    torch.testing.assert_close(got, ref[layer % 4 + 1], rtol=1e-5, atol=1e-6)


def test_capture_stops_after_the_layer():
    model = tiny_llama(layers=4)
    calls = []
    for i, block in enumerate(model.model.layers):
        block.register_forward_hook(lambda *_, i=i: calls.append(i))
    model.lm_head.register_forward_hook(lambda *_: calls.append("lm_head"))
    residual_stream(model, _ids(), None, 1)
    assert calls == [0, 1]
    calls.clear()
    out = residual_stream(model, _ids(), None, [2, 0])
    assert calls == [0, 1, 2] and sorted(out) == [0, 2]


def test_right_padding_does_not_change_real_tokens():
    model = tiny_llama(layers=3)
    rows = [[5, 6, 7, 8, 9, 10], [11, 12, 13]]
    ids, mask = collate(rows, pad_id=0)
    batched = residual_stream(model, ids, mask, 1)
    for i, row in enumerate(rows):
        alone = residual_stream(model, torch.tensor([row]), None, 1)[0]
        torch.testing.assert_close(batched[i, :len(row)], alone, rtol=1e-5, atol=1e-5)


ITEMS = [CaptureItem(f"p{i}", side, ({"role": "user", "content": f"Question {i}: why is the sky blue?"},),
                     f"Because of {side} scattering number {i}.")
         for i in range(5) for side in ("chosen", "rejected")]


@pytest.fixture(scope="module")
def wide_tiny():
    return tiny_llama(vocab_size=49152, hidden_size=16, layers=3)  # the real tokenizer's vocab


def test_store_round_trip_matches_direct_capture(tmp_path, wide_tiny, smol_tokenizer):
    from anatomist.models import encode_response

    store = capture(wide_tiny, smol_tokenizer, ITEMS, tmp_path / "acts", 1, batch_size=3, shard_tokens=40,
                    progress=False)
    assert len(store.shards) > 1 and store.n_sequences == len(ITEMS)
    assert store.sequences() == [(it.id, it.side) for it in ITEMS]
    data = store.load()
    for s, it in enumerate(ITEMS):
        enc = encode_response(smol_tokenizer, it.messages, it.response, max_length=256)
        rows = data["seq"] == s
        direct = residual_stream(wide_tiny, torch.tensor([enc.input_ids]), None, 1)[0]
        torch.testing.assert_close(data["acts"][rows], direct, rtol=1e-5, atol=1e-5)
        assert data["token"][rows].tolist() == enc.input_ids
        assert data["pos"][rows].tolist() == list(range(len(enc.input_ids)))
        assert data["response"][rows].tolist() == enc.response_mask


def test_keep_response_stores_only_response_tokens(tmp_path, wide_tiny, smol_tokenizer):
    store = capture(wide_tiny, smol_tokenizer, ITEMS, tmp_path / "r", 1, keep="response", progress=False)
    data = store.load()
    assert bool(data["response"].all())
    first = data["token"][data["seq"] == 0]
    assert smol_tokenizer.decode(first) == ITEMS[0].response + "<|im_end|>"


def test_resume_after_kill_equals_uninterrupted_run(tmp_path, wide_tiny, smol_tokenizer, monkeypatch):
    ref = capture(wide_tiny, smol_tokenizer, ITEMS, tmp_path / "ref", 2, batch_size=2, shard_tokens=1,
                  progress=False).load()
    real = capture_run.residual_stream
    calls = {"n": 0}

    def dies_on_third_batch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # stands in for kill: nothing after this point runs
        return real(*args, **kwargs)

    monkeypatch.setattr(capture_run, "residual_stream", dies_on_third_batch)
    out = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        capture(wide_tiny, smol_tokenizer, ITEMS, out, 2, batch_size=2, shard_tokens=1, progress=False)
    with pytest.raises(AnatomistError, match="capture is not finished"):
        ActivationStore(out)
    done = {p.name: p.read_bytes() for p in out.glob("shard_*.safetensors")}
    assert len(done) == 4  # two batches of two sequences, one shard per sequence
    (out / ".shard_00004.safetensors.tmp999").write_bytes(b"half-written")  # a kill mid-write

    monkeypatch.setattr(capture_run, "residual_stream", real)
    resumed = capture(wide_tiny, smol_tokenizer, ITEMS, out, 2, batch_size=2, shard_tokens=1, progress=False)
    assert {n: (out / n).read_bytes() for n in done} == done  # finished shards never rewritten
    assert not list(out.glob(".*tmp*"))
    got = resumed.load()
    for key in ref:
        assert torch.equal(got[key], ref[key]), key
    assert json.loads((out / "manifest.json").read_text())["complete"]


def test_first_batch_of_a_resumed_run():
    assert [capture_run.first_batch(done, 10, 4) for done in (0, 3, 4, 5, 9, 10)] == [0, 0, 4, 4, 8, 10]
    assert capture_run.first_batch(10, 10, 8) == 10     # a finished store runs nothing, even after a partial batch


def test_resume_inside_a_batch_reruns_that_batch_whole(tmp_path, wide_tiny, smol_tokenizer, monkeypatch):
    """A kill between two shards of one batch: the resumed run pads that batch as the uninterrupted
    run did (a batch of other sequences rounds differently on some CPUs), storing only what is missing."""
    from anatomist.capture.store import ShardWriter

    real_add, real_stream = ShardWriter.add, capture_run.residual_stream

    def dies_before_seq_3(self, seq, *args, **kwargs):
        if seq == 3:
            raise KeyboardInterrupt      # sequences 0-2 are on disk: the batch [2, 3] was cut in two
        return real_add(self, seq, *args, **kwargs)

    monkeypatch.setattr(ShardWriter, "add", dies_before_seq_3)
    out = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        capture(wide_tiny, smol_tokenizer, ITEMS, out, 2, batch_size=2, shard_tokens=1, progress=False)
    assert len(list(out.glob("shard_*.safetensors"))) == 3
    monkeypatch.setattr(ShardWriter, "add", real_add)
    batches = []
    monkeypatch.setattr(capture_run, "residual_stream",
                        lambda model, ids, mask, layer: batches.append(ids) or real_stream(model, ids, mask, layer))
    got = capture(wide_tiny, smol_tokenizer, ITEMS, out, 2, batch_size=2, shard_tokens=1, progress=False).load()
    _, want_first, _ = capture_run.encode_batch(smol_tokenizer, ITEMS[2:4], 256)
    assert len(batches) == 4 and torch.equal(batches[0], want_first)   # batches [2,3] [4,5] [6,7] [8,9]
    ref = capture(wide_tiny, smol_tokenizer, ITEMS, tmp_path / "ref", 2, batch_size=2, shard_tokens=1,
                  progress=False).load()
    for key in ref:
        assert torch.equal(got[key], ref[key]), key


def test_resume_with_other_settings_is_refused(tmp_path, wide_tiny, smol_tokenizer):
    capture(wide_tiny, smol_tokenizer, ITEMS[:2], tmp_path / "a", 1, progress=False)
    with pytest.raises(AnatomistError, match=r"holds a capture with other settings \(layer\)"):
        capture(wide_tiny, smol_tokenizer, ITEMS[:2], tmp_path / "a", 2, progress=False)


def test_bad_capture_arguments(tmp_path, wide_tiny, smol_tokenizer):
    with pytest.raises(AnatomistError, match="nothing to capture"):
        capture(wide_tiny, smol_tokenizer, [], tmp_path / "e", 1)
    with pytest.raises(AnatomistError, match="keep must be one of"):
        capture(wide_tiny, smol_tokenizer, ITEMS, tmp_path / "e", 1, keep="prompt")
    with pytest.raises(AnatomistError, match="out of range"):
        capture(wide_tiny, smol_tokenizer, ITEMS, tmp_path / "e", 7)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "capture.json").write_text("{}")
    with pytest.raises(AnatomistError, match="junk: holds format None, expected 'anatomist.activations/1'"):
        ActivationStore(tmp_path / "junk")
    (tmp_path / "junk" / "capture.json").write_text('{"format": "anatomist.activations/1"}')
    (tmp_path / "junk" / "shard_00000.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(AnatomistError, match="not a readable activation shard"):
        ActivationStore(tmp_path / "junk", allow_partial=True)
