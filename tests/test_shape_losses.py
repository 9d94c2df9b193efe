"""Shaped DPO losses: hand-computed values, λ = 0 is plain DPO, gradient signs, the TRL shift."""

from __future__ import annotations

import math

import pytest
import torch

from anatomist.shape.losses import (
    concept_offset,
    dpo_loss,
    sequence_logps,
    shift_reference,
)


def _logps():
    #       policy chosen, rejected; reference chosen, rejected         Δθ = (−1 + 1.5) − (−2 + 1.5) = 1
    return torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([-1.5]), torch.tensor([-1.5])


def test_lambda_zero_is_plain_dpo_exactly():
    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (torch.randn(6, generator=g) * 5 for _ in range(4))
    c_pos, c_neg = torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g)
    for loss_type in ("sigmoid", "ipo"):
        plain = dpo_loss(pc, pr, rc, rr, beta=0.3, loss_type=loss_type)
        zero = dpo_loss(pc, pr, rc, rr, beta=0.3, loss_type=loss_type, offset=concept_offset(c_pos, c_neg, torch.zeros(3)))
        assert torch.equal(plain.loss, zero.loss)
        assert torch.equal(plain.chosen_reward, zero.chosen_reward)


def test_sigmoid_and_ipo_by_hand():
    out = dpo_loss(*_logps(), beta=0.5, offset=torch.tensor([0.2]))
    # −log σ(0.5·1 − 0.2) = log(1 + e^−0.3)
    assert out.loss.item() == pytest.approx(math.log(1 + math.exp(-0.3)), abs=1e-7)
    assert out.loss.item() == pytest.approx(0.5543552, abs=1e-6)
    assert out.chosen_reward.item() == pytest.approx(0.25) and out.rejected_reward.item() == pytest.approx(-0.25)
    ipo = dpo_loss(*_logps(), beta=0.5, offset=torch.tensor([0.2]), loss_type="ipo")
    assert ipo.loss.item() == pytest.approx((1 - 0.2 / 0.5 - 1 / (2 * 0.5)) ** 2)      # (−0.4)² = 0.16
    assert ipo.loss.item() == pytest.approx(0.16)
    with pytest.raises(ValueError, match="loss_type"):
        dpo_loss(*_logps(), beta=0.5, loss_type="hinge")


def test_gradient_signs_and_offset_strength():
    def grads(offset):
        pc, pr, rc, rr = (t.clone().requires_grad_(i < 2) for i, t in enumerate(_logps()))
        dpo_loss(pc, pr, rc, rr, beta=0.5, offset=torch.tensor([offset])).loss.sum().backward()
        return pc.grad.item(), pr.grad.item()

    gc, gr = grads(0.2)
    # ∂L/∂logπ(y⁺) = −β·σ(−(βΔθ − offset)) = −0.5·σ(−0.3)
    assert gc == pytest.approx(-0.5 / (1 + math.exp(0.3)), abs=1e-7) and gr == pytest.approx(-gc)
    # λ < 0 on a concept the chosen side carries (Δc > 0): offset < 0 pushes chosen up less.
    weaker, _ = grads(concept_offset(torch.tensor([[2.0]]), torch.tensor([[0.0]]), torch.tensor([-0.5])).item())
    stronger, _ = grads(+1.0)
    assert gc < 0 and stronger < gc < weaker < 0


def test_concept_offset_and_sequence_logps_by_hand():
    off = concept_offset(torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([2.0, -1.0]))
    assert off.tolist() == [1.0]                                          # 2·1 − 1·1
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.1, 0.1, 0.8]]]))  # [1, 2, 3]: already log-probs
    lp = sequence_logps(logits, torch.tensor([[0, 2]]), torch.tensor([[1, 0]]))
    assert lp.item() == pytest.approx(math.log(0.5))                      # the masked token drops out
    assert sequence_logps(logits, torch.tensor([[0, 2]]), torch.tensor([[1, 1]])).item() == \
        pytest.approx(math.log(0.5 * 0.8))


def test_shifted_reference_equals_offset():
    g = torch.Generator().manual_seed(1)
    pc, pr, rc, rr = (torch.randn(5, generator=g, dtype=torch.float64) for _ in range(4))
    c_pos, c_neg = torch.randn(5, 2, generator=g, dtype=torch.float64), torch.randn(5, 2, generator=g, dtype=torch.float64)
    lam, beta = torch.tensor([-1.5, 0.7], dtype=torch.float64), 0.2
    shaped = dpo_loss(pc, pr, rc, rr, beta=beta, offset=concept_offset(c_pos, c_neg, lam)).loss
    src, srr = shift_reference(rc, rr, c_pos, c_neg, lam, beta)
    assert torch.allclose(dpo_loss(pc, pr, src, srr, beta=beta).loss, shaped, atol=1e-12)
    assert not torch.allclose(dpo_loss(pc, pr, rc, rr, beta=beta).loss, shaped)
