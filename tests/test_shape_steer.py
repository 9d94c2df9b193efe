"""Activation steering: the residual hook, concept directions, steered generation (tiny random Llama)."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_llama
from test_shape_audit import CONCEPTS, make_audit

from anatomist.audit.folder import AuditFolder
from anatomist.errors import AnatomistError
from anatomist.sae import SAE, SAEConfig
from anatomist.shape.steer import (
    add_to_residual,
    audit_direction,
    concept_direction,
    steered_generate,
    steering_alpha,
)


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_zero_vector_is_identity_and_hook_is_removed(one_thread):
    model = tiny_llama(layers=3)
    ids = torch.randint(0, 128, (2, 7), generator=torch.Generator().manual_seed(0))
    base = _logits(model, ids)
    with add_to_residual(model, 1, torch.zeros(32)):
        assert torch.equal(_logits(model, ids), base)
    with add_to_residual(model, 1, torch.ones(32)):
        assert not torch.allclose(_logits(model, ids), base)
    assert torch.equal(_logits(model, ids), base)                    # the context removed its hook


def test_positions_limit_where_logits_change(one_thread):
    model = tiny_llama(layers=3)
    ids = torch.randint(0, 128, (2, 6), generator=torch.Generator().manual_seed(1))
    base, v = _logits(model, ids), 3 * torch.randn(32, generator=torch.Generator().manual_seed(2))
    at = torch.zeros(2, 6, dtype=torch.bool)
    at[0, 2], at[1, 4] = True, True
    # After the last block nothing mixes positions: exactly the marked ones change.
    with add_to_residual(model, 2, v, positions=at):
        out = _logits(model, ids)
    changed = (out - base).abs().amax(-1) > 1e-6                                          # [B, T]
    assert torch.equal(changed, at)
    # At an earlier block, attention carries the change forward, never back.
    with add_to_residual(model, 0, v, positions=at):
        out = _logits(model, ids)
    changed = (out - base).abs().amax(-1) > 1e-6
    assert changed[0].tolist() == [False, False, True, True, True, True]
    assert changed[1].tolist() == [False] * 4 + [True, True]
    with pytest.raises(AnatomistError, match="layer 3 is out of range"), add_to_residual(model, 3, v):
        pass


def test_concept_direction_by_hand():
    W = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    assert concept_direction(W, [0, 1], [3.0, 4.0]).tolist() == pytest.approx([0.6, 0.8])
    assert concept_direction(W, [2]).tolist() == pytest.approx([2 ** -0.5, 2 ** -0.5])


def test_audit_direction_and_steered_generation(tmp_path, smol_tokenizer, one_thread):
    sae = SAE(SAEConfig(d_in=16, d_sae=16, architecture="topk", k=4, layer=1)).init_weights(
        torch.Generator().manual_seed(0))
    audit = AuditFolder(make_audit(tmp_path / "audit", tokens=None))
    d = audit_direction(audit, 0, sae)
    rows = sae.decoder_directions()
    expected = rows[5] * 1.0 + rows[7] * 2.0                          # members 5, 7 with weights 1, 2
    assert torch.allclose(d, expected / expected.norm(), atol=1e-6) and d.norm().item() == pytest.approx(1.0)
    assert CONCEPTS.members(0).tolist() == [5, 7]

    model = tiny_llama(vocab_size=49152, hidden_size=16, layers=2)
    prompts = ["Name a colour.", "Count to three."]
    plain = steered_generate(model, smol_tokenizer, prompts, layer=1, vector=0 * d, max_new_tokens=6)
    ids = torch.tensor([smol_tokenizer.apply_chat_template([{"role": "user", "content": prompts[0]}],
                                                           add_generation_prompt=True, tokenize=True,
                                                           return_dict=True)["input_ids"]])
    ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                         pad_token_id=smol_tokenizer.eos_token_id)
    assert plain[0] == smol_tokenizer.decode(ref[0, ids.shape[1]:], skip_special_tokens=True)
    steered = steered_generate(model, smol_tokenizer, prompts, layer=1, vector=50 * d, max_new_tokens=6)
    assert steered != plain


def test_steering_alpha_by_hand(tmp_path):
    """α₀ = mean over pairs with Δc₀ > 0 (p0, p1, p3) of mean_t proj(chosen) − mean_t proj(rejected),
    proj_t = Σ_f a_f(t) (W_dec[f]·d₀) / s over members 5, 7. Only p0 has member latents (test_shape_audit's
    ENTRIES): chosen tokens a₅ = 2, a₇ = 1, then none; rejected a₅ = 6, then none."""
    sae = SAE(SAEConfig(d_in=16, d_sae=16, architecture="topk", k=4, layer=1, norm_scale=2.0)).init_weights(
        torch.Generator().manual_seed(0))
    audit = AuditFolder(make_audit(tmp_path / "audit"))
    d = audit_direction(audit, 0, sae)
    a5, a7 = (float(sae.W_dec.detach()[f].double() @ d.double()) / 2.0 for f in (5, 7))
    p0 = (2 * a5 + a7) / 3 - (6 * a5) / 2
    assert steering_alpha(audit, 0, sae, ["p0", "p1", "p2", "p3"]) == pytest.approx(p0 / 3)   # p1, p3: 0
    assert steering_alpha(audit, 0, sae, ["p0", "p1", "p2", "p3"], limit=1) == pytest.approx(p0)
    with pytest.raises(AnatomistError, match="no training pair favours cluster 1"):
        steering_alpha(audit, 1, sae, ["p0", "p1", "p2", "p3"])                         # Δc₁ = 0, 0, −1, 0
