"""TRL export: one TRL 1.16 DPOTrainer step on the exported dataset gives anatomist's shaped loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_llama
from test_shape_audit import make_audit

from anatomist.audit.folder import AuditFolder
from anatomist.data import PreferencePair
from anatomist.errors import AnatomistError
from anatomist.shape.export import _batch, export_trl, load_export, sidecar, trl_tokens
from anatomist.shape.losses import concept_offset, dpo_loss, sequence_logps
from anatomist.shape.recipe import Recipe

trl = pytest.importorskip("trl")

IDS = ["a", "b", "c", "d"]
C_CHOSEN = np.array([[1.2, -0.3], [0.1, 0.9], [-1.0, 0.4], [2.5, 0.0]])
C_REJECTED = np.array([[-0.5, 0.2], [0.3, -1.1], [0.8, 0.4], [0.0, 1.5]])
LAM, BETA = {0: -1.5, 1: 0.5}, 0.2


def _pairs():
    texts = [("What is 2+2?", "It is 4.", "Five, probably."), ("Name a fruit.", "An apple.", "A rock, I think."),
             ("Say hi.", "Hi there! How can I help you today?", "No."), ("Is water wet?", "Yes.", "It depends.")]
    return [PreferencePair(i, ({"role": "user", "content": q},), c, r) for i, (q, c, r) in zip(IDS, texts)]


def _args(tmp_path, max_length=None, **kw):
    return trl.DPOConfig(output_dir=str(tmp_path / "trl"), beta=BETA, max_length=max_length, max_steps=1,
                         per_device_train_batch_size=4, learning_rate=1e-3, report_to=[], save_strategy="no",
                         logging_steps=1, use_cpu=True, bf16=False, gradient_checkpointing=False,
                         disable_tqdm=True, **kw)


@pytest.fixture
def exported(tmp_path, smol_tokenizer):
    audit = AuditFolder(make_audit(tmp_path / "audit", IDS, C_CHOSEN, C_REJECTED, tokens=None, data=_pairs()))
    ref = tiny_llama(vocab_size=49152, hidden_size=16, layers=2, seed=0)
    out = export_trl(ref, smol_tokenizer, _pairs(), audit, tmp_path / "shaped.jsonl", recipe=Recipe(lam=LAM),
                     beta=BETA, max_length=None, progress=False)
    return out, ref, audit


def _logps(model, tokenizer, seqs):
    ids, attn, comp = _batch(seqs, None, tokenizer.pad_token_id)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=attn).logits
    return sequence_logps(logits[:, :-1], ids[:, 1:], comp[:, 1:])                        # [2P]: c, r, c, r, ...


def test_trl_step_equals_shaped_loss(exported, smol_tokenizer, tmp_path, one_thread):
    from anatomist.shape.trl_compat import PrecomputedRefDPOTrainer

    out, ref, _ = exported
    ds = load_export(out)
    assert ds.column_names == ["id", "prompt", "chosen", "rejected", "ref_chosen_logps", "ref_rejected_logps",
                               "shaping_offset"]
    assert sidecar(out).is_file()
    policy = tiny_llama(vocab_size=49152, hidden_size=16, layers=2, seed=1)   # ≠ reference, so Δθ ≠ 0

    # anatomist on the same batch: TRL's tokens, the policy before its first update, the offset from the audit.
    tokens = [trl_tokens(smol_tokenizer, p.prompt, p.chosen, p.rejected) for p in _pairs()]
    seqs = [(pr, c) for pr, *cs in tokens for c in cs]
    pol, rf = _logps(policy, smol_tokenizer, seqs), _logps(ref, smol_tokenizer, seqs)
    lam = torch.tensor([LAM[0], LAM[1]])
    offset = concept_offset(torch.tensor(C_CHOSEN, dtype=torch.float32), torch.tensor(C_REJECTED, dtype=torch.float32), lam)
    expected = dpo_loss(pol[0::2], pol[1::2], rf[0::2], rf[1::2], beta=BETA, offset=offset).loss.mean()
    plain = dpo_loss(pol[0::2], pol[1::2], rf[0::2], rf[1::2], beta=BETA).loss.mean()
    assert abs(expected - plain) > 1e-2                                  # the offset matters on this batch

    losses = []

    class Recording(PrecomputedRefDPOTrainer):
        def compute_loss(self, model, inputs, *a, **kw):
            loss = super().compute_loss(model, inputs, *a, **kw)
            losses.append(loss.detach())
            return loss

    trainer = Recording(model=policy, args=_args(tmp_path, precompute_ref_log_probs=True), train_dataset=ds,
                        processing_class=smol_tokenizer)
    # TRL tokenized the pairs exactly as the export did (the reference log-probs are on its tokens).
    prepared = {r["id"]: r for r in trainer.train_dataset}
    for p, t in zip(_pairs(), tokens):
        assert (prepared[p.id]["prompt_ids"], prepared[p.id]["chosen_ids"], prepared[p.id]["rejected_ids"]) == t
    trainer.train()
    assert len(losses) == 1
    assert losses[0].item() == pytest.approx(expected.item(), abs=1e-5)


@pytest.mark.parametrize("cut", [False, True])
def test_exported_reference_equals_trls_own(tmp_path, smol_tokenizer, one_thread, cut):
    """Unshaped (λ = 0), the exported reference log-probs are what TRL computes itself — also when
    max_length cuts completions (keep-start) and drops the pair whose prompt fills it."""
    audit = AuditFolder(make_audit(tmp_path / "audit", IDS, C_CHOSEN, C_REJECTED, tokens=None, data=_pairs()))
    ref = tiny_llama(vocab_size=49152, hidden_size=16, layers=2, seed=0)
    prompt_lens = [len(trl_tokens(smol_tokenizer, p.prompt, p.chosen, p.rejected)[0]) for p in _pairs()]
    max_length = max(prompt_lens) if cut else None
    assert len(set(prompt_lens)) > 1                                      # so only some pairs are dropped
    out = export_trl(ref, smol_tokenizer, _pairs(), audit, tmp_path / "plain", recipe=Recipe(), beta=BETA,
                     max_length=max_length, progress=False)
    ds = load_export(out)                                                 # a `datasets` folder this time
    assert len(ds) == (sum(n < max(prompt_lens) for n in prompt_lens) if cut else 4)
    assert ds["shaping_offset"] == [0.0] * len(ds)
    trainer = trl.DPOTrainer(model=ref, args=_args(tmp_path, max_length, precompute_ref_log_probs=True),
                             train_dataset=load_export(out).remove_columns(["ref_chosen_logps", "ref_rejected_logps"]),
                             processing_class=smol_tokenizer)
    theirs = {r["id"]: (r["ref_chosen_logps"], r["ref_rejected_logps"]) for r in trainer.train_dataset}
    assert sorted(theirs) == sorted(ds["id"])
    for r in ds:
        assert theirs[r["id"]] == pytest.approx((r["ref_chosen_logps"], r["ref_rejected_logps"]), abs=1e-5)
    # Stock TRL 1.16 cannot take them from the dataset (it recomputes, then collides): why trl_compat exists.
    with pytest.raises(ValueError, match="duplicated columns"):
        trl.DPOTrainer(model=ref, args=_args(tmp_path, max_length, precompute_ref_log_probs=True), train_dataset=ds,
                       processing_class=smol_tokenizer)


def test_export_rejects_bad_settings(exported, tmp_path, smol_tokenizer):
    from anatomist.shape.trl_compat import PrecomputedRefDPOTrainer

    out, ref, audit = exported
    with pytest.raises(AnatomistError, match="beta must be > 0"):
        export_trl(ref, smol_tokenizer, _pairs(), audit, tmp_path / "x.jsonl", recipe=Recipe(lam=LAM), beta=0.0)
    with pytest.raises(AnatomistError, match="needs DPOConfig\\(precompute_ref_log_probs=True\\)"):
        PrecomputedRefDPOTrainer(model=ref, args=_args(tmp_path), train_dataset=load_export(out),
                                 processing_class=smol_tokenizer)


def test_reference_logps_resume_from_cache(tmp_path, smol_tokenizer, one_thread):
    from anatomist.shape.export import _key, reference_logps

    ref = tiny_llama(vocab_size=49152, hidden_size=16, layers=2, seed=0)
    seqs = [(pr, c) for p in _pairs() for pr, *cs in [trl_tokens(smol_tokenizer, p.prompt, p.chosen, p.rejected)]
            for c in cs]
    full = reference_logps(ref, smol_tokenizer, seqs, max_length=None, batch_size=3, progress=False)
    cache = tmp_path / "ref.npz"
    # A run killed after 3 sequences left this (marked +100 so reuse is visible).
    np.savez(cache, key=_key(ref, seqs, None), logps=full[:3] + 100)
    resumed = reference_logps(ref, smol_tokenizer, seqs, max_length=None, batch_size=3, cache=cache, progress=False)
    assert resumed[:3] == pytest.approx(full[:3] + 100) and resumed[3:] == pytest.approx(full[3:], abs=1e-9)
    assert np.load(cache)["logps"].shape == (8,)
    # Another setting (here max_length) does not reuse it.
    other = reference_logps(ref, smol_tokenizer, seqs, max_length=1000, batch_size=3, cache=cache, progress=False)
    assert other == pytest.approx(full, abs=1e-9)
