"""Draft losses by hand on 2-3 token vocabularies, and where their gradients go."""

import math

import pytest
import torch

from anatomist.spec_decode.losses import LOSSES, ce_loss, e2e_tv_loss, kl_loss, tv_loss


def logits(*qs):
    return torch.log(torch.tensor(qs, dtype=torch.float64))


def one(t):  # [γ, V] → [1, 1, γ, V]
    return t[None, None]


ALL = torch.ones(1, 1, dtype=torch.bool)


def test_tv_value_and_gradient_two_tokens():
    p = one(torch.tensor([[0.7, 0.3]]))
    z = one(logits([0.4, 0.6])).requires_grad_()
    loss, m = tv_loss(p, z, ALL)
    assert loss.item() == pytest.approx(0.3)  # 1 − (min(.7,.4) + min(.3,.6)) = 1 − 0.7
    assert m["mtp/alpha_1"] == pytest.approx(0.7) and m["mtp/tv_1"] == pytest.approx(0.3)
    loss.backward()
    # ∂TV/∂q = [−1, 0]; through softmax: ∂/∂z_k = −q_0(δ_0k − q_k) = [−0.24, +0.24]
    assert z.grad[0, 0, 0].tolist() == pytest.approx([-0.24, 0.24])


def test_e2e_tv_value_and_gradient_three_tokens_two_depths():
    p = one(torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]]))
    q = [[0.2, 0.35, 0.45], [0.2, 0.2, 0.6]]  # no ties with p, where min() is not differentiable
    z = one(logits(*q)).requires_grad_()
    loss, m = e2e_tv_loss(p, z, ALL)
    a1, a2 = 0.2 + 0.3 + 0.2, 0.1 + 0.2 + 0.3  # Σ min(p, q) = 0.7, 0.6
    assert m["mtp/alpha_1"] == pytest.approx(a1) and m["mtp/alpha_2"] == pytest.approx(a2)
    assert loss.item() == pytest.approx(1 - (a1 + a1 * a2) / 2)  # Bebop Eq. 13, = 0.44
    loss.backward()
    # ∂L/∂α1 = −(1 + α2)/2 = −0.8, ∂L/∂α2 = −α1/2 = −0.35. ∂α/∂q_v = 1[q_v < p_v].
    g1 = torch.tensor([-0.8, 0.0, 0.0], dtype=torch.float64)  # only v=0 has q < p (.2 < .5)
    g2 = torch.tensor([0.0, -0.35, 0.0], dtype=torch.float64)  # only v=1 has q < p (.2 < .6)
    qq = torch.tensor(q, dtype=torch.float64)
    # through the softmax: ∂L/∂z_k = q_k (g_k − Σ_v g_v q_v)
    expect = torch.stack([qq[i] * (g - (g * qq[i]).sum()) for i, g in enumerate([g1, g2])])
    assert torch.allclose(z.grad[0, 0], expect, atol=1e-12)


def test_ce_and_kl_values():
    p = one(torch.tensor([[0.7, 0.3]]))
    z = one(logits([0.4, 0.6]))
    ce = -(0.7 * math.log(0.4) + 0.3 * math.log(0.6))
    h = -(0.7 * math.log(0.7) + 0.3 * math.log(0.3))
    assert ce_loss(p, z, ALL)[0].item() == pytest.approx(ce)
    assert kl_loss(p, z, ALL)[0].item() == pytest.approx(ce - h)
    assert kl_loss(p, logits([0.7, 0.3])[None, None, None], ALL)[0].item() == pytest.approx(0, abs=1e-12)


def test_chain_mask_excludes_incomplete_chains():
    p = torch.tensor([[0.7, 0.3], [0.5, 0.5]], dtype=torch.float64)[None, :, None]  # [1, T=2, γ=1, V=2]
    z = torch.cat([logits([0.4, 0.6]), logits([0.99, 0.01])])[None, :, None]
    mask = torch.tensor([[True, False]])
    assert tv_loss(p, z, mask)[0].item() == pytest.approx(0.3)
    assert e2e_tv_loss(p, z, mask)[0].item() == pytest.approx(0.3)  # γ = 1: e2e equals TV


@pytest.mark.parametrize("name", ["tv", "e2e_tv"])
def test_tv_gradients_bounded_where_ce_explodes(name):
    """With q ≈ 0 on a likely token, CE's gradient w.r.t. the logits stays O(1) but w.r.t. q it is
    −p/q; TV's ∂/∂q is in [−1, 0], so its logit gradient is bounded by 2 whatever q is."""
    torch.manual_seed(0)
    p = torch.softmax(torch.randn(2, 5, 3, 11, dtype=torch.float64) * 3, -1)
    z = (torch.randn(2, 5, 3, 11, dtype=torch.float64) * 20).requires_grad_()
    mask = torch.ones(2, 5, dtype=torch.bool)
    loss, _ = LOSSES[name](p, z, mask)
    loss.backward()
    # per chain-depth, ‖∂L/∂z‖₁ ≤ 2·‖∂L/∂q‖_∞ ≤ 2 / (number of counted chain-depths)
    per = z.grad.abs().sum(-1) * mask.sum() * 3
    assert float(per.max()) <= 2 + 1e-9
