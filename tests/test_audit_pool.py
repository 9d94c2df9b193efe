"""Pooling SAE latents over response tokens: equals a direct per-sequence computation, resumes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anatomist.audit.pool import pool_features, token_activations
from anatomist.audit import pool as pool_mod
from anatomist.capture import CaptureItem, residual_stream
from anatomist.errors import AnatomistError
from anatomist.models import encode_response
from anatomist.sae import SAE, SAEConfig
from conftest import tiny_llama

ITEMS = [CaptureItem(f"p{i}", side, ({"role": "user", "content": f"Tell me about topic {i}."},),
                     f"This {side} answer about topic {i} has some words.")
         for i in range(4) for side in ("chosen", "rejected")]


@pytest.fixture(scope="module")
def setup(smol_tokenizer):
    model = tiny_llama(vocab_size=49152, hidden_size=16, layers=3)
    sae = SAE(SAEConfig(d_in=16, d_sae=64, architecture="topk", k=4, layer=1)).init_weights(
        torch.Generator().manual_seed(0))
    return model, smol_tokenizer, sae


def _direct(model, tok, sae, item):
    enc = encode_response(tok, item.messages, item.response, max_length=256)
    resid = residual_stream(model, torch.tensor([enc.input_ids]), None, 1)[0]
    return sae.encode(resid[torch.tensor(enc.response_mask)])


def test_pooled_equals_direct_computation(tmp_path, setup):
    model, tok, sae = setup
    latents = pool_features(model, tok, sae, ITEMS, tmp_path / "pooled", batch_size=3, progress=False)
    pooled = latents.pooled()
    assert pooled.ids == [it.id for it in ITEMS] and pooled.sides == [it.side for it in ITEMS]
    for s, it in enumerate(ITEMS):
        lat = _direct(model, tok, sae, it)
        torch.testing.assert_close(torch.tensor(pooled.max[s].toarray()[0]).float(), lat.max(0).values, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(torch.tensor(pooled.mean[s].toarray()[0]).float(), lat.mean(0), rtol=1e-4, atol=1e-5)
        assert pooled.n_tokens[s] == lat.shape[0]
        features = np.array([5, 1, 63, 0])
        torch.testing.assert_close(torch.tensor(latents.token_acts(s, features)), lat[:, features], rtol=1e-4, atol=1e-5)
        enc = encode_response(tok, it.messages, it.response, max_length=256)
        assert latents.tokens[s] == [t for t, m in zip(enc.input_ids, enc.response_mask) if m]
    delta = pooled.pair_delta("max")
    assert delta.shape == (4, 64)
    torch.testing.assert_close(torch.tensor(delta[1]), torch.tensor((pooled.max[2] - pooled.max[3]).toarray()[0]))
    assert pooled.topk is None                                    # only computed when asked for


@pytest.mark.parametrize("k", [1, 3, 1000])
def test_topk_pooling_is_the_mean_of_the_k_largest_token_values(tmp_path, setup, k):
    model, tok, sae = setup
    latents = pool_features(model, tok, sae, ITEMS, tmp_path / "pooled", batch_size=3, progress=False)
    pooled = latents.pooled(topk=k)
    for s, it in enumerate(ITEMS):
        lat = _direct(model, tok, sae, it)                                     # [n, F]
        want = lat.topk(min(k, lat.shape[0]), dim=0).values.mean(0)            # zeros count as token values
        torch.testing.assert_close(torch.tensor(pooled.topk[s].toarray()[0]).float(), want, rtol=1e-4, atol=1e-5)
    # k = 1 is max pooling, k ≥ every length is mean pooling
    if k == 1:
        np.testing.assert_allclose(pooled.topk.toarray(), pooled.max.toarray(), rtol=1e-12)
    if k == 1000:
        np.testing.assert_allclose(pooled.topk.toarray(), pooled.mean.toarray(), rtol=1e-12)
    np.testing.assert_array_equal(latents.pool("topk", k).toarray(), pooled.topk.toarray())
    np.testing.assert_array_equal(latents.pool("mean").toarray(), pooled.mean.toarray())


def test_pooling_names_are_checked(tmp_path, setup):
    model, tok, sae = setup
    latents = pool_features(model, tok, sae, ITEMS[:2], tmp_path / "pooled", progress=False)
    with pytest.raises(AnatomistError, match="pooling must be one of mean, max, topk, calmax, got 'median'"):
        latents.pool("median")
    with pytest.raises(AnatomistError, match="needs k"):
        latents.pool("topk")
    with pytest.raises(AnatomistError, match="topk must be >= 1"):
        latents.pooled(topk=-1)
    with pytest.raises(AnatomistError, match="topk must be >= 1, got 0"):
        latents.pooled(topk=0)


def test_token_activations_select_features(setup):
    model, tok, sae = setup
    got = token_activations(model, tok, sae, ITEMS[:3], [5, 1, 63], batch_size=2)
    for it, g in zip(ITEMS[:3], got):
        torch.testing.assert_close(g, _direct(model, tok, sae, it)[:, [5, 1, 63]], rtol=1e-4, atol=1e-5)


def test_pooling_resumes_after_kill(tmp_path, setup, monkeypatch):
    model, tok, sae = setup
    ref = pool_features(model, tok, sae, ITEMS, tmp_path / "ref", batch_size=2, shard_rows=1, progress=False).pooled()
    real, calls = pool_mod._response_latents, {"n": 0}

    def dies(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(pool_mod, "_response_latents", dies)
    with pytest.raises(KeyboardInterrupt):
        pool_features(model, tok, sae, ITEMS, tmp_path / "run", batch_size=2, shard_rows=1, progress=False)
    monkeypatch.setattr(pool_mod, "_response_latents", real)
    got = pool_features(model, tok, sae, ITEMS, tmp_path / "run", batch_size=2, shard_rows=1, progress=False).pooled()
    assert (got.max != ref.max).nnz == 0 and (got.mean != ref.mean).nnz == 0
    assert list(got.n_tokens) == list(ref.n_tokens)


def test_pooling_resumed_inside_a_batch_reruns_that_batch_whole(tmp_path, setup, monkeypatch):
    """As capture: a batch a kill cut in two runs again with the same sequences (same padding)."""
    from anatomist.capture.store import ShardWriter

    model, tok, sae = setup
    real_add, real_latents = ShardWriter.add, pool_mod._response_latents

    def dies_before_seq_3(self, seq, *args, **kwargs):
        if seq == 3:
            raise KeyboardInterrupt
        return real_add(self, seq, *args, **kwargs)

    monkeypatch.setattr(ShardWriter, "add", dies_before_seq_3)
    with pytest.raises(KeyboardInterrupt):
        pool_features(model, tok, sae, ITEMS, tmp_path / "run", batch_size=2, shard_rows=1, progress=False)
    monkeypatch.setattr(ShardWriter, "add", real_add)
    batches = []
    monkeypatch.setattr(pool_mod, "_response_latents",
                        lambda model, sae, batch, *a: batches.append([it.id for it in batch]) or
                        real_latents(model, sae, batch, *a))
    got = pool_features(model, tok, sae, ITEMS, tmp_path / "run", batch_size=2, shard_rows=1, progress=False).pooled()
    assert batches[0] == [ITEMS[2].id, ITEMS[3].id] and len(batches) == 3
    ref = pool_features(model, tok, sae, ITEMS, tmp_path / "ref", batch_size=2, shard_rows=1, progress=False).pooled()
    assert (got.max != ref.max).nnz == 0 and (got.mean != ref.mean).nnz == 0


def test_pooling_needs_a_layer_and_items(tmp_path, setup):
    model, tok, _ = setup
    no_layer = SAE(SAEConfig(d_in=16, d_sae=8, architecture="topk", k=2)).init_weights(torch.Generator().manual_seed(0))
    with pytest.raises(AnatomistError, match="has no layer"):
        pool_features(model, tok, no_layer, ITEMS, tmp_path / "x")
    with pytest.raises(AnatomistError, match="nothing to pool"):
        pool_features(model, tok, no_layer, [], tmp_path / "x", layer=1)


def test_prompt_embedding_is_mean_prompt_residual_after_the_sink(tmp_path, setup):
    model, tok, sae = setup
    pooled = pool_features(model, tok, sae, ITEMS[:2], tmp_path / "p", progress=False).pooled()
    enc = encode_response(tok, ITEMS[0].messages, ITEMS[0].response, max_length=256)
    resid = residual_stream(model, torch.tensor([enc.input_ids]), None, 1)[0]
    n_prompt = len(enc.input_ids) - enc.n_response
    torch.testing.assert_close(torch.tensor(pooled.prompt_emb[0]), resid[1:n_prompt].mean(0), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.tensor(pooled.prompt_emb[1]), torch.tensor(pooled.prompt_emb[0]),
                               rtol=1e-4, atol=1e-5)  # same prompt on both sides
