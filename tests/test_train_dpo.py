"""The DPO loop: cached-bottom fast path vs a full forward, shaping wiring, resume-after-kill, LoRA."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from anatomist.errors import AnatomistError, DataError
from anatomist.shape.losses import dpo_loss, sequence_logps
from anatomist.shape.pairs import ShapedPair
from anatomist.shape.steer import add_to_residual
from anatomist.train.batches import (
    collate,
    encode_pairs,
    epoch_microbatches,
    step_microbatches,
)
from anatomist.train.dpo import DPOConfig, Steer, batch_dpo, lr_factor, train_dpo
from anatomist.train.metrics import leakage
from anatomist.train.split import SplitLM, check_split, precompute
from tests.conftest import tiny_llama

PROMPTS = ["What is the capital of France?", "Name a colour.", "How do I boil an egg?", "Say hi.",
           "Give me a number.", "Why is the sky blue?"]


def _pairs(offsets=None) -> list[ShapedPair]:
    offsets = offsets or [0.0] * len(PROMPTS)
    return [ShapedPair(f"p{i}", ({"role": "user", "content": q},), f"A good answer number {i}.",
                       f"bad {i} ✨✨ **really** bad", offset=o) for i, (q, o) in enumerate(zip(PROMPTS, offsets))]


def _model(seed=0):
    return tiny_llama(vocab_size=49152, hidden_size=16, layers=4, seed=seed)  # the real tokenizer's vocab


def _setup(tok, tmp_path, pairs, boundary=2):
    model = _model()
    seqs = encode_pairs(tok, pairs, max_length=64, max_response_tokens=None)
    split = SplitLM(model, boundary)
    cache = precompute(split, seqs, tmp_path / "cache", pad_id=tok.pad_token_id, batch_size=4, device="cpu",
                       progress=False)
    return model, seqs, split, cache


def _perturb_top(model, boundary, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for block in model.model.layers[boundary:]:
            for p in block.parameters():
                p.add_(0.2 * torch.randn(p.shape, generator=g))


def _full_path_logps(model, batch, keep_rows) -> torch.Tensor:
    """Reference path: one ordinary forward, logits[t] scores ids[t+1], response mask × keep."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits  # [2B, T, V]
    labels = batch.input_ids[:, 1:]
    mask = batch.response[:, 1:].float() * keep_rows[:, 1:]
    return sequence_logps(logits[:, :-1], labels, mask)                      # [2B]


def _keep_rows(seqs, batch):
    keep = torch.zeros(batch.input_ids.shape)
    for b, s in enumerate(batch.seq_index):
        keep[b, seqs[s].prompt_len:len(seqs[s].ids)] = torch.tensor(seqs[s].keep)
    return keep


def test_fast_path_equals_full_forward_loss_and_grads(smol_tokenizer, tmp_path, one_thread):
    pairs = _pairs([0.0, 0.7, -1.2, 0.0, 0.3, 0.0])
    model, seqs, split, cache = _setup(smol_tokenizer, tmp_path, pairs)
    reference = copy.deepcopy(model)
    _perturb_top(model, 2)
    cfg = DPOConfig(beta=0.3)
    idx = [1, 2]
    batch = collate(seqs, idx, smol_tokenizer.pad_token_id)
    offsets = torch.tensor([pairs[i].offset for i in idx])
    top = [p for b in model.model.layers[2:] for p in b.parameters()]

    fast = batch_dpo(split, cache, batch, offsets, cfg, "cpu")
    fast.loss.sum().backward()
    g_fast = [p.grad.clone() for p in top]
    model.zero_grad()

    keep = _keep_rows(seqs, batch)
    pol = _full_path_logps(model, batch, keep)
    with torch.no_grad():
        ref = _full_path_logps(reference, batch, keep)
    slow = dpo_loss(*pol.chunk(2), *ref.chunk(2), beta=0.3, offset=offsets)
    slow.loss.sum().backward()
    assert slow.loss.min() > 0.05  # the perturbation made the loss non-trivial
    torch.testing.assert_close(fast.loss, slow.loss, atol=1e-5, rtol=1e-5)
    for gf, p in zip(g_fast, top):
        torch.testing.assert_close(gf, p.grad, atol=1e-5, rtol=1e-4)
    assert check_split(split, seqs, [0, 3], pad_id=smol_tokenizer.pad_token_id, device="cpu") < 1e-4


def test_step0_loss_is_hand_computed_with_offsets(smol_tokenizer, tmp_path, one_thread):
    # Policy == reference at step 0, so Δθ = 0 and L = −log σ(−offset) = softplus(offset).
    pairs = _pairs([0.0, 1.0, -2.0, 0.0, 0.0, 0.0])
    _, seqs, split, cache = _setup(smol_tokenizer, tmp_path, pairs)
    batch = collate(seqs, [0, 1, 2], smol_tokenizer.pad_token_id)
    out = batch_dpo(split, cache, batch, torch.tensor([0.0, 1.0, -2.0]), DPOConfig(beta=0.1), "cpu")
    expected = torch.tensor([math.log(2), math.log(1 + math.e), math.log(1 + math.exp(-2.0))])
    torch.testing.assert_close(out.loss, expected, atol=1e-6, rtol=0)
    assert float(out.chosen_reward.abs().max()) == 0.0
    ipo = batch_dpo(split, cache, batch, torch.tensor([0.0, 1.0, -2.0]), DPOConfig(beta=0.1, loss_type="ipo"), "cpu")
    # (Δθ − offset/β − 1/(2β))² with β = 0.1: (−5)², (−10 − 5)², (20 − 5)²
    torch.testing.assert_close(ipo.loss, torch.tensor([25.0, 225.0, 225.0]), atol=1e-4, rtol=0)


def test_token_masks_all_ones_equal_plain_and_zeros_drop_tokens(smol_tokenizer, tmp_path, one_thread):
    plain = _pairs()
    n_c = [s.n_response for s in encode_pairs(smol_tokenizer, plain, max_length=64, max_response_tokens=None)]
    ones = [ShapedPair(p.id, p.prompt, p.chosen, p.rejected, chosen_token_mask=(1,) * (n_c[2 * i] + 5),
                       rejected_token_mask=(1,) * n_c[2 * i + 1]) for i, p in enumerate(plain)]
    first_only = [ShapedPair(p.id, p.prompt, p.chosen, p.rejected,
                             chosen_token_mask=(1,) + (0,) * (n_c[2 * i] - 1)) for i, p in enumerate(plain)]
    model, seqs, split, cache = _setup(smol_tokenizer, tmp_path, plain)
    _perturb_top(model, 2)
    cfg, off = DPOConfig(), torch.zeros(2)
    base = batch_dpo(split, cache, collate(seqs, [0, 1], 0), off, cfg, "cpu")
    seqs1 = encode_pairs(smol_tokenizer, ones, max_length=64, max_response_tokens=None)
    same = batch_dpo(split, cache, collate(seqs1, [0, 1], 0), off, cfg, "cpu")
    assert torch.equal(base.loss, same.loss)
    # Only the first chosen token kept: the chosen reward is β·(logπ − logπ_ref) of that token alone.
    seqs0 = encode_pairs(smol_tokenizer, first_only, max_length=64, max_response_tokens=None)
    b0 = collate(seqs0, [0, 1], 0)
    masked = batch_dpo(split, cache, b0, off, cfg, "cpu")
    with torch.no_grad():
        pol = split.response_logps(split.top(cache.batch_hidden(b0, split, "cpu"), b0.attention_mask), b0)
    ref = cache.batch_ref(b0)
    first = [int((b0.pred_rows == r).nonzero()[0]) for r in (0, 1)]
    torch.testing.assert_close(masked.chosen_reward, cfg.beta * (pol[first] - ref[first]), atol=1e-6, rtol=0)
    torch.testing.assert_close(masked.rejected_reward, base.rejected_reward)
    assert not torch.equal(masked.chosen_reward, base.chosen_reward)
    short = [ShapedPair("s", plain[0].prompt, plain[0].chosen, plain[0].rejected, chosen_token_mask=(1, 1))]
    with pytest.raises(DataError, match="chosen_token_mask"):
        encode_pairs(smol_tokenizer, short, max_length=64, max_response_tokens=None)


def _params(model):
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters()}


def _timeless(history):
    return [{k: v for k, v in row.items() if k != "dpo/step_seconds"} for row in history]


def test_resume_after_kill_equals_uninterrupted_run(smol_tokenizer, tmp_path, one_thread):
    pairs = _pairs([0.0, 0.5, 0.0, -0.5, 0.0, 1.0])
    cfg = DPOConfig(beta=0.5, lr=5e-3, steps=5, batch_size=2, grad_accum=2, ckpt_every=2, train_layers=2)
    kw = {"cache_dir": tmp_path / "cache", "progress": False, "save_model": False}
    full = train_dpo(_model(), smol_tokenizer, pairs, cfg, tmp_path / "full", **kw)
    killed = train_dpo(_model(), smol_tokenizer, pairs, cfg, tmp_path / "run", stop_after=3, **kw)
    assert len(killed.history) == 3
    resumed = train_dpo(_model(), smol_tokenizer, pairs, cfg, tmp_path / "run", **kw)
    a, b = _params(full.model), _params(resumed.model)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert _timeless(full.history) == _timeless(resumed.history)
    assert not torch.equal(a["model.layers.3.mlp.up_proj.weight"], _params(_model())["model.layers.3.mlp.up_proj.weight"])
    assert torch.equal(a["model.layers.1.mlp.up_proj.weight"], _params(_model())["model.layers.1.mlp.up_proj.weight"])
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2, 3, 4, 5]  # the killed step 3 was redone, once
    seqs = encode_pairs(smol_tokenizer, pairs, max_length=cfg.max_length, max_response_tokens=cfg.max_response_tokens)
    lengths = [len(seqs[2 * i].ids) + len(seqs[2 * i + 1].ids) for i in range(len(pairs))]
    first = [i for m in step_microbatches(lengths, 2, 2, 0, 0) for i in m]
    # step 1: policy == reference, so the loss is the mean of softplus(offset) over its 4 pairs
    assert full.history[0]["dpo/loss"] == pytest.approx(
        sum(math.log(1 + math.exp(pairs[i].offset)) for i in first) / 4, abs=1e-6)
    with pytest.raises(AnatomistError, match="other settings"):
        train_dpo(_model(), smol_tokenizer, pairs, DPOConfig(**{**cfg.__dict__, "beta": 0.2}), tmp_path / "run", **kw)
    # same tokens, other shaping (another λ): never resumed as the old run
    with pytest.raises(AnatomistError, match="other settings"):
        train_dpo(_model(), smol_tokenizer, _pairs([0.0, 0.5, 0.0, -0.5, 0.0, 2.0]), cfg, tmp_path / "run", **kw)


def test_training_moves_margin_and_saves_a_loadable_policy(smol_tokenizer, tmp_path, one_thread):
    from transformers import AutoModelForCausalLM

    pairs = _pairs()
    cfg = DPOConfig(beta=0.5, lr=1e-2, steps=8, batch_size=3, grad_accum=1, train_layers=2, warmup_ratio=0.0)
    res = train_dpo(_model(), smol_tokenizer, pairs, cfg, tmp_path / "out", cache_dir=tmp_path / "c",
                    concept_deltas={"emoji": [-1.0, -1.0, -0.5, -2.0, -1.5, -0.2]}, progress=False)
    h = res.history
    assert h[0]["dpo/loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert h[-1]["dpo/loss"] < 0.5 * math.log(2) and h[-1]["dpo/accuracy"] == 1.0
    assert {"dpo/reward_margin", "dpo/chosen_reward", "dpo/rejected_reward", "dpo/lr", "dpo/step_seconds",
            "dpo/leak/emoji"} <= set(h[-1])
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "policy", use_safetensors=True)
    a, b = _params(res.model), _params(loaded)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["steps"] == 8


def test_lora_path_trains_adapters_only_on_top_blocks(smol_tokenizer, tmp_path, one_thread):
    pairs = _pairs()
    base = _params(_model())
    cfg = DPOConfig(beta=0.5, lr=1e-2, steps=3, batch_size=3, grad_accum=1, train_layers=1, lora_r=2,
                    warmup_ratio=0.0)
    res = train_dpo(_model(), smol_tokenizer, pairs, cfg, tmp_path / "lora", cache_dir=tmp_path / "c",
                    progress=False)
    assert res.history[0]["dpo/loss"] == pytest.approx(math.log(2), abs=1e-6)  # LoRA B = 0 at init
    assert res.history[-1]["dpo/loss"] < res.history[0]["dpo/loss"]
    merged = _params(res.model)
    changed = {n for n in base if not torch.equal(base[n], merged[n])}
    assert changed and all(n.startswith("model.layers.3.") for n in changed)
    assert (tmp_path / "lora" / "adapter" / "adapter_model.safetensors").is_file()


def test_steering_goes_on_trained_blocks_of_the_policy_only(smol_tokenizer, tmp_path, one_thread):
    pairs = _pairs()
    _, seqs, split, cache = _setup(smol_tokenizer, tmp_path, pairs, boundary=2)
    batch = collate(seqs, [0, 1], 0)
    plain = batch_dpo(split, cache, batch, torch.zeros(2), DPOConfig(), "cpu")
    steered = batch_dpo(split, cache, batch, torch.zeros(2), DPOConfig(), "cpu", steer=Steer(2, torch.full((16,), 3.0)))
    assert float(plain.chosen_reward.abs().max()) == 0.0  # policy == reference without steering
    assert float(steered.chosen_reward.abs().max()) > 1e-3  # the policy forward was steered, the reference not
    # Steering at the boundary (block 1's output = the cached h_2) equals a hook in a full forward.
    at_boundary = batch_dpo(split, cache, batch, torch.zeros(2), DPOConfig(), "cpu", steer=Steer(1, torch.full((16,), 3.0)))
    keep = _keep_rows(seqs, batch)
    with add_to_residual(split.model, 1, torch.full((16,), 3.0), positions=batch.response):
        pol = _full_path_logps(split.model, batch, keep)
    ref = _full_path_logps(split.model, batch, keep)
    torch.testing.assert_close(at_boundary.chosen_reward, 0.1 * (pol - ref)[:2], atol=1e-5, rtol=1e-4)
    with pytest.raises(AnatomistError, match="train_layers >= 3"):
        train_dpo(_model(), smol_tokenizer, pairs, DPOConfig(train_layers=2, steps=1), tmp_path / "s",
                  steer=(0, torch.ones(16)), cache_dir=tmp_path / "cache", progress=False)


def test_a_shaped_value_brings_its_steering_and_deltas(smol_tokenizer, tmp_path, one_thread):
    from anatomist.shape.recipe import Shaped

    pairs, steer, deltas = _pairs(), Steer(3, torch.full((16,), 2.0)), {"0": [1.0, -1.0, 0.5, 2.0, 0.0, -0.5]}
    cfg = DPOConfig(beta=0.5, lr=1e-2, steps=4, batch_size=3, grad_accum=1, train_layers=2, warmup_ratio=0.0)
    kw = {"cache_dir": tmp_path / "c", "progress": False, "save_model": False}
    given = train_dpo(_model(), smol_tokenizer, pairs, cfg, tmp_path / "a", steer=steer, concept_deltas=deltas, **kw)
    shaped = train_dpo(_model(), smol_tokenizer, Shaped(pairs, steer=steer, concept_deltas=deltas), cfg,
                       tmp_path / "b", **kw)
    assert _timeless(shaped.history) == _timeless(given.history) and "dpo/leak/0" in given.history[-1]
    assert given.history[0]["dpo/reward_margin"] != 0.0                       # steered: policy ≠ reference at step 1
    with pytest.raises(AnatomistError, match="come with the Shaped pairs"):
        train_dpo(_model(), smol_tokenizer, Shaped(pairs), cfg, tmp_path / "c", steer=steer, **kw)


def test_pure_helpers_hand_computed():
    assert lr_factor(0, 10, 2, "cosine") == 0.5 and lr_factor(1, 10, 2, "cosine") == 1.0
    assert lr_factor(2, 10, 2, "cosine") == 1.0 and lr_factor(6, 10, 2, "cosine") == pytest.approx(0.5)
    assert lr_factor(6, 10, 2, "linear") == pytest.approx(0.5) and lr_factor(9, 10, 2, "constant") == 1.0
    assert leakage(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([2.0, 4.0, 6.0])) == pytest.approx(1.0)
    assert leakage(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([3.0, 1.0, 2.0])) == pytest.approx(-0.5)
    assert leakage(torch.zeros(4), torch.arange(4.0)) is None
    lengths = [5, 1, 9, 3, 7, 2, 8]
    ep = epoch_microbatches(lengths, 3, seed=0, epoch=0)
    assert sorted(i for b in ep for i in b) == list(range(7)) and ep == epoch_microbatches(lengths, 3, 0, 0)
    assert step_microbatches(lengths, 3, 2, 0, 1) == [ep[2], epoch_microbatches(lengths, 3, 0, 1)[0]]
    with pytest.raises(AnatomistError):
        DPOConfig(loss_type="hinge")
    from anatomist.shape.recipe import split_spec

    assert split_spec("bold / emoji=-1.5", "=", "--lam") == ("bold / emoji", -1.5)
    for bad in ("3=nan", "3=inf", "=1", "3=x"):
        with pytest.raises(AnatomistError, match="expected CONCEPT=NUMBER"):
            split_spec(bad, "=", "--lam")


def test_cli_trains_a_folder_model_end_to_end(smol_tokenizer, tmp_path, one_thread):
    from typer.testing import CliRunner

    from anatomist.cli import app

    _model().save_pretrained(tmp_path / "tiny", safe_serialization=True)
    smol_tokenizer.save_pretrained(tmp_path / "tiny")
    rows = [{"id": p.id, "prompt": list(p.prompt), "chosen": [{"role": "assistant", "content": p.chosen}],
             "rejected": [{"role": "assistant", "content": p.rejected}]} for p in _pairs()]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["dpo", "--data", str(tmp_path / "d.jsonl"), "--out", str(tmp_path / "run"), "--model", str(tmp_path / "tiny"),
            "--steps", "2", "--batch-size", "3", "--grad-accum", "1", "--train-layers", "1", "--lr", "1e-3",
            "--cache-dir", str(tmp_path / "cache")]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "dpo/loss" in r.output and (tmp_path / "run" / "policy" / "model.safetensors").is_file()
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 2
    r = CliRunner().invoke(app, [*args, "--lam", "3=-1"])
    assert isinstance(r.exception, AnatomistError) and "--audit" in str(r.exception)
    assert CliRunner().invoke(app, ["dpo", "--help"]).exit_code == 0


def test_a_run_shorter_than_an_epoch_precomputes_only_its_pairs(smol_tokenizer, tmp_path, one_thread):
    from anatomist.train.dpo import pair_lengths, prepare

    cfg = DPOConfig(batch_size=2, grad_accum=1, train_layers=2)
    prep = prepare(_model(), smol_tokenizer, _pairs(), cfg, cache_dir=tmp_path, steps=1, progress=False)
    first = step_microbatches(pair_lengths(prep.seqs), 2, 1, 0, 0)[0]
    cached = {i for i, r in enumerate(prep.cache.ref) if r is not None}
    assert cached == {r for i in first for r in (2 * i, 2 * i + 1)}
    assert all(prep.cache.hidden[r].shape == (len(prep.seqs[r].ids), 16) for r in cached)


def test_cli_shaping_flags_reach_the_loss(smol_tokenizer, tmp_path, one_thread):
    from typer.testing import CliRunner

    from anatomist.cli import app
    from anatomist.sae import SAE, SAEConfig, save_sae
    from tests.test_shape_audit import make_audit

    _model().save_pretrained(tmp_path / "tiny", safe_serialization=True)
    smol_tokenizer.save_pretrained(tmp_path / "tiny")
    sae = SAE(SAEConfig(d_in=16, d_sae=16, architecture="topk", k=4, layer=3)).init_weights(
        torch.Generator().manual_seed(0))
    save_sae(sae, tmp_path / "sae")
    audit = make_audit(tmp_path / "audit", tokens=None, sae=str(tmp_path / "sae"), layer=3)
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"id": i, "prompt": f"question {i}", "chosen": f"yes {i}",
                                        "rejected": f"no {i}"}) + "\n" for i in ("p0", "p1", "p2", "p3")))
    base = ["dpo", "--data", str(data), "--model", str(tmp_path / "tiny"), "--audit", str(audit), "--steps", "2",
            "--batch-size", "4", "--grad-accum", "1", "--train-layers", "1", "--lr", "1e-2", "--warmup", "0",
            "--cache-dir", str(tmp_path / "cache")]
    r = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "shaped"), "--lam", "emoji=-2", "--lam", "1=0.5",
                                 "--inoculate", "0"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in (tmp_path / "shaped" / "metrics.jsonl").read_text().splitlines()]
    # offsets −2·Δc₀ + 0.5·Δc₁ = −2, −3, 1.5, −8 (test_shape_audit); at step 1 Δθ = 0, so L = mean softplus(offset)
    expected = sum(math.log(1 + math.exp(o)) for o in (-2.0, -3.0, 1.5, -8.0)) / 4
    assert rows[0]["dpo/loss"] == pytest.approx(expected, abs=1e-6)
    assert "dpo/leak/0" not in rows[0]  # every margin is 0 at step 1: no correlation yet
    assert -1 <= rows[1]["dpo/leak/0"] <= 1 and -1 <= rows[1]["dpo/leak/1"] <= 1
    # response length as the concept: offsets −Δc_len with c_len the standardized log length
    n = np.array([[8, 2], [4, 4], [2, 8], [16, 1]])
    pd.DataFrame({"pair_id": ["p0", "p1", "p2", "p3"], "topic_id": 0, "n_chosen": n[:, 0],
                  "n_rejected": n[:, 1]}).to_parquet(audit / "length_pairs.parquet")
    r = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "short"), "--lam", "length=-1"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in (tmp_path / "short" / "metrics.jsonl").read_text().splitlines()]
    dz = np.diff(np.log(n[:, ::-1]), axis=1)[:, 0] / np.log(n).std()            # Δc_len = Δ log n / sd
    assert rows[0]["dpo/loss"] == pytest.approx(np.mean(np.log1p(np.exp(-dz))), abs=1e-6)
    assert -1 <= rows[1]["dpo/leak/length"] <= 1
    r = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "steered"), "--steer", "0:4.0"])
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in (tmp_path / "steered" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["dpo/reward_margin"] != 0.0  # the steered policy differs from the reference at step 1
    r = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "low"), "--steer", "0:4.0", "--train-layers", "0"])
    assert r.exit_code == 0, r.output  # all layers trained: any steering layer works
