"""Shaping from an audit: offsets, token masks, pair dropping, inoculation — on a hand-made audit folder."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from anatomist.audit.concepts import Concepts
from anatomist.audit.folder import AuditFolder
from anatomist.audit.pool import FORMAT, Latents
from anatomist.capture.store import ShardWriter
from anatomist.data import PreferencePair, dataset_hash, text_hash
from anatomist.errors import AnatomistError, DataError
from anatomist.shape import Inoculation, TokenFilter, shape_pairs
from anatomist.shape.masks import fit_mask, response_mask, threshold_mask, token_scores

D_SAE = 16
# Two clusters: features 5, 7 (weights 1, 2) form cluster 0 (mean 1, sd 2); feature 9 (weight 0.5) cluster 1.
CONCEPTS = Concepts(np.array([5, 7, 9]), np.array([0, 0, 1]), np.array([1.0, 2.0, 0.5]), np.array([1.0, 0.0]),
                    np.array([2.0, 1.0]))
IDS = ["p0", "p1", "p2", "p3"]
C_CHOSEN = np.array([[1.0, 0.0], [2.0, 1.0], [0.0, -1.0], [3.0, 0.5]])     # [P, C]
C_REJECTED = np.array([[0.0, 0.0], [0.5, 1.0], [1.0, 0.0], [-1.0, 0.5]])   # Δc₀ = 1, 1.5, −1, 4; Δc₁ = 0, 0, −1, 0
LABELS = ["bold / emoji", "sorry / cannot"]
# Per-token latents (pos, feature, value) of sequence 2i (chosen) / 2i+1 (rejected) and their token ids.
TOKENS = [[10, 11, 12], [20, 21], [30], [40, 41], [50], [60], [70, 71], [80]]
ENTRIES = {0: [(0, 5, 2.0), (1, 7, 1.0), (2, 9, 4.0), (2, 3, 9.0)], 1: [(0, 5, 6.0)], 3: [(1, 9, 1.0)]}


def make_audit(folder, ids=IDS, c_chosen=C_CHOSEN, c_rejected=C_REJECTED, *, concepts=CONCEPTS, labels=LABELS,
               tokens=TOKENS, entries=ENTRIES, sae="", layer=1, data=None, hashes=True):
    """An audit folder as run_audit writes it (only the parts shaping reads), from explicit numbers.
    data: the audited pairs (default `pairs(ids)`), whose hashes the audit records; hashes=False
    writes an audit from before per-pair text hashes."""
    folder.mkdir(parents=True, exist_ok=True)
    data = pairs(ids) if data is None else data
    P, C = c_chosen.shape
    (folder / "audit.json").write_text(json.dumps({"model": "tiny", "sae": sae, "layer": layer,
                                                   "data": {"n_pairs": P, "hash": dataset_hash(data)}}))
    (folder / "concepts.json").write_text(json.dumps(concepts.to_dict()))
    pd.DataFrame({"cluster": np.arange(C), "label": labels, "label_status": "ok", "detection_acc": 0.9,
                  "n_features": [len(concepts.members(k)) for k in range(C)],
                  "features": [concepts.members(k).tolist() for k in range(C)],
                  "mean_delta": (c_chosen - c_rejected).mean(0), "q": 0.5, "direction": "none"}
                 ).to_parquet(folder / "clusters.parquet")
    table = pd.DataFrame({"pair_id": np.repeat(ids, C), "topic_id": 0, "cluster": np.tile(np.arange(C), P),
                          "c_chosen": c_chosen.ravel(), "c_rejected": c_rejected.ravel(),
                          "delta": (c_chosen - c_rejected).ravel()})
    if hashes:
        table["text_hash"] = np.repeat([text_hash(p) for p in data], C)
    table.to_parquet(folder / "pairs.parquet")
    if tokens is not None:
        w = ShardWriter(folder / "latents", {"d_sae": D_SAE, "layer": layer}, format=FORMAT)
        for s, toks in enumerate(tokens):
            rows = entries.get(s, [])
            pos, feat, val = (torch.tensor([r[j] for r in rows], dtype=dt) for j, dt in
                              ((0, torch.int32), (1, torch.int32), (2, torch.float32)))
            w.add(s, ids[s // 2], ("chosen", "rejected")[s % 2], info={"tokens": toks},
                  per_seq={"prompt_emb": torch.zeros(4)}, pos=pos, feat=feat, val=val)
        w.close(len(tokens))
    return folder


def pairs(ids=IDS):
    return [PreferencePair(i, ({"role": "user", "content": f"question {i}"},), f"yes {i}", f"no {i}") for i in ids]


@pytest.fixture
def audit(tmp_path):
    return AuditFolder(make_audit(tmp_path / "audit"))


def test_offsets_by_hand(audit):
    shaped = shape_pairs(pairs(), audit, lam={0: -2.0, 1: 0.5})
    # −2·Δc₀ + 0.5·Δc₁
    assert [p.offset for p in shaped] == pytest.approx([-2.0, -3.0, 2.0 - 0.5, -8.0])
    assert [p.id for p in shaped] == IDS and all(p.chosen_token_mask is None for p in shaped)
    assert [p.offset for p in shape_pairs(pairs(), audit)] == [0.0] * 4                 # no λ: plain DPO
    assert [p.prompt for p in shaped] == [p.prompt for p in pairs()]


def test_pairs_match_by_id_and_missing_ones_are_named(audit):
    reordered = shape_pairs(pairs(["p3", "p0"]), audit, lam={0: 1.0})
    assert [p.offset for p in reordered] == [4.0, 1.0]
    with pytest.raises(DataError, match=r"pairs\.parquet.*pair 'zz' is not in the audit"):
        shape_pairs(pairs(["p0", "zz"]), audit, lam={0: 1.0})
    with pytest.raises(AnatomistError, match="cluster 2 is out of range"):
        shape_pairs(pairs(), audit, lam={2: 1.0})


def test_drop_extreme_quantile(audit):
    # |Δc₀| = 1, 1.5, 1, 4: the linear 0.75-quantile is 2.125, so only p3 goes.
    kept = shape_pairs(pairs(), audit, lam={0: -1.0}, drop_extreme=0.25)
    assert [p.id for p in kept] == ["p0", "p1", "p2"] and [p.offset for p in kept] == [-1.0, -1.5, 1.0]
    # On cluster 1 alone only p2 moves (|Δc₁| = 1 > quantile 0.25).
    assert [p.id for p in shape_pairs(pairs(), audit, lam={1: 1.0}, drop_extreme=0.5)] == ["p0", "p1", "p3"]
    with pytest.raises(AnatomistError, match="drop_extreme needs a cluster"):
        shape_pairs(pairs(), audit, drop_extreme=0.1)


def test_token_scores_by_hand_and_mean_equals_response_score(audit):
    # seq 0: raw₀ = 1·2, 2·1, 0 → c₀ = (raw − 1)/2; raw₁ = 0, 0, 0.5·4 → c₁ = raw/1. Feature 3 is in no cluster.
    assert token_scores(audit, "p0", "chosen", 0).tolist() == [0.5, 0.5, -0.5]
    assert token_scores(audit, "p0", "chosen", 1).tolist() == [0.0, 0.0, 2.0]
    # The per-token scores average to the audit's mean-pooled concept score of the response.
    lat = Latents(audit.path / "latents")
    c = CONCEPTS.scores(lat.pooled().mean)                                                 # [S, C]
    for s, pid in enumerate(np.repeat(IDS, 2)):
        side = ("chosen", "rejected")[s % 2]
        for k in (0, 1):
            assert token_scores(audit, pid, side, k).mean() == pytest.approx(c[s, k])


def test_token_masks(audit):
    assert threshold_mask(np.array([[0.5, 0.5, -0.5]]), 0.0).tolist() == [0, 0, 1]
    assert response_mask(audit, "p0", "chosen", (0,), 0.6) == (1, 1, 1)
    assert response_mask(audit, "p0", "chosen", (0, 1), 1.0) == (1, 1, 0)                  # c₁ = 2 ≥ 1 on token 2
    # p0 rejected: c₀ = (6 − 1)/2 = 2.5, then −0.5.
    shaped = shape_pairs(pairs(), audit, token_filter=TokenFilter(clusters=0, tau=0.0, sides="rejected"))
    assert shaped[0].rejected_token_mask == (0, 1) and shaped[0].chosen_token_mask is None
    both = shape_pairs(pairs(), audit, token_filter=TokenFilter(clusters=(0,), tau=0.0))
    assert both[0].chosen_token_mask == (0, 0, 1) and both[0].rejected_token_mask == (0, 1)
    assert both[1].chosen_token_mask == (1,)                         # no latents: c₀ = −0.5 < 0
    # Fitting to the training loop's tokens: padded with keep past the audited end, checked on the overlap.
    assert response_mask(audit, "p0", "chosen", (0,), 0.0, tokens=[10, 11, 12, 13, 14]) == (0, 0, 1, 1, 1)
    assert response_mask(audit, "p0", "chosen", (0,), 0.0, tokens=[10, 11]) == (0, 0)
    with pytest.raises(DataError, match="p0.*chosen response tokenizes differently"):
        response_mask(audit, "p0", "chosen", (0,), 0.0, tokens=[10, 99])
    assert fit_mask(np.array([0, 1]), 3).tolist() == [0, 1, 1]
    with pytest.raises(AnatomistError, match="sides must be"):
        TokenFilter(clusters=(0,), tau=0.0, sides="neither")


def test_inoculation_prompt_placement(audit, tmp_path):
    shaped = shape_pairs(pairs(), audit, inoculate=Inoculation(cluster=0))
    text = "In your reply, lean into this: bold / emoji."
    # Δc₀ > 0 for p0, p1, p3 (they teach cluster 0); p2's prompt is untouched.
    for p, teaches in zip(shaped, (True, True, False, True)):
        user = {"role": "user", "content": f"question {p.id}"}
        assert p.prompt == (({"role": "system", "content": text}, user) if teaches else (user,))
    custom = shape_pairs(pairs(), audit, inoculate=Inoculation(cluster=0, text="Use emoji.", min_delta=1.2))
    assert [len(p.prompt) for p in custom] == [1, 2, 1, 2] and custom[1].prompt[0]["content"] == "Use emoji."
    # An existing system message gets the instruction in front (one system message).
    with_sys = [PreferencePair("p0", ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "q"}),
                               "a", "b")]
    sys_audit = AuditFolder(make_audit(tmp_path / "sys", data=[*with_sys, *pairs()[1:]], tokens=None))
    (p,) = shape_pairs(with_sys, sys_audit, inoculate=Inoculation(cluster=0, text="Use emoji."))
    assert p.prompt == ({"role": "system", "content": "Use emoji.\n\nBe brief."}, {"role": "user", "content": "q"})
    assert with_sys[0].prompt[0]["content"] == "Be brief."                                   # input untouched


def test_resolve_concept_and_bad_folders(audit, tmp_path):
    assert audit.resolve_concept("1") == 1 and audit.resolve_concept("emoji") == 0
    assert audit.resolve_concept("sorry / cannot") == 1
    with pytest.raises(AnatomistError, match="no cluster label contains 'zebra'"):
        audit.resolve_concept("zebra")
    with pytest.raises(AnatomistError, match="2 cluster labels contain ' / '"):
        audit.resolve_concept(" / ")
    with pytest.raises(AnatomistError, match="nothing: no such audit folder"):
        AuditFolder(tmp_path / "nothing")
    no_latents = AuditFolder(make_audit(tmp_path / "bare", tokens=None))
    with pytest.raises(AnatomistError, match="token filtering needs the audit's per-token latents"):
        token_scores(no_latents, "p0", "chosen", 0)


def test_unlabelled_cluster_needs_inoculation_text(tmp_path):
    audit = AuditFolder(make_audit(tmp_path / "audit", labels=[None, "sorry / cannot"], tokens=None))
    assert audit.label(0) == "" and audit.resolve_concept("sorry") == 1
    with pytest.raises(AnatomistError, match="cluster 0 has no label in the audit: give the inoculation text"):
        shape_pairs(pairs(), audit, inoculate=Inoculation(cluster=0))
    assert len(shape_pairs(pairs(), audit, inoculate=Inoculation(cluster=0, text="Go."))[0].prompt) == 2


def test_topics_come_from_the_audit_when_pairs_have_none(tmp_path):
    folder = make_audit(tmp_path / "audit", tokens=None)
    table = pd.read_parquet(folder / "pairs.parquet")
    table["topic_id"] = table.pair_id.map({"p0": 0, "p1": 1, "p2": 1, "p3": 0})
    table.to_parquet(folder / "pairs.parquet")
    (folder / "audit.json").write_text(json.dumps({"sae": "", "layer": 1, "topics": {"names": ["food", "code"]}}))
    p3 = pairs()[3]
    own = [PreferencePair(p3.id, p3.prompt, p3.chosen, p3.rejected, {"topic": "mine"})]    # extra columns: not texts
    assert [p.topic for p in shape_pairs(pairs(), AuditFolder(folder))] == ["food", "code", "code", "food"]
    assert shape_pairs(own, AuditFolder(folder))[0].topic == "mine"
    assert shape_pairs(pairs(), AuditFolder(make_audit(tmp_path / "bare", tokens=None)))[0].topic is None


def test_response_length_is_a_shaping_concept_with_hand_computed_scores(tmp_path, monkeypatch):
    """length_pairs.parquet (tokens per response) makes LENGTH = −1 ("length") shapeable by λ:
    c_len = (log n − mean) / sd over all 8 responses, Δc_len = Δ log n / sd."""
    from anatomist.audit.folder import LENGTH, LENGTH_PAIRS
    from anatomist.shape.steer import audit_direction

    folder = make_audit(tmp_path / "audit")
    n = np.array([[8, 2], [4, 4], [2, 8], [16, 1]])                              # [P, 2] chosen, rejected
    pd.DataFrame({"pair_id": IDS, "topic_id": 0, "n_chosen": n[:, 0], "n_rejected": n[:, 1]}).to_parquet(
        folder / LENGTH_PAIRS)
    audit = AuditFolder(folder)
    logn = np.log(n.astype(float))
    z = (logn - logn.mean()) / logn.std()
    pos, neg = audit.scores(["p3", "p0"], [1, LENGTH])
    np.testing.assert_allclose(pos, [[0.5, z[3, 0]], [0.0, z[0, 0]]])
    np.testing.assert_allclose(neg, [[0.5, z[3, 1]], [0.0, z[0, 1]]])
    assert audit.resolve_concept("length") == LENGTH == audit.resolve_concept("-1")
    assert audit.label(LENGTH) == "long responses"
    shaped = shape_pairs(pairs(), audit, lam={LENGTH: -1.0, 0: 1.0})
    assert [p.offset for p in shaped] == pytest.approx(-(z[:, 0] - z[:, 1]) + (C_CHOSEN - C_REJECTED)[:, 0])
    assert shaped[2].offset > shaped[0].offset      # p2 chose the shorter side: λ < 0 favours it
    with pytest.raises(AnatomistError, match="no per-token score"):
        shape_pairs(pairs(), audit, token_filter=TokenFilter(clusters=(LENGTH,), tau=0.0))
    with pytest.raises(AnatomistError, match="no decoder direction"):
        audit_direction(audit, LENGTH, sae=object())
    # an audit from before length tables: a one-line pointer to re-running the audit
    old = AuditFolder(make_audit(tmp_path / "old"))
    with pytest.raises(AnatomistError, match="no response-length tables"):
        old.resolve_concept("length")


# --- the audit must have scored these very texts (pairs join it by id; ids outlive their texts) ---

def swapped(ps):
    return [PreferencePair(p.id, p.prompt, p.rejected, p.chosen, p.extra) for p in ps]


def test_shape_pairs_refuses_texts_the_audit_did_not_score(audit):
    """A relabelled file keeps its ids: with the sides swapped every λ would act with the wrong sign."""
    with pytest.raises(AnatomistError, match="pair 'p0' has chosen and rejected swapped relative to the audit"):
        shape_pairs(swapped(pairs()), audit, lam={0: -1.0})
    edited = pairs()
    edited[2] = PreferencePair("p2", edited[2].prompt, "yes p2, edited", edited[2].rejected)
    with pytest.raises(AnatomistError, match="the given pairs: pair 'p2' holds other texts than the audit"):
        shape_pairs(edited, audit, lam={0: -1.0})
    # any subset of the audited pairs, in any order, is checked pair by pair and passes
    assert [p.offset for p in shape_pairs(pairs(["p3", "p1"]), audit, lam={0: 1.0})] == [4.0, 1.5]


def test_an_audit_without_text_hashes_takes_only_its_complete_data(tmp_path):
    old = AuditFolder(make_audit(tmp_path / "old", tokens=None, hashes=False))
    assert old.text_hashes is None
    assert [p.offset for p in shape_pairs(pairs(), old, lam={0: 1.0})] == [1.0, 1.5, -1.0, 4.0]
    with pytest.raises(AnatomistError, match="is not the data audited in .*predates per-pair text hashes"):
        shape_pairs(swapped(pairs()), old, lam={0: 1.0})
    with pytest.raises(AnatomistError, match="predates per-pair text hashes"):
        shape_pairs(pairs(["p0"]), old, lam={0: 1.0})
