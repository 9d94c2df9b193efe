"""The arithmetic left in benchmarks/shaping.py: pair selection, the accuracy split, the verdict
(effect sizes: tests/test_evaluate_effects.py; trait matching: tests/test_organism_match.py)."""

import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import shaping  # noqa: E402


def test_select_pairs_balances_topics_in_file_order():
    pairs = [SimpleNamespace(id=f"{t}{i}", extra={"topic": t}) for i in range(4) for t in ("a", "b", "c")]
    got = [p.id for p in shaping.select_pairs(pairs, ["a", "b"], 4)]
    assert got == ["a0", "b0", "a1", "b1"]
    assert len(shaping.select_pairs(pairs, ["a", "b"], None)) == 8


def test_accuracy_splits_trait_pairs_from_the_rest_and_pairs_the_drop():
    ids = ["t0", "t1", "o0", "o1", "o2", "o3"]
    trait_of = {"t0": "x", "t1": "x", "o0": "y", "o1": "none", "o2": "y", "o3": "z"}
    plain = pd.DataFrame({"pair_id": ids, "correct": [1.0, 1.0, 1.0, 1.0, 0.0, 1.0]})
    shaped = pd.DataFrame({"pair_id": ids, "correct": [0.0, 0.0, 1.0, 0.0, 1.0, 1.0]})
    got = shaping.accuracy(shaped, plain, trait_of, "x", n_boot=200, seed=0)
    assert (got["n_trait"], got["n_other"]) == (2, 4)
    assert got["acc"] == pytest.approx(3 / 6) and got["acc_trait"] == 0.0 and got["acc_other"] == 0.75
    assert got["acc_drop"] == pytest.approx(5 / 6 - 3 / 6)
    mean, lo, hi = got["acc_drop_other"]    # per pair plain − shaped on the other pairs: 0, 1, −1, 0
    assert mean == 0.0 and -1 <= lo <= 0 <= hi <= 1
    with pytest.raises(AssertionError):
        shaping.accuracy(shaped.iloc[::-1], plain, trait_of, "x", n_boot=10, seed=0)


def test_verdict_calls_the_accuracy_check_uninformative_when_plain_learned_nothing_there():
    def rows(plain_other):
        plain = {"variant": "plain", "increase": (0.15, 0.02, 0.29), "acc_other_ci": plain_other}
        shaped = {"variant": "shaped", "reduction": (1.2, 1.0, 3.0), "acc_drop_other": (0.0, -0.1, 0.1),
                  "acc_drop": 0.05}
        weak = {"variant": "steered", "reduction": (0.1, 0.0, 0.6), "acc_drop_other": (0.0, -0.02, 0.02),
                "acc_drop": 0.0}
        return [{"variant": "base"}, plain, shaped, weak]

    chance = shaping.verdict(rows((0.48, 0.39, 0.56)))
    assert chance[0].startswith("met: plain DPO increased") and chance[1].startswith("NOT INFORMATIVE")
    assert chance[2].startswith("met on reduction, accuracy not informative: shaped")
    assert chance[3].startswith("NOT MET: steered")
    learned = shaping.verdict(rows((0.70, 0.62, 0.78)))
    assert len(learned) == 3 and learned[1].startswith("met: shaped") and learned[2].startswith("NOT MET: steered")


def test_build_variants_makes_one_recipe_per_variant(tmp_path):
    import torch
    from test_shape_audit import make_audit
    from test_shape_audit import pairs as audited_pairs

    from anatomist.audit.folder import AuditFolder
    from anatomist.sae import SAE, SAEConfig
    from anatomist.shape.steer import audit_direction, steering_alpha

    sae = SAE(SAEConfig(d_in=16, d_sae=16, architecture="topk", k=4, layer=1)).init_weights(
        torch.Generator().manual_seed(0))
    folder = make_audit(tmp_path / "audit")
    args = SimpleNamespace(variants=list(shaping.VARIANTS), lams=[-4.0, -1.0], tau=0.0, inoculation="inducer",
                           alpha_scale=2.0)
    truth = {"traits": {"emoji": {"description": "emoji", "system_prompt": "Use emoji."}}}
    out = shaping.build_variants(args, audited_pairs(), folder, {0: 0.8, 1: -0.2}, truth, "emoji", None, sae)
    assert list(out) == ["plain", "shaped-4", "shaped-1", "filtered", "inoculated", "steered"]
    assert out["plain"][0].steer is None and [p.offset for p in out["plain"][0].pairs] == [0.0] * 4
    shaped, extra = out["shaped-4"]
    assert extra == {"lam": {0: -4.0, 1: 4.0}}                               # λ follows the sign of ρ
    assert [p.offset for p in shaped.pairs] == pytest.approx([-4.0, -6.0, 0.0, -16.0])   # −4·Δc₀ + 4·Δc₁
    assert out["filtered"][0].pairs[0].chosen_token_mask == (0, 0, 0)      # c₁ = 2 ≥ 0 on token 2 as well
    assert [len(p.prompt) for p in out["inoculated"][0].pairs] == [2, 2, 1, 2]
    steered, extra = out["steered"]
    alpha = 2.0 * steering_alpha(AuditFolder(folder), 0, sae, ["p0", "p1", "p2", "p3"])
    assert extra == {"alpha": alpha, "layer": 1, "cluster": 0} and steered.steer.layer == 1
    assert torch.equal(steered.steer.vector, alpha * audit_direction(AuditFolder(folder), 0, sae).cpu())
    assert steered.infer_steer is None and [p.offset for p in steered.pairs] == [0.0] * 4
