"""The paired (importance-weighted) ΔB estimator against a case whose answer is known exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anatomist.evaluate.paired import paired_shift_table, snis_prompt_shift
from anatomist.train.batches import collate
from anatomist.train.dpo import batch_dpo
from tests.test_evaluate_firstorder import PAIRS, RESPONSES, T, _concepts, _exact_logps, setup  # noqa: F401


def test_snis_by_hand():
    # log-ratio [0, ln 3]: w = [1/4, 3/4]; c = [0, 4] → Σ w c − mean c = 3 − 2 = 1; ESS = 1/(1/16 + 9/16) = 1.6
    shift, ess = snis_prompt_shift(np.array([[0.0], [4.0]]), np.array([0.0, np.log(3.0)]))
    assert shift[0] == pytest.approx(1.0)
    assert ess == pytest.approx(1.6)
    # equal weights: no shift, full ESS
    shift, ess = snis_prompt_shift(np.array([[1.0], [5.0], [2.0]]), np.zeros(3))
    assert shift[0] == pytest.approx(0.0) and ess == pytest.approx(3.0)


def test_low_ess_prompts_fall_back_to_the_direct_difference():
    c_pre = np.array([[0.0], [4.0], [1.0], [3.0], [0.0], [2.0]])
    ratio = np.array([0.0, np.log(3.0), 0.0, 0.0, 50.0, 0.0])     # prompt "c": one weight takes all
    prompt = np.array(["a", "a", "b", "b", "c", "c"])
    topic = np.array([0, 0, 0, 0, 1, 1])
    c_post = np.array([[9.0], [7.0]])
    post_prompt = np.array(["c", "c"])
    out = paired_shift_table(c_pre, ratio, prompt, topic, c_post, post_prompt, 2, min_ess=0.6)
    assert out.fallback.tolist() == [False, False, True]
    # a: 1 (by hand above); b: 0; c: mean post 8 − mean pre 1 = 7
    np.testing.assert_allclose(out.topic[:, 0], [0.5, 7.0])
    np.testing.assert_allclose(out.topic_se[0], [0.5])          # sd([1, 0]) / √2
    assert np.isnan(out.topic_se[1, 0])                           # one prompt: no se
    np.testing.assert_allclose(out.concept, [8 / 3])


def test_bias_is_small_against_variance_and_variance_beats_the_direct_difference(setup):
    """Known answer: pre and post are the tiny model before and after 20 real DPO steps; E[c]
    under each is an exact sum over all 216 responses. 2,000 independent 'prompts' of 16 samples."""
    model, split, cache, seqs, params, cfg = setup
    c = _concepts(RESPONSES)                                          # [216, 2]
    lp_pre = _exact_logps(split, T).numpy()
    opt = torch.optim.SGD(params, lr=0.5)
    for _ in range(20):
        out = batch_dpo(split, cache, collate(seqs, list(range(len(PAIRS))), 0), torch.zeros(len(PAIRS)), cfg, "cpu")
        out.loss.mean().backward()
        opt.step()
        opt.zero_grad()
    lp_post = _exact_logps(split, T).numpy()
    p_pre, p_post = np.exp(lp_pre), np.exp(lp_post)
    exact = p_post @ c - p_pre @ c
    assert exact[0] > 0.1                                             # a real move, not a rounding error

    rng = np.random.default_rng(0)
    X, n = 2000, 16
    pre = rng.choice(len(RESPONSES), size=(X, n), p=p_pre / p_pre.sum())
    post = rng.choice(len(RESPONSES), size=(X, n), p=p_post / p_post.sum())
    prompt = np.repeat(np.arange(X), n)
    table = paired_shift_table(c[pre.ravel()], (lp_post - lp_pre)[pre.ravel()], prompt, np.zeros(X * n, int),
                               c[post.ravel()], prompt, 1, min_ess=0.0)
    snis = np.stack([snis_prompt_shift(c[pre[x]], (lp_post - lp_pre)[pre[x]])[0] for x in range(X)])
    direct = c[post].mean(1) - c[pre].mean(1)                        # [X, 2]
    np.testing.assert_allclose(table.concept, snis.mean(0))
    bias, sd = snis.mean(0) - exact, snis.std(0)
    assert np.all(np.abs(bias) < 0.25 * sd), (bias, sd)
    assert np.all(np.abs(direct.mean(0) - exact) < 4 * direct.std(0) / np.sqrt(X))   # the direct one is unbiased
    assert np.all(snis.var(0) < 0.6 * direct.var(0)), (snis.var(0), direct.var(0))
    assert table.ess.mean() > 0.5 * n


def _eval_table(prompts, samples, c):
    import pandas as pd

    rows = [{"prompt_id": p, "topic": t, "sample": s} for p, t in prompts for s in range(samples)]
    return pd.DataFrame(rows).assign(c_0=c)


def test_sample_halves_are_disjoint_and_need_four_samples():
    from anatomist.errors import AnatomistError
    from anatomist.evaluate.paired import sample_halves

    base = _eval_table([("a", "x"), ("b", "y")], 4, np.arange(8.0))
    pred, target = sample_halves(base)
    assert pred["sample"].tolist() == [0, 2, 0, 2] and target["sample"].tolist() == [1, 3, 1, 3]
    assert set(pred.c_0).isdisjoint(target.c_0) and len(pred) + len(target) == len(base)
    with pytest.raises(AnatomistError, match=">= 4 samples"):
        sample_halves(base[base["sample"] < 3])


def test_paired_actual_lays_out_topics_and_all_with_normal_intervals():
    from anatomist.evaluate.paired import paired_actual

    # topic x: prompt a (c 0, 4; log-ratio 0, ln 3 → shift 1) and b (c 1, 3; equal weights → 0)
    target = _eval_table([("a", "x"), ("b", "x"), ("c", "y")], 2, [0.0, 4.0, 1.0, 3.0, 2.0, 2.0])
    ratio = np.array([0.0, np.log(3.0), 0.0, 0.0, 0.0, 0.0])
    post = _eval_table([("a", "x"), ("b", "x"), ("c", "y")], 1, [5.0, 5.0, 5.0])
    table, health = paired_actual(target, ratio, post, [0], min_ess=0.0)
    x = table[table.topic == "x"].iloc[0]
    assert x.actual == pytest.approx(0.5) and x.se == pytest.approx(0.5) and x.n_prompts == 2
    assert (x.ci_low, x.ci_high) == pytest.approx((0.5 - 1.96 * 0.5, 0.5 + 1.96 * 0.5))
    assert x.pre == pytest.approx(2.0)
    every = table[table.topic == "all"].iloc[0]
    assert every.actual == pytest.approx(1 / 3) and every.n_prompts == 3
    assert health["fallback_share"] == 0.0 and health["n_prompts"] == 3
