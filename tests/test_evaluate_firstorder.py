"""First-order prediction: exact checks on a tiny model whose responses can be enumerated.

Responses are every sequence of R = 3 tokens over a V = 6 vocabulary (216 of them), so π(y|x)
and E_π[c] are exact sums, and "what one real DPO step does to E[c]" is computed, not sampled.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from anatomist.evaluate.firstorder import (
    PRECONDITIONERS,
    covariance_shift,
    delta_agreement,
    directional_logps,
    dpo_direction,
    tilt_shift,
)
from anatomist.train.batches import Seq, collate, collate_rows
from anatomist.train.dpo import DPOConfig, batch_dpo, make_trainable
from anatomist.train.split import SplitLM, precompute
from tests.conftest import tiny_llama

V, R, T = 6, 3, 0.7
PROMPT = (1, 4, 2)
RESPONSES = list(itertools.product(range(V), repeat=R))                  # all 216 responses
# pairs (chosen, rejected): chosen responses use token 3 more, so DPO should raise E[#3]
PAIRS = [((3, 3, 0), (1, 2, 5)), ((3, 1, 3), (0, 0, 4)), ((2, 3, 3), (5, 1, 1)),
         ((3, 0, 5), (4, 4, 2)), ((1, 3, 2), (2, 5, 0)), ((0, 4, 3), (1, 1, 1))]


def _seq(resp) -> Seq:
    return Seq(PROMPT + tuple(resp), len(PROMPT), (1.0,) * R)


def _concepts(resps) -> np.ndarray:
    """Two scores per response [N, 2]: how often token 3 appears, and whether it ends in 5."""
    return np.array([[r.count(3), float(r[-1] == 5)] for r in resps], dtype=np.float64)


@pytest.fixture()
def setup(tmp_path):
    torch.manual_seed(0)
    model = tiny_llama(vocab_size=V, hidden_size=16, layers=2, seed=3)
    cfg = DPOConfig(beta=0.5, train_layers=1)
    split = SplitLM(model, 1)
    make_trainable(model, split, cfg)
    seqs = [_seq(r) for pair in PAIRS for r in pair]                     # chosen 2i, rejected 2i+1
    cache = precompute(split, seqs, tmp_path / "cache", pad_id=0, batch_size=4, device="cpu", progress=False)
    params = [p for p in model.parameters() if p.requires_grad]
    return model, split, cache, seqs, params, cfg


@torch.no_grad()
def _exact_logps(split, temperature) -> torch.Tensor:
    """log π_T(y|x) of every enumerated response [216] from one ordinary full forward."""
    batch = collate_rows([_seq(r) for r in RESPONSES], range(len(RESPONSES)), 0)
    logits = split.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.double()
    tok = (logits[batch.pred_rows, batch.pred_pos] / temperature).log_softmax(-1)
    tok = tok.gather(-1, batch.targets[:, None]).squeeze(-1)
    return tok.view(len(RESPONSES), R).sum(-1)


def test_enumeration_is_a_distribution(setup):
    _, split, *_ = setup
    assert torch.exp(_exact_logps(split, T)).sum().item() == pytest.approx(1.0, abs=1e-9)


def test_directional_derivative_matches_autograd(setup):
    """The JVP equals ∇ log π_T(y)·d from reverse-mode autograd (the reference path), and
    the model keeps its own attention implementation."""
    model, split, cache, seqs, params, cfg = setup
    attn = model.config._attn_implementation
    d = dpo_direction(split, cache, seqs, torch.zeros(len(PAIRS)), cfg, params, pad_id=0)
    gen = [_seq(r) for r in RESPONSES[::17]]
    fast = directional_logps(split, gen, d, params, temperature=T, batch_size=5)
    assert model.config._attn_implementation == attn
    for i, s in enumerate(gen):
        batch = collate_rows([s], [0], 0)
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        lp = (logits[batch.pred_rows, batch.pred_pos] / T).log_softmax(-1)
        lp = lp.gather(-1, batch.targets[:, None]).sum()
        grads = torch.autograd.grad(lp, params)
        exact = sum((g * dd).sum() for g, dd in zip(grads, d)).item()
        assert fast[i].item() == pytest.approx(exact, rel=1e-4, abs=1e-7)


def _expected(split, c) -> np.ndarray:
    p = torch.exp(_exact_logps(split, T)).numpy()
    return p @ c


@pytest.mark.parametrize("lam", [0.0, 2.0])
def test_one_real_sgd_step_moves_expectation_as_predicted(setup, lam):
    """One real SGD step on the (shaped) DPO loss changes E_π[c] by η·Cov_π(c, D_g log π_T)."""
    model, split, cache, seqs, params, cfg = setup
    c = _concepts(RESPONSES)                                                      # [216, 2]
    c_pairs = _concepts([r for pair in PAIRS for r in pair])
    offsets = torch.tensor(lam * (c_pairs[0::2, 0] - c_pairs[1::2, 0]), dtype=torch.float32)  # λ on concept 0
    before = _expected(split, c)
    d = dpo_direction(split, cache, seqs, offsets, cfg, params, pad_id=0)
    dlogp = directional_logps(split, [_seq(r) for r in RESPONSES], d, params, temperature=T).numpy()
    p = torch.exp(_exact_logps(split, T)).numpy()
    cov = p @ ((c - p @ c) * (dlogp - p @ dlogp)[:, None])                         # exact Cov_π [2]

    eta = 0.01
    opt = torch.optim.SGD(params, lr=eta)
    out = batch_dpo(split, cache, collate(seqs, list(range(len(PAIRS))), 0), offsets, cfg, "cpu")
    out.loss.mean().backward()
    opt.step()
    actual = _expected(split, c) - before
    assert abs(actual[0]) > 1e-3                                    # the step moved the concept
    assert actual[0] > 0                                            # towards the chosen side's token 3
    np.testing.assert_allclose(actual, eta * cov, rtol=0.05, atol=2e-5)


def test_shaping_changes_the_prediction_in_the_right_direction(setup):
    """λ > 0 on a concept amplifies it (DESIGN.md sign): the predicted shift grows with λ."""
    model, split, cache, seqs, params, cfg = setup
    c = _concepts(RESPONSES)
    c_pairs = _concepts([r for pair in PAIRS for r in pair])
    dc = torch.tensor(c_pairs[0::2, 0] - c_pairs[1::2, 0], dtype=torch.float32)
    p = torch.exp(_exact_logps(split, T)).numpy()
    shifts = []
    for lam in (-2.0, 0.0, 2.0):
        d = dpo_direction(split, cache, seqs, lam * dc, cfg, params, pad_id=0)
        dlogp = directional_logps(split, [_seq(r) for r in RESPONSES], d, params, temperature=T).numpy()
        shifts.append(p @ ((c[:, 0] - p @ c[:, 0]) * (dlogp - p @ dlogp)))
    assert shifts[0] < shifts[1] < shifts[2]


def test_adam_direction_is_the_sign_of_the_gradient(setup):
    model, split, cache, seqs, params, cfg = setup
    g = dpo_direction(split, cache, seqs, torch.zeros(len(PAIRS)), cfg, params, pad_id=0)
    a = PRECONDITIONERS["adam"](g)
    for gi, ai in zip(g, a):
        assert torch.equal(ai, gi.sign())
    # and Adam's real first step moves each parameter by lr·sign(−∂L) (its m̂/√v̂ is ±1)
    saved = [p.detach().clone() for p in params]
    opt = torch.optim.Adam(params, lr=1e-3, eps=1e-12)
    out = batch_dpo(split, cache, collate(seqs, list(range(len(PAIRS))), 0), torch.zeros(len(PAIRS)), cfg, "cpu")
    out.loss.mean().backward()
    opt.step()
    for p, p0, ai in zip(params, saved, a):
        moved = (p.detach() - p0)[ai != 0]
        torch.testing.assert_close(moved, 1e-3 * ai[ai != 0], rtol=1e-3, atol=1e-7)


def test_directional_logps_is_linear_in_the_direction(setup):
    model, split, cache, seqs, params, cfg = setup
    gen = [_seq(r) for r in RESPONSES[:7]]
    d1, d2 = [torch.randn_like(p) for p in params], [torch.randn_like(p) for p in params]
    a, b = (directional_logps(split, gen, d, params, temperature=1.0) for d in (d1, d2))
    both = directional_logps(split, gen, [2 * x - y for x, y in zip(d1, d2)], params, temperature=1.0)
    torch.testing.assert_close(both, 2 * a - b, rtol=1e-5, atol=1e-6)


def test_covariance_shift_by_hand():
    # prompt 0 (topic 0): c = [1, 3], δ = [0, 2] → Cov = (−1·−1 + 1·1)/1 = 2
    # prompt 1 (topic 0): c = [0, 0, 3], δ = [1, 1, 4] → c̄ = 1, δ̄ = 2: ((−1)(−1) + (−1)(−1) + 2·2)/2 = 3
    # prompt 2 (topic 1): c = [5, 1], δ = [1, 0] → (2·0.5 + (−2)(−0.5))/1 = 2
    # prompt 3 (topic 1): one sample → ignored
    c = np.array([1, 3, 0, 0, 3, 5, 1, 9], dtype=float)[:, None]
    d = np.array([0, 2, 1, 1, 4, 1, 0, 7], dtype=float)
    prompt = np.array([0, 0, 1, 1, 1, 2, 2, 3])
    topic = np.array([0, 0, 0, 0, 0, 1, 1, 1])
    per_topic, per_concept = covariance_shift(c, d, prompt, topic, n_topics=3)
    np.testing.assert_allclose(per_topic[:, 0], [2.5, 2.0, np.nan])
    np.testing.assert_allclose(per_concept, [7 / 3])


def test_delta_agreement_by_hand():
    # centred within the prompt: A d [−1, 1], truth [−1, 1]; B d [−1, −1, 2], truth [0, 0, 0]
    # r = (1 + 1) / sqrt((1 + 1 + 1 + 1 + 4)·(1 + 1)) = 0.5; a per-prompt offset of the truth changes nothing
    import pandas as pd

    base = pd.DataFrame({"prompt_id": ["A", "A", "B", "B", "B"]})
    truth = np.array([1.0, 3.0, 5.0, 5.0, 5.0])
    d = np.array([0.0, 2.0, 1.0, 1.0, 4.0])
    got = delta_agreement(base, {"d": d, "minus": -truth, "same": truth + np.array([0, 0, 9, 9, 9])}, truth)
    assert got == pytest.approx({"d": 0.5, "minus": -1.0, "same": 1.0})


def test_covariance_is_invariant_to_per_prompt_offsets():
    """Centring within a prompt: adding a constant to every c (or δ) of one prompt changes nothing."""
    rng = np.random.default_rng(0)
    c, d = rng.normal(size=(40, 3)), rng.normal(size=40)
    prompt, topic = np.repeat(np.arange(8), 5), np.repeat(np.arange(8) % 2, 5)
    base = covariance_shift(c, d, prompt, topic, 2)
    c2, d2 = c + 10.0 * prompt[:, None], d - 3.0 * prompt
    for a, b in zip(base, covariance_shift(c2, d2, prompt, topic, 2)):
        np.testing.assert_allclose(a, b, atol=1e-12)


def test_tilt_is_linear_for_small_scale_and_exact_for_an_enumerated_tilt():
    rng = np.random.default_rng(1)
    c, d = rng.normal(size=(30, 2)), rng.normal(size=30)
    prompt, topic = np.repeat(np.arange(3), 10), np.array([0] * 10 + [1] * 20)
    lin, _ = covariance_shift(c, d, prompt, topic, 2)
    small, _ = tilt_shift(c, d, prompt, topic, 2, scale=1e-6)
    np.testing.assert_allclose(small / 1e-6, lin * 9 / 10, rtol=1e-4)
    # large scale: the tilt puts all weight on each prompt's largest δ
    big, _ = tilt_shift(c, d, prompt, topic, 2, scale=1e6)
    top = [np.argmax(d[prompt == x]) for x in range(3)]
    want = [c[prompt == x][top[x]] - c[prompt == x].mean(0) for x in range(3)]
    np.testing.assert_allclose(big[0], want[0], atol=1e-9)
    np.testing.assert_allclose(big[1], (want[1] + want[2]) / 2, atol=1e-9)


# -- the real plumbing: prepare → make_trainable → gradient → JVP, against one real train_dpo step --

def _real_setup(smol_tokenizer):
    import copy

    from anatomist.models.chat import apply_chat_template
    from anatomist.shape.pairs import ShapedPair

    model = tiny_llama(vocab_size=49152, hidden_size=16, layers=4, seed=0)
    prompts = ["Name a colour.", "How do I boil an egg?", "Say hi.", "Why is the sky blue?"]
    pairs = [ShapedPair(f"p{i}", ({"role": "user", "content": q},), f"A good answer number {i}.",
                        f"bad {i} ✨✨ **really** bad", offset=0.3 * (i - 1.5)) for i, q in enumerate(prompts)]
    g = torch.Generator().manual_seed(1)
    gen = []
    for q in prompts:
        p = apply_chat_template(smol_tokenizer, [{"role": "user", "content": q}], add_generation_prompt=True)
        for _ in range(3):
            t = torch.randint(0, 49152, (7,), generator=g).tolist()
            gen.append(Seq(tuple(p + t), len(p), (1.0,) * len(t)))
    return model, copy.deepcopy(model), pairs, gen


@torch.no_grad()
def _full_logps(model, gen, temperature):
    batch = collate_rows(gen, range(len(gen)), 0)
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits.double()
    tok = (logits[batch.pred_rows, batch.pred_pos] / temperature).log_softmax(-1)
    tok = tok.gather(-1, batch.targets[:, None]).squeeze(-1)
    return torch.zeros(len(gen), dtype=torch.float64).index_add_(0, batch.pred_rows, tok).numpy()


def test_one_real_adamw_dpo_step_moves_logprobs_as_the_adam_direction_predicts(smol_tokenizer, tmp_path, one_thread):
    """AdamW's first step is lr·sign(−∇L): train_dpo for one step (shaped offsets, top 2 blocks,
    constant lr, no warmup) moves every generation's tempered log-prob by lr·D_sign(g) log π_T."""
    from anatomist.evaluate.firstorder import run_directional_logps
    from anatomist.train.dpo import train_dpo

    model, policy, pairs, gen = _real_setup(smol_tokenizer)
    lr = 2e-4
    cfg = DPOConfig(steps=1, batch_size=len(pairs), grad_accum=1, lr=lr, warmup_ratio=0.0, schedule="constant",
                    train_layers=2, max_length=64, max_response_tokens=16)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    both = run_directional_logps(model, smol_tokenizer, pairs, cfg, gen, temperature=T,
                                 preconditions=("adam", "plain"), cache_dir=tmp_path / "cache", progress=False)
    pred = lr * both["adam"]
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())           # left as it was
    assert not any(p.requires_grad is False for p in model.parameters())                  # flags restored
    base = _full_logps(policy, gen, T)
    train_dpo(policy, smol_tokenizer, pairs, cfg, tmp_path / "run", save_model=False, progress=False,
              cache_dir=tmp_path / "cache")
    actual = _full_logps(policy, gen, T) - base
    assert np.abs(actual).max() > 1e-3
    np.testing.assert_allclose(actual, pred, rtol=0.05, atol=0.02 * np.abs(actual).max())
    # the plain gradient is another direction: it would not predict this step
    assert abs(np.corrcoef(both["plain"], actual)[0, 1]) < 0.999
    # and the log-probs the paired ΔB weighs by: the same tempered sums as a plain full forward
    from anatomist.evaluate.firstorder import generation_logps

    np.testing.assert_allclose(generation_logps(policy, gen, temperature=T, batch_size=5), _full_logps(policy, gen, T),
                               rtol=1e-5, atol=1e-4)


def test_first_order_rows_need_token_ids_and_concepts(smol_tokenizer):
    import pandas as pd

    from anatomist.errors import AnatomistError
    from anatomist.evaluate.firstorder import first_order_rows, generation_seqs

    model, _, pairs, _ = _real_setup(smol_tokenizer)
    old = pd.DataFrame({"prompt_id": ["a"], "topic": ["t"], "c_0": [0.1]})
    with pytest.raises(AnatomistError, match="token ids"):
        generation_seqs(old)
    with pytest.raises(AnatomistError, match="concept columns"):
        first_order_rows(model, smol_tokenizer, pairs, DPOConfig(), old.drop(columns=["c_0"]), temperature=T)


def test_steps_variant_after_one_step_is_the_adam_prediction_and_leaves_the_model(smol_tokenizer, tmp_path, one_thread):
    """first_steps with k = 1 is one real AdamW step: δ ≈ lr·D_sign(g) log π_T, on a copy."""
    from anatomist.evaluate.firstorder import run_directional_logps, steps_logps

    model, _, pairs, gen = _real_setup(smol_tokenizer)
    lr = 2e-4
    cfg = DPOConfig(steps=50, batch_size=len(pairs), grad_accum=1, lr=lr, warmup_ratio=0.0, schedule="constant",
                    train_layers=2, max_length=64, max_response_tokens=16)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    pred = lr * run_directional_logps(model, smol_tokenizer, pairs, cfg, gen, temperature=T, preconditions=("adam",),
                                      cache_dir=tmp_path / "cache", progress=False)["adam"]
    delta = steps_logps(model, smol_tokenizer, pairs, cfg, gen, steps=1, temperature=T, work_dir=tmp_path / "k1",
                        cache_dir=tmp_path / "cache", progress=False)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert np.abs(delta).max() > 1e-3
    np.testing.assert_allclose(delta, pred, rtol=0.05, atol=0.02 * np.abs(delta).max())
    with pytest.raises(Exception, match="steps must be >= 1"):
        steps_logps(model, smol_tokenizer, pairs, cfg, gen, steps=0, temperature=T, work_dir=tmp_path / "k0")
