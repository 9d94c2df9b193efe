"""Speculative decoding is lossless: greedy token for token at T=0, same distribution at T>0.

ANATOMIST_TEST_DEVICE=cuda runs the models of these tests on that device (benchmarks/gpu/bebop.sh
does, for the T=0 and chi-square tests); the random draws still come from CPU generators."""

import itertools
import os
import sys

import pytest
import torch

from anatomist.spec_decode.drafters import MTPDrafter, NGramDrafter, make_drafter
from anatomist.spec_decode.generate import generate
from anatomist.spec_decode.head import MTPConfig, MTPHead
from anatomist.spec_decode.stats import chisquare_gof
from anatomist.spec_decode.verify import rejection_sample, sampling_logits, sampling_probs

pytestmark = pytest.mark.usefixtures("one_thread")
DEVICE = os.environ.get("ANATOMIST_TEST_DEVICE", "cpu")


def tiny(vocab=64, hidden=32, seed=0, scale=1.0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=False)
    m = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # sharper than the default init, so drafts are both accepted and rejected
        m.lm_head.weight.mul_(scale)
    return m.to(DEVICE)


def head_for(m, seed=1, draft_vocab=0):
    torch.manual_seed(seed)
    h = MTPHead(m, MTPConfig(gamma=3, draft_vocab=draft_vocab))
    with torch.no_grad():  # a random (untrained) head, still a valid drafter
        for p in h.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return h.eval().to(DEVICE)


def greedy_reference(m, prompt, n):
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            seq.append(int(m(torch.tensor([seq], device=m.device)).logits[0, -1].argmax()))
    return seq[len(prompt):]


PROMPTS = [[1, 2, 3, 4, 5, 1, 2, 3], [7, 8, 9]]


@pytest.mark.parametrize("kind,mode", [("mtp", "rs"), ("mtp", "greedy"), ("ngram", "rs")])
def test_temperature_zero_equals_greedy(kind, mode):
    m = tiny(vocab=16, scale=20.0)
    ref = [greedy_reference(m, p, 24) for p in PROMPTS]
    drafter = MTPDrafter(head_for(m)) if kind == "mtp" else NGramDrafter()
    out = generate(m, PROMPTS, drafter=drafter, gamma=3, temperature=0.0, max_new_tokens=24, draft_mode=mode)
    assert out.tokens == ref
    assert sum(out.stats.per_row_accepted) > 0  # drafts were accepted somewhere
    plain = generate(m, PROMPTS, temperature=0.0, max_new_tokens=24)
    assert plain.tokens == ref and plain.stats.mean_accept_len == 1.0


@pytest.mark.parametrize("seed,sampling", [(3, dict(temperature=1.0)), (0, dict(temperature=0.7, top_k=6, top_p=0.9))])
def test_batch_rows_accept_differently_and_logprobs_match_full_forward(seed, sampling):
    """KV rewind (crop at the tail, holes in the middle at batch 2) leaves exactly plain context:
    the returned log-probs equal a fresh full forward over each final sequence, taken under the
    distribution each token was sampled from (temperature, top-k, top-p applied)."""
    m = tiny(vocab=16, scale=20.0)
    out = generate(m, PROMPTS, drafter=make_drafter("ngram"), gamma=3, max_new_tokens=30,
                   generator=torch.Generator().manual_seed(seed), **sampling)
    acc = out.stats.per_row_accepted
    assert acc[0] != acc[1] and sum(acc) > 0
    for b, p in enumerate(PROMPTS):
        seq = torch.tensor([p + out.tokens[b]])
        with torch.no_grad():
            lp = torch.log_softmax(sampling_logits(m(seq).logits[0, len(p) - 1:-1], **sampling), -1)
        ref = lp.gather(-1, seq[0, len(p):, None])[:, 0]
        assert torch.allclose(out.logprobs[b], ref, atol=1e-4), b


def test_mtp_head_cache_matches_training_forward():
    """The head's drafting cache sees what forward_train's custom mask sees (depth-1 entries ≤ t
    and its own chain): the first draft distribution at each step equals the teacher-forced one."""
    m = tiny(vocab=16, scale=5.0)
    head = head_for(m)
    prompt = [1, 2, 3, 4, 5, 6]
    out = generate(m, [prompt], drafter=MTPDrafter(head), gamma=2, temperature=0.0, max_new_tokens=12)
    seq = torch.tensor([prompt + out.tokens[0]])
    with torch.no_grad():
        h = m.model(seq).last_hidden_state
        ql = head.forward_train(h, seq, gamma=2)  # [1, T, 2, V]
        # Replay a drafter on the same sequence and compare depth-1 and depth-2 logits at position t.
        d = MTPDrafter(head)
        d.reset(1)
        t = len(prompt) + 3
        d.observe(h[:, :t], seq[:, 1:t + 1], torch.ones(1, t, dtype=torch.bool))
        q1 = head.logits(d.g_last)
        assert torch.allclose(q1, ql[0, t - 1, 0], atol=1e-4)
        pos, mask = d.kv.append(torch.ones(1, 1, dtype=torch.bool), h.dtype)
        g2 = head.step(d.g_last[:, None], seq[:, t + 1:t + 2], pos, mask, d.kv.cache)
        assert torch.allclose(head.logits(g2[:, 0]), ql[0, t - 1, 1], atol=1e-4)


# ---- exactness at T > 0: one pooled χ² test, and its power against three broken samplers ---------
#
# Every row samples k = 4 tokens after the same prompt from a 4-token vocabulary; the 4^4 = 256
# continuations' exact probabilities under plain sampling are enumerated, and the N rows' pooled
# counts are tested against them (Pearson χ², cells with expected count < 5 pooled) at ALPHA.
# Token 1 comes from the prefill, tokens 2-3 from the first round's drafts or correction, token 4
# from its bonus (both drafts accepted) or the next round, so every branch of the verifier is hit.
# Calibration (N = 4000, seeds 0-19): the correct samplers below gave p-values spread over
# [0.003, 0.999] (120 runs, five configurations plus one more), the three mutants p ≤ 1e-31 on
# every seed (10-20 each). So a correct sampler fails with probability ALPHA per configuration,
# whatever the seed, and a mutant essentially never passes.

ALPHA = 1e-4
N_ROWS = 4000
PROMPT, K = [1, 2, 3], 4


def exact_next_k(m, prompt, k, temperature, top_k=0, top_p=1.0):
    """Probability of every k-token continuation under plain sampling (enumerated)."""
    V = m.config.vocab_size
    conts = list(itertools.product(range(V), repeat=k - 1))
    seqs = torch.tensor([list(prompt) + list(c) for c in conts], device=m.device)  # [V^(k-1), P+k-1]
    with torch.no_grad():
        p = sampling_probs(m(seqs).logits[:, len(prompt) - 1:], temperature, top_k, top_p).cpu()  # [N, k, V]
    probs = torch.zeros([V] * k, dtype=torch.float64)
    for i, c in enumerate(conts):
        pref = 1.0
        for j, t in enumerate(c):
            pref *= float(p[i, j, t])
        probs[c] = pref * p[i, k - 1].double()
    return probs.flatten()


def lossless_pvalue(m, drafter, mode, seed=0, **sampling):
    """p-value of "N_ROWS speculative samples follow plain sampling", and the acceptance counters."""
    out = generate(m, [PROMPT] * N_ROWS, drafter=drafter, gamma=2, max_new_tokens=K, draft_mode=mode,
                   generator=torch.Generator().manual_seed(seed), **sampling)
    V = m.config.vocab_size
    idx = torch.tensor([sum(t * V ** (K - 1 - j) for j, t in enumerate(toks)) for toks in out.tokens])
    counts = torch.bincount(idx, minlength=V ** K)
    return chisquare_gof(counts, exact_next_k(m, PROMPT, K, **sampling))[2], out.stats


def sharp_model():
    m = tiny(vocab=4, scale=40.0)
    return m, head_for(m, draft_vocab=3)  # reduced draft vocabulary: still exact


def assert_verifier_exercised(stats):
    """Drafts were accepted, rejected (residual drawn) and all accepted (bonus drawn), often."""
    assert stats.draft_acceptance > 0.1, stats.draft_acceptance
    assert stats.reached[0] - stats.accepted[0] > 500 and stats.accepted[-1] > 200, (stats.reached, stats.accepted)


class MisreportingDrafter:
    """Draws drafts from q at temperature `t_draw` but hands the verifier q at `t_report`.
    For an untruncated head q_T ∝ q_1^(1/T), so q_report ∝ q_draw^(t_draw / t_report)."""

    def __init__(self, inner, t_draw: float, t_report: float):
        self.inner, self.t_draw, self.t_report = inner, t_draw, t_report

    def reset(self, batch_size):
        self.inner.reset(batch_size)

    def observe(self, hidden, next_tokens, valid):
        self.inner.observe(hidden, next_tokens, valid)

    def propose(self, history, gamma, *, temperature, top_k, top_p, mode, generator):
        drafts, q = self.inner.propose(history, gamma, temperature=self.t_draw, top_k=top_k, top_p=top_p,
                                       mode=mode, generator=generator)
        q = q ** (self.t_draw / self.t_report)
        return drafts, q / q.sum(-1, keepdim=True)


@pytest.mark.parametrize("mode,sampling", [("rs", dict(temperature=1.0)),
                                           ("greedy", dict(temperature=0.7, top_p=0.9)),
                                           ("rs", dict(temperature=1.3, top_k=2)),
                                           ("greedy", dict(temperature=1.3, top_k=2))])
def test_speculative_equals_plain(mode, sampling):
    m, head = sharp_model()
    p, stats = lossless_pvalue(m, MTPDrafter(head), mode, **sampling)
    print(f"{mode} {sampling}: p = {p:.3g}, draft acceptance {stats.draft_acceptance:.3f}")
    assert_verifier_exercised(stats)
    assert p > ALPHA, p


def test_drafts_at_another_temperature_are_still_exact():
    """Leviathan et al. Thm 1 holds for any q: drafts drawn, and verified, at T = 1 while p is at
    T = 0.5 only lower the acceptance. (What breaks exactness is a q other than the drafts' own.)"""
    m, head = sharp_model()
    p, stats = lossless_pvalue(m, MisreportingDrafter(MTPDrafter(head), 1.0, 1.0), "rs", temperature=0.5)
    assert_verifier_exercised(stats)
    assert p > ALPHA, p


def _residual_from_p(d, q, p, u):
    return rejection_sample(d, q, p, u, residual=lambda p_final, q_final: p_final)


def _bonus_from_last_draft_position(d, q, p, u):
    if p.shape[1] > 1:  # the prefill (γ = 0) has no bonus position
        p = torch.cat([p[:, :-1], p[:, -2:-1]], dim=1)  # p_{γ+1} replaced by p_γ
    return rejection_sample(d, q, p, u)


@pytest.mark.parametrize("mutant", ["residual from p", "bonus from the wrong position", "q tempered unlike the drafts"])
def test_the_same_test_rejects_broken_samplers(mutant, monkeypatch):
    """The pooled test's power: (i) the correction token drawn from p instead of
    norm(max(p − q, 0)); (ii) the bonus token drawn from p at the last draft's position instead of
    p_{γ+1}; (iii) drafts drawn from the untempered head (T = 1) but verified with q tempered like
    p (T = 0.5). Each is rejected at the same ALPHA with the same N_ROWS."""
    gen = sys.modules["anatomist.spec_decode.generate"]  # the package re-exports the function under that name
    m, head = sharp_model()
    drafter = MTPDrafter(head)
    if mutant == "residual from p":
        monkeypatch.setattr(gen, "rejection_sample", _residual_from_p)
    elif mutant == "bonus from the wrong position":
        monkeypatch.setattr(gen, "rejection_sample", _bonus_from_last_draft_position)
    else:
        drafter = MisreportingDrafter(drafter, 1.0, 0.5)
    p, stats = lossless_pvalue(m, drafter, "rs", temperature=0.5)
    print(f"{mutant}: p = {p:.3g}")
    assert_verifier_exercised(stats)
    assert p < ALPHA, p
