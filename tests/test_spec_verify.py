"""Rejection sampling and sampling distributions, by hand-picked uniforms."""

import pytest
import torch

from anatomist.spec_decode.verify import rejection_sample, sample_from_probs, sampling_probs


def test_sampling_probs_temperature_topk_topp():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    assert torch.allclose(sampling_probs(logits, 1.0), torch.tensor([0.5, 0.3, 0.15, 0.05]))
    assert sampling_probs(logits, 0.0).tolist() == [1.0, 0.0, 0.0, 0.0]
    assert torch.allclose(sampling_probs(logits, 1.0, top_k=2), torch.tensor([0.625, 0.375, 0, 0]))
    # top_p=0.8: 0.5 + 0.3 reaches 0.8, so the 0.15 and 0.05 tokens go.
    assert torch.allclose(sampling_probs(logits, 1.0, top_p=0.8), torch.tensor([0.625, 0.375, 0, 0]))
    assert torch.allclose(sampling_probs(logits, 1.0, top_p=0.81), torch.tensor([0.5, 0.3, 0.15, 0]) / 0.95)
    p2 = sampling_probs(logits, 2.0)
    expect = torch.tensor([0.5, 0.3, 0.15, 0.05]).sqrt()
    assert torch.allclose(p2, expect / expect.sum())


def test_sample_from_probs_inverse_cdf_skips_zero_mass():
    p = torch.tensor([0.2, 0.0, 0.5, 0.3])
    assert sample_from_probs(p.expand(5, 4), torch.tensor([0.0, 0.19, 0.2, 0.69, 0.9999])).tolist() == [0, 0, 2, 2, 3]


P = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8]])  # p_1, p_2, p_3 (bonus)
Q = torch.tensor([[0.3, 0.6, 0.1], [0.5, 0.25, 0.25]])  # q_1, q_2


def _rs(drafts, uniforms, q=Q):
    return rejection_sample(torch.tensor([drafts]), None if q is None else q[None], P[None], torch.tensor([uniforms]))


def test_accept_all_gives_bonus_from_last_p():
    # d1=0: q=.3, p=.6 → accepted for any u. d2=1: q=.25, p=.5 → accepted. Bonus from p_3 via u=.95 → token 2.
    r = _rs([0, 1], [0.99, 0.99, 0.95])
    assert r.n_accepted.tolist() == [2] and r.tokens.tolist() == [[0, 1, 2]]
    assert r.accepted.tolist() == [[True, True]]


def test_reject_first_samples_residual():
    # d1=1: q=.6, p=.3: accept iff u·0.6 < 0.3 iff u < 0.5. u=0.7 → reject.
    # residual max(p1 − q1, 0) = [0.3, 0, 0] → token 0 whatever the last uniform.
    r = _rs([1, 0], [0.7, 0.0, 0.999])
    assert r.n_accepted.tolist() == [0] and r.tokens.tolist() == [[0, -1, -1]]
    r = _rs([1, 0], [0.49, 0.0, 0.5])  # u < 0.5 → accept d1; d2=0: q=.5, p=.2, u=0 → accept; bonus
    assert r.n_accepted.tolist() == [2]


def test_reject_second_residual_two_tokens():
    # d1=0 accepted; d2=0: q=.5, p=.2 → accept iff u < 0.4. u=0.5 → reject.
    # residual max(p2 − q2, 0) = [0, 0.25, 0.05] → norm [0, 5/6, 1/6]; u=0.8 → token 1, u=0.9 → token 2.
    assert _rs([0, 0], [0.0, 0.5, 0.8]).tokens.tolist() == [[0, 1, -1]]
    assert _rs([0, 0], [0.0, 0.5, 0.9]).tokens.tolist() == [[0, 2, -1]]


def test_greedy_drafts_one_hot_q():
    # one-hot q: accept iff u < p(d). d1=1, p=.3: u=.29 accept, u=.31 reject → residual p1 without token 1.
    assert _rs([1, 1], [0.29, 0.49, 0.0], q=None).n_accepted.tolist() == [2]
    r = _rs([1, 1], [0.31, 0.0, 0.99], q=None)
    assert r.tokens.tolist() == [[2, -1, -1]]  # residual [0.6, 0, 0.1]/0.7, u=.99 → token 2


def test_batch_rows_independent_and_temperature_zero_is_greedy():
    p = sampling_probs(torch.randn(2, 3, 7), 0.0)
    greedy = p.argmax(-1)  # [2, 3]
    drafts = torch.stack([greedy[0, :2], torch.tensor([greedy[1, 0], (greedy[1, 1] + 1) % 7])])
    q = sampling_probs(torch.randn(2, 2, 7), 0.0)
    q = torch.zeros_like(q).scatter_(-1, drafts[..., None], 1.0)
    for qq in (q, None):
        r = rejection_sample(drafts, qq, p, torch.rand(2, 3))
        assert r.n_accepted.tolist() == [2, 1]
        assert r.tokens[0].tolist() == greedy[0].tolist()
        assert r.tokens[1, :2].tolist() == greedy[1, :2].tolist()


def test_gamma_zero_is_plain_sampling():
    p = torch.tensor([[[0.25, 0.75]]])
    r = rejection_sample(torch.zeros(1, 0, dtype=torch.long), None, p, torch.tensor([[0.3]]))
    assert r.tokens.tolist() == [[1]] and r.n_accepted.tolist() == [0]


@pytest.mark.parametrize("greedy", [False, True])
def test_single_step_distribution_exact(greedy):
    """Marginal of the first emitted token equals p_1 exactly (integrate over u numerically)."""
    p = torch.tensor([[0.5, 0.2, 0.3], [0.1, 0.1, 0.8]])
    q = torch.tensor([[0.2, 0.7, 0.1]])
    n = 20000
    u = (torch.arange(n) + 0.5) / n
    counts = torch.zeros(3)
    for d in range(3):  # draft token d with prob q[d] (or argmax for greedy)
        if greedy and d != 1:
            continue
        w = 1.0 if greedy else float(q[0, d])
        uu = torch.stack([u, u[torch.randperm(n, generator=torch.Generator().manual_seed(d))]], dim=1)
        r = rejection_sample(torch.full((n, 1), d), None if greedy else q.expand(n, 1, 3),
                             p.expand(n, 2, 3), uu)
        counts += w * torch.bincount(r.tokens[:, 0], minlength=3).float() / n
    assert torch.allclose(counts, p[0], atol=2e-3)
