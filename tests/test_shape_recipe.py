"""`Recipe` / `apply` (anatomist.shape.recipe): CLI strings parsed, concepts resolved, and `apply` equal
to the hand assembly `anatomist dpo` did before the recipe existed, on a hand-made audit folder."""

from __future__ import annotations

import pytest
import torch
from test_shape_audit import make_audit, pairs

from anatomist.audit.folder import LENGTH, AuditFolder
from anatomist.errors import AnatomistError
from anatomist.sae import SAE, SAEConfig, save_sae
from anatomist.shape import Inoculation, Recipe, Shaped, Steer, Steering, TokenFilter, apply, shape_pairs
from anatomist.shape.recipe import split_spec
from anatomist.shape.steer import audit_direction

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def audit(tmp_path):
    sae = SAE(SAEConfig(d_in=16, d_sae=16, architecture="topk", k=4, layer=1)).init_weights(
        torch.Generator().manual_seed(0))
    save_sae(sae, tmp_path / "sae")
    return AuditFolder(make_audit(tmp_path / "audit", sae=str(tmp_path / "sae"), layer=1))


def test_from_cli_reads_the_flags_strings():
    r = Recipe.from_cli(lam=["bold / emoji=-2", "1=0.5", "1=0.25"], token_filter="emoji:2.0",
                        token_filter_sides="rejected", inoculate="0", inoculate_text="Use emoji.", drop_extreme=0.25,
                        steer="sorry:-4")
    assert r.lam == {"bold / emoji": -2.0, "1": 0.25}                               # a repeated concept: last wins
    assert r.token_filter == TokenFilter(clusters=("emoji",), tau=2.0, sides="rejected")
    assert r.inoculate == Inoculation("0", text="Use emoji.") and r.drop_extreme == 0.25
    assert r.steer == Steering("sorry", -4.0, train=True, infer=False)
    assert r.concepts == ("bold / emoji", "1", "emoji", "0", "sorry") and not r.is_plain
    assert Recipe.from_cli(inoculate_text="ignored without --inoculate", token_filter_sides="rejected").is_plain
    assert not Recipe(drop_extreme=0.1).is_plain


@pytest.mark.parametrize("kw, message", [
    ({"lam": ["0=abc"]}, "--lam '0=abc': expected CONCEPT=NUMBER"),
    ({"lam": ["=1"]}, "--lam '=1': expected CONCEPT=NUMBER"),
    ({"token_filter": "0"}, "--token-filter '0': expected CONCEPT:NUMBER"),
    ({"token_filter": "0:1", "token_filter_sides": "left"}, "sides must be one of"),
    ({"steer": "0:inf"}, "--steer '0:inf': expected CONCEPT:NUMBER"),
])
def test_from_cli_errors_are_one_line(kw, message):
    with pytest.raises(AnatomistError, match=message) as e:
        Recipe.from_cli(**kw)
    assert "\n" not in str(e.value)
    assert split_spec("a:b:3", ":", "--x") == ("a:b", 3.0)                          # a label may hold the separator


def test_steering_needs_a_finite_alpha_and_a_time_to_act():
    with pytest.raises(AnatomistError, match="finite"):
        Steering(0, float("nan"))
    with pytest.raises(AnatomistError, match="at training, at inference, or both"):
        Steering(0, 1.0, train=False, infer=False)


def test_resolve_names_every_concept_by_its_cluster_id(audit):
    r = Recipe.from_cli(lam=["emoji=-1", "sorry=2"], token_filter="1:0.5", inoculate="bold", steer="0:3")
    got = r.resolve(audit)
    assert got.lam == {0: -1.0, 1: 2.0} and got.token_filter.clusters == (1,)
    assert got.inoculate.cluster == 0 and got.steer.concept == 0 and got.resolve(audit) == got
    with pytest.raises(AnatomistError, match="no cluster label contains 'zebra'"):
        Recipe(lam={"zebra": 1.0}).resolve(audit)
    with pytest.raises(AnatomistError, match="cluster 7 is out of range"):
        Recipe(inoculate=Inoculation(7)).resolve(audit)
    with pytest.raises(AnatomistError, match="no response-length tables"):
        Recipe(lam={"length": -1.0}).resolve(audit)


def _old_cli(audit, prs, *, lam=(), token_filter=None, token_filter_sides="both", inoculate=None, inoculate_text=None,
             drop_extreme=None, steer=None):
    """Reference path: what `anatomist dpo` assembled by hand before `Recipe` (shaped pairs, steer, deltas)."""
    lams = {audit.resolve_concept(c): v for c, v in (split_spec(s, "=", "--lam") for s in lam)}
    tf = None
    if token_filter:
        c, tau = split_spec(token_filter, ":", "--token-filter")
        tf = TokenFilter(clusters=(audit.resolve_concept(c),), tau=tau, sides=token_filter_sides)
    inoc = None if inoculate is None else Inoculation(audit.resolve_concept(inoculate), text=inoculate_text)
    shaped = shape_pairs(prs, audit, lam=lams, token_filter=tf, inoculate=inoc, drop_extreme=drop_extreme)
    concepts = set(lams) | set(tf.clusters if tf else ()) | ({inoc.cluster} if inoc else set())
    steer_arg = None
    if steer:
        c, alpha = split_spec(steer, ":", "--steer")
        k = audit.resolve_concept(c)
        steer_arg = Steer(audit.layer, alpha * audit_direction(audit, k))
        concepts.add(k)
    c_pos, c_neg = audit.scores([p.id for p in shaped], sorted(concepts))
    deltas = {("length" if k == LENGTH else str(k)): (c_pos - c_neg)[:, j].tolist()
              for j, k in enumerate(sorted(concepts))}
    return shaped, steer_arg, deltas


CASES = [
    {"lam": ["emoji=-2", "1=0.5"], "inoculate": "0"},
    {"lam": ["0=1", "sorry=-1"], "drop_extreme": 0.25, "token_filter": "emoji:0.0", "token_filter_sides": "rejected",
     "steer": "0:4"},
    {"inoculate": "sorry", "inoculate_text": "Go.", "token_filter": "1:1.0", "drop_extreme": 0.5},
    {"steer": "bold:-2.5"},
    {},
]


@pytest.mark.parametrize("flags", CASES, ids=[",".join(c) or "plain" for c in CASES])
def test_apply_equals_the_old_cli_assembly(audit, flags):
    shaped = apply(Recipe.from_cli(**flags), pairs(), audit)
    ref_pairs, ref_steer, ref_deltas = _old_cli(audit, pairs(), **flags)
    assert shaped.pairs == ref_pairs and shaped.concept_deltas == ref_deltas and len(shaped) == len(ref_pairs)
    assert shaped.infer_steer is None
    if ref_steer is None:
        assert shaped.steer is None
    else:
        assert shaped.steer.layer == ref_steer.layer == 1 and torch.equal(shaped.steer.vector, ref_steer.vector)


def test_apply_by_hand(audit):
    shaped = apply(Recipe(lam={"emoji": -2.0, 1: 0.5}, inoculate=Inoculation(0)), pairs(), audit)
    assert [p.offset for p in shaped.pairs] == pytest.approx([-2.0, -3.0, 1.5, -8.0])     # −2·Δc₀ + 0.5·Δc₁
    assert [len(p.prompt) for p in shaped.pairs] == [2, 2, 1, 2]                         # inoculated where Δc₀ > 0
    assert shaped.concept_deltas == {"0": [1.0, 1.5, -1.0, 4.0], "1": [0.0, 0.0, -1.0, 0.0]}
    assert shaped.recipe.lam == {0: -2.0, 1: 0.5} and shaped.recipe.inoculate.cluster == 0
    # steering at inference only: the same vector, on the other field
    infer = apply(Recipe(steer=Steering("emoji", 3.0, train=False, infer=True)), pairs(), audit)
    assert infer.steer is None and infer.infer_steer.layer == 1
    assert torch.allclose(infer.infer_steer.vector, 3.0 * audit_direction(audit, 0))
    both = apply(Recipe(steer=Steering(0, 3.0, infer=True)), pairs(), audit)
    assert both.steer is both.infer_steer and [p.offset for p in both.pairs] == [0.0] * 4
    assert Shaped(pairs()).steer is None and len(Shaped(pairs())) == 4


def test_export_refuses_what_trl_cannot_carry(audit, tmp_path):
    from anatomist.shape.export import export_trl

    for recipe in (Recipe(token_filter=TokenFilter((0,), tau=0.0)), Recipe(steer=Steering(0, 1.0))):
        with pytest.raises(AnatomistError, match="no TRL form"):
            export_trl(None, None, pairs(), audit, tmp_path / "x.jsonl", recipe=recipe, beta=0.1)
