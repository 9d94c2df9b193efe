"""Per-pair attribution of a first-order shift: exact identities on the enumerable tiny model of
tests/test_evaluate_firstorder.py (the attributions average to the prediction; each is −∇L_i·v)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from anatomist.evaluate.attribution import concept_gradient, concept_weights, pair_attribution
from anatomist.evaluate.firstorder import PRECONDITIONERS, covariance_shift, directional_logps, dpo_direction
from anatomist.train.batches import collate
from anatomist.train.dpo import batch_dpo
from tests.test_evaluate_firstorder import PAIRS, RESPONSES, T, _concepts, _seq, setup  # noqa: F401


def test_concept_weights_turn_a_sum_into_the_mean_within_prompt_covariance():
    rng = np.random.default_rng(0)
    c, d = rng.normal(size=9), rng.normal(size=9)
    prompt = np.array(["a"] * 4 + ["b"] * 4 + ["lonely"])
    w = concept_weights(c, prompt)
    _, per_concept = covariance_shift(c[:, None], d, prompt, np.zeros(9, int), 1)
    assert w @ d == pytest.approx(per_concept[0]) and w[-1] == 0.0
    # by hand: one prompt with c = [0, 2] → c̄ = 1, weights (c − c̄)/(n − 1) = [−1, 1]
    np.testing.assert_allclose(concept_weights(np.array([0.0, 2.0]), np.array(["x", "x"])), [-1.0, 1.0])


@pytest.mark.parametrize("precondition", ["plain", "adam"])
def test_attributions_average_to_the_first_order_prediction(setup, precondition):
    """(1/P) Σ_i a_i = d·v = mean_x Cov_x(c, D_d log π_T), d the (preconditioned) DPO direction."""
    model, split, cache, seqs, params, cfg = setup
    gen_resp = RESPONSES[::7]                                           # 31 "samples" of 3 prompts
    gen = [_seq(r) for r in gen_resp]
    prompt = np.arange(len(gen)) % 3
    c = _concepts(gen_resp)[:, 0]
    offsets = torch.linspace(-0.5, 0.5, len(PAIRS))
    g = dpo_direction(split, cache, seqs, offsets, cfg, params, pad_id=0)
    d = PRECONDITIONERS[precondition](g)
    _, x = covariance_shift(c[:, None], directional_logps(split, gen, d, params, temperature=T).numpy(), prompt,
                            np.zeros(len(gen), int), 1)
    v = concept_gradient(split, gen, concept_weights(c, prompt), params, temperature=T, batch_size=4)
    if precondition == "adam":
        v = [torch.where(gi != 0, vi / gi.abs(), torch.zeros_like(vi)) for vi, gi in zip(v, g)]
    a = pair_attribution(split, cache, seqs, offsets, cfg, params, v, pad_id=0, batch_size=4)
    assert abs(x[0]) > 1e-6
    assert a.mean() == pytest.approx(x[0], rel=1e-3, abs=1e-8)
    # each a_i is −∇L_i·v by reverse-mode autograd
    for i in (0, len(PAIRS) - 1):
        out = batch_dpo(split, cache, collate(seqs, [i], 0), offsets[[i]], cfg, "cpu")
        grads = torch.autograd.grad(out.loss.sum(), params)
        assert a[i] == pytest.approx(-sum((gr * vi).sum() for gr, vi in zip(grads, v)).item(), rel=1e-4, abs=1e-9)


def test_run_attribution_plumbing_matches_first_order_rows(smol_tokenizer, tmp_path):
    """Through prepare → make_trainable on a real tokenizer: the attributions of concept 0 average
    to first_order_rows' x_first for it, plain and Adam; the model's flags are restored."""
    import pandas as pd

    from anatomist.evaluate.attribution import run_attribution
    from anatomist.evaluate.firstorder import first_order_rows
    from anatomist.train.dpo import DPOConfig
    from tests.test_evaluate_firstorder import _real_setup

    model, _, pairs, gen = _real_setup(smol_tokenizer)
    rng = np.random.default_rng(3)
    base = pd.DataFrame({"prompt_id": [f"x{i // 3}" for i in range(len(gen))], "topic": "t",
                         "prompt_ids": [list(s.ids[:s.prompt_len]) for s in gen],
                         "token_ids": [list(s.ids[s.prompt_len:]) for s in gen], "c_0": rng.normal(size=len(gen))})
    cfg = DPOConfig(train_layers=2, max_length=64, max_response_tokens=16)
    kw = {"temperature": T, "cache_dir": tmp_path / "cache", "progress": False}
    rows = first_order_rows(model, smol_tokenizer, pairs, cfg, base, **kw)
    x = rows[rows.topic == "all"].iloc[0]
    for name in ("plain", "adam"):
        a = run_attribution(model, smol_tokenizer, pairs, cfg, base, 0, precondition=name, **kw)
        assert sorted(a.pair_id) == sorted(p.id for p in pairs) and a.attribution.is_monotonic_decreasing
        assert a.attribution.mean() == pytest.approx(x[f"x_first_{name}"], rel=1e-3, abs=1e-9)
    assert all(p.requires_grad for p in model.parameters())
