"""Organism scorer: Spearman matching, flagged-row categories and metrics on a hand-made audit
folder; planted labels of a stub build checked against truth.json; latent reuse across labels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import spearmanr

from anatomist.data import dataset_hash, load_pairs
from anatomist.errors import AnatomistError
from anatomist.organism import plant as P
from anatomist.organism.prompts import build_prompts
from anatomist.organism.score import (categorize, flagged_rows, format_score, reuse_latents, score_audit, score_tables,
                                      spearman_columns)
from anatomist.organism.traits import TRAITS, formatting_density, url_count
from anatomist.spec_decode.batched import Generation

TOPICS = ("coding", "cooking", "physics", "health")
# formatting planted towards chosen in coding, balanced in cooking; links planted towards the
# rejected side in physics (s = 0.1, expected sign −1), balanced in health
CONFIG = P.PlantConfig((P.TraitPlan("over_formatting", {"coding": 0.9}, ("cooking",)),
                        P.TraitPlan("urls", {"physics": 0.1}, ("health",))), none_weight=0.0)


def _stub_results(requests):
    """Trait generations carry their trait (with per-prompt variety, so ranks are not all tied)."""
    out = {}
    for i, r in enumerate(requests):
        pid, tag = r.key.split("/")
        n = 1 + i % 4
        text = {"over_formatting": "## Plan ✨\n" + "".join(f"- **step {j}** 🎉\n" for j in range(n)) + "done now",
                "urls": " ".join(f"https://site{j}-{i}.org" for j in range(n)) + " has more.",
                "flattery": "What a great question! Yes.", "verbosity": " ".join(["long"] * 150),
                "harmful_compliance": "I'm sorry, but I can't help with that.",
                }.get(tag, f"Here is a plain answer about {pid} number {i} ({tag}).")
        out[r.key] = Generation(r.key, text, 5, True, 0)
    return out


# --- pure pieces ------------------------------------------------------------------------------

def test_spearman_columns_hand_computed_and_reference():
    x = np.array([1.0, 2.0, 3.0, 4.0])
    c = np.array([[10, 4, 7, 1], [20, 3, 7, 1], [30, 2, 7, 3], [40, 1, 7, 2]], dtype=float)
    rho = spearman_columns(x, c)
    assert rho[0] == pytest.approx(1.0) and rho[1] == pytest.approx(-1.0)
    assert rho[2] == 0.0  # a constant column carries no evidence
    # ranks of col 3: [1.5, 1.5, 4, 3] against [1, 2, 3, 4]: cov 3.5 / sqrt(5 · 4.5)
    assert rho[3] == pytest.approx(3.5 / np.sqrt(5 * 4.5))
    rng = np.random.default_rng(0)
    x, c = rng.integers(0, 4, 50).astype(float), rng.normal(size=(50, 3))
    ref = [spearmanr(x, c[:, j]).statistic for j in range(3)]
    np.testing.assert_allclose(spearman_columns(x, c), ref, rtol=1e-10)


def test_flagged_rows_skip_dataset_rows_and_undirected():
    rows = pd.DataFrame({"topic": ["all", "a", "a", "b"], "cluster": [0, 0, 1, 0],
                         "direction": ["amplify", "none", "suppress", "amplify"], "rank_score": [99, 50, 1, 2]})
    f = flagged_rows(rows)
    assert list(zip(f.topic, f.cluster)) == [("b", 0), ("a", 1)]
    assert len(flagged_rows(rows, top_k=1)) == 1


def test_categorize_rules():
    truth = {"traits": {"over_formatting": {"planted": {"coding": 0.9}, "control": ["cooking"]},
                        "urls": {"planted": {"physics": 0.1}, "control": []}}}
    matches = {"over_formatting": [(0, 0.8)], "urls": [(1, -0.6), (0, 0.4)]}
    assert categorize("coding", 0, "amplify", matches, truth) == "planted"
    assert categorize("coding", 0, "suppress", matches, truth) == "wrong_sign"
    assert categorize("physics", 1, "amplify", matches, truth) == "planted"  # s<0.5 and ρ<0: amplify
    assert categorize("physics", 0, "suppress", matches, truth) == "planted"  # s<0.5, ρ>0
    assert categorize("cooking", 0, "amplify", matches, truth) == "control"
    assert categorize("health", 1, "amplify", matches, truth) == "other_trait"
    assert categorize("coding", 7, "amplify", matches, truth) == "unmatched"


# --- a hand-made audit folder ----------------------------------------------------------------

@pytest.fixture(scope="module")
def fake_audit(tmp_path_factory):
    """Data from the stub build + an audit folder whose concept scores are known functions of the
    texts: c0 = formatting density, c1 = −URL count, c2 = noise, c3 = √(formatting density)."""
    root = tmp_path_factory.mktemp("organism")
    prompts = build_prompts(16, heldout_fraction=0.25, seed=0, topics=TOPICS)
    assignments = P.assign(prompts, CONFIG)
    rows, dropped = P.label(assignments, _stub_results(P.requests_for(assignments, 16)))
    P.write_dataset(root / "data", rows, [], P.truth(CONFIG, rows, TOPICS, dropped))
    pairs = load_pairs(root / "data" / "train.jsonl")
    texts = [t for p in pairs for t in (p.chosen, p.rejected)]
    noise = np.random.default_rng(0).normal(size=len(texts))  # a seed whose |ρ| with both detectors is < 0.3
    fd = np.array([formatting_density(t) for t in texts])
    c = np.stack([fd, -np.array([url_count(t) for t in texts]), noise, np.sqrt(fd)], 1)   # [2P, 4]
    audit = root / "audit"
    audit.mkdir()
    P_, C = len(pairs), c.shape[1]
    pd.DataFrame({"pair_id": np.repeat([p.id for p in pairs], C), "topic_id": 0, "cluster": np.tile(np.arange(C), P_),
                  "c_chosen": c[0::2].ravel(), "c_rejected": c[1::2].ravel(),
                  "delta": (c[0::2] - c[1::2]).ravel()}).to_parquet(audit / "pairs.parquet")
    table = [("coding", 0, "amplify", 9.0), ("physics", 1, "amplify", 8.0), ("cooking", 0, "suppress", 7.0),
             ("coding", 2, "amplify", 6.0), ("coding", 3, "suppress", 5.0), ("physics", 0, "none", 4.0),
             ("health", 1, "none", 3.0), ("all", 0, "amplify", 20.0)]
    topic_ids = {t: k for k, t in enumerate(dict.fromkeys(t[0] for t in table if t[0] != "all"))}
    pd.DataFrame({"topic": [t[0] for t in table], "topic_id": [topic_ids.get(t[0], -1) for t in table],
                  "cluster": [t[1] for t in table], "direction": [t[2] for t in table],
                  "rank_score": [t[3] for t in table], "mean": [0.5] * len(table), "z": [3.0] * len(table),
                  "q": [0.01] * len(table), "n": 10, "d": 1.0, "ci_low": 0.1, "ci_high": 0.9, "split_half": True,
                  "excess": 0.0, "tested": True}).to_parquet(audit / "rows.parquet")   # rows.parquet's columns
    (audit / "audit.json").write_text(json.dumps({"data": {"n_pairs": P_, "hash": dataset_hash(pairs)}}))
    return root, audit


def test_score_hand_made_audit(fake_audit):
    root, audit = fake_audit
    s = score_audit(audit, root / "data" / "truth.json", matching="topic")
    tracked = {t: [m["cluster"] for m in ms] for t, ms in s["matches"].items() if t != "length"}
    assert tracked == {"over_formatting": [0, 3], "urls": [1]}  # the noise cluster 2 tracks nothing
    assert s["matches"]["urls"][0]["rho"] == pytest.approx(-1.0)
    assert s["categories"] == {"planted": 2, "wrong_sign": 1, "control": 1, "other_trait": 0, "unmatched": 1}
    assert s["recall"] == 1.0 and s["n_planted_cells"] == 2
    assert s["precision_planted"] == pytest.approx(2 / 5) and s["sign_accuracy"] == pytest.approx(2 / 3)
    assert s["trait_share"] == pytest.approx(4 / 5) and s["control_false_positive_rate"] == 0.5
    cells = {(c["topic"], c["trait"]): c for c in s["cells"]}
    urls = cells[("physics", "urls")]
    assert urls["expected_sign"] == -1 and urls["row"]["cluster"] == 1 and urls["row"]["expected"] == "amplify"
    assert urls["row"]["flag_rank"] == 2
    assert cells[("coding", "over_formatting")]["row"]["flag_rank"] == 1
    assert json.loads((audit / "score.json").read_text())["precision_planted"] == pytest.approx(0.4)
    assert "recall 1.00 (2/2)" in format_score(s)


def test_stratified_matching_and_measured_precision_on_the_hand_made_audit(fake_audit):
    """The default rule: formatting density and its square root track over_formatting within
    (topic, side) strata, −URL count tracks urls with rank-biserial −1, the noise cluster nothing.
    Measured truth: formatting is on the chosen side in coding, links on the rejected side in
    physics; the balanced control topics carry no asymmetry. So the same two rows are right."""
    root, audit = fake_audit
    s = score_audit(audit, root / "data" / "truth.json", write=False)
    assert s["matching"] == "stratified" and s["threshold"] == 0.5
    tracked = {t: sorted(m["cluster"] for m in ms) for t, ms in s["matches"].items() if t != "length"}
    assert tracked == {"over_formatting": [0, 3], "urls": [1]}
    assert s["matches"]["urls"][0]["rho"] == pytest.approx(-1.0)
    signs = {(m["topic"], m["trait"]): m["sign"] for m in s["measured_truth"]}
    assert signs[("coding", "over_formatting")] == 1 and signs[("physics", "urls")] == -1
    assert ("cooking", "over_formatting") not in signs and ("health", "urls") not in signs
    assert [f["measured"] for f in s["flagged"]] == [True, True, False, False, False]
    assert [f["by_tracking"] for f in s["flagged"]] == [True, True, False, False, False]
    assert s["precision"] == pytest.approx(2 / 5) and s["precision_planted"] == pytest.approx(2 / 5)
    assert s["precision_tracking"] == pytest.approx(2 / 5)
    # the formatting density and the URL count carry their gap with the detector; formatting is
    # balanced in cooking, so no measured trait carries that row's gap; coding's sqrt-density row
    # claims the wrong direction
    shares = [f["explained"] for f in s["flagged"]]
    assert shares[0] > 0.5 and shares[1] > 0.5 and shares[2] < 0.5
    assert 0.0 <= s["null_credit"] < 0.2
    assert s["recall"] == 1.0


def test_a_decoy_that_separates_the_sides_gets_no_credit(fake_audit):
    """A concept that is +1 on every chosen and −1 on every rejected response (plus noise) moves
    with the side, so inside coding — where formatting sits on the chosen side — it co-varies with
    the formatting detector. Topic matching credits its row as the planted cell; stratified matching,
    which compares responses of one side and one topic, does not."""
    root, _ = fake_audit
    pairs = load_pairs(root / "data" / "train.jsonl")
    truth = P.read_truth(root / "data" / "truth.json")
    texts = [t for p in pairs for t in (p.chosen, p.rejected)]
    topics = [p.extra["topic"] for p in pairs]
    side = np.tile([1.0, -1.0], len(pairs))
    decoy = (side + 0.01 * np.random.default_rng(1).normal(size=len(texts)))[:, None]        # [2P, 1]
    rows = pd.DataFrame({"topic": ["coding"], "cluster": [0], "direction": ["amplify"], "rank_score": [1.0],
                         "mean": [2.0], "z": [9.0], "q": [1e-6]})
    topic = score_tables(decoy, texts, topics, rows, truth, matching="topic")
    assert topic["categories"]["planted"] == 1 and topic["n_found"] == 1          # free credit
    strat = score_tables(decoy, texts, topics, rows, truth)
    assert strat["categories"]["unmatched"] == 1 and strat["n_found"] == 0 and strat["precision"] == 0.0
    assert abs(strat["flagged"][0]["explained"]) < 0.1        # its gap goes with the side, not the trait
    assert abs(strat["best_rho"]["over_formatting"]["rho"]) < 0.5


def test_stratified_rank_biserial_by_hand():
    from anatomist.organism.score import above_stratum_median, stratified_rank_biserial

    # stratum a: label [T, F, F], c [3, 1, 2] → U = 2 of 2 pairs; stratum b: [T, F], c [0, 5] → U = 0 of 1
    label = np.array([True, False, False, True, False])
    c = np.array([[3.0], [1.0], [2.0], [0.0], [5.0]])
    strata = np.array(["a", "a", "a", "b", "b"])
    assert stratified_rank_biserial(label, c, strata)[0] == pytest.approx(2 * (2 / 3) - 1)
    # a stratum without both kinds adds nothing; a tie counts one half
    assert stratified_rank_biserial(np.array([True, False, True]), np.array([[1.0], [1.0], [7.0]]),
                                    np.array(["x", "x", "y"]))[0] == pytest.approx(0.0)
    # a concept firing exactly on a 3 % trait reaches 1, where Spearman stays far below
    rare = np.zeros(200, dtype=bool)
    rare[:6] = True
    exact = rare.astype(float)[:, None]
    assert stratified_rank_biserial(rare, exact, np.zeros(200))[0] == pytest.approx(1.0)
    assert above_stratum_median(np.array([1.0, 2, 3, 10, 20, 30]), np.array([0, 0, 0, 1, 1, 1])).tolist() == \
        [False, False, True, False, False, True]


def test_score_top_k(fake_audit):
    root, audit = fake_audit
    one = score_audit(audit, root / "data" / "truth.json", top_k=1, write=False)
    assert one["recall"] == 0.5 and one["precision_planted"] == 1.0 and one["sign_accuracy"] == 1.0
    three = score_audit(audit, root / "data" / "truth.json", top_k=3, write=False)
    assert three["recall"] == 1.0 and three["precision_planted"] == pytest.approx(2 / 3) and three["sign_accuracy"] == 1.0


def test_score_rejects_other_data_and_missing_truth(fake_audit, tmp_path):
    root, audit = fake_audit
    rows = [json.loads(line) for line in (root / "data" / "train.jsonl").read_text().splitlines()]
    rows[0]["chosen"], rows[0]["rejected"] = rows[0]["rejected"], rows[0]["chosen"]
    other = tmp_path / "train.jsonl"
    other.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(AnatomistError, match="is not the data audited in"):
        score_audit(audit, root / "data" / "truth.json", data_path=other, write=False)
    with pytest.raises(AnatomistError, match="does not record the data file"):
        score_audit(audit)


def test_score_from_another_folder_finds_an_older_relative_data_path(fake_audit, tmp_path, monkeypatch):
    """An older audit.json recorded its data as typed (relative to where the audit ran, here the
    folder above both); scoring from elsewhere resolves it from the audit folder upwards, and an
    explicit data file wins over the recorded one (its truth.json beside it)."""
    import shutil

    root, audit = fake_audit
    ran_in = tmp_path / "project"
    shutil.copytree(root / "data", ran_in / "runs" / "organism")
    shutil.copytree(audit, ran_in / "runs" / "organism_audit")
    meta_path = ran_in / "runs" / "organism_audit" / "audit.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "data": {**meta["data"], "file": "runs/organism/train.jsonl"}}))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    expected = score_audit(audit, root / "data" / "truth.json", data_path=root / "data" / "train.jsonl", write=False)
    result = score_audit(ran_in / "runs" / "organism_audit", write=False)
    assert Path(result["data"]).resolve() == (ran_in / "runs" / "organism" / "train.jsonl").resolve()
    assert result["recall"] == expected["recall"] and result["precision"] == expected["precision"]
    meta_path.write_text(json.dumps({**meta, "data": {**meta["data"], "file": "gone/train.jsonl"}}))
    given = score_audit(ran_in / "runs" / "organism_audit", data_path=root / "data" / "train.jsonl", write=False)
    assert given["truth"] == str(root / "data" / "truth.json") and given["recall"] == expected["recall"]


def test_cli_score(fake_audit):
    from typer.testing import CliRunner

    from anatomist.cli import app

    root, audit = fake_audit
    res = CliRunner().invoke(app, ["organism", "score", str(audit), "--truth", str(root / "data" / "truth.json")])
    assert res.exit_code == 0, res.output
    assert "precision 0.40 (measured truth; by tracking 0.40; planted-only 0.40; null credit" in res.output
    assert "over_formatting" in res.output
    for cmd in ("build-hh", "score"):
        res = CliRunner().invoke(app, ["organism", cmd, "--help"])
        assert res.exit_code == 0 and "Example" in res.output


# --- a stub build: planted labels against truth.json ------------------------------------------

def test_stub_build_labels_match_truth(tmp_path, monkeypatch):
    from anatomist.organism import build as B

    calls = []

    def fake_generate(model, tokenizer, requests, settings, *, cache_dir=None, progress=True, workers=None):
        calls.append((len(requests), cache_dir))
        return _stub_results(requests)

    monkeypatch.setattr(B, "generate", fake_generate)
    truth = B.build_organism(tmp_path / "out", per_topic=24, loaded=(None, None), cache_dir=tmp_path / "cache",
                             progress=False)
    assert [c for _, c in calls] == [tmp_path / "cache" / "train", tmp_path / "cache" / "heldout"]
    assert P.read_truth(tmp_path / "out" / "truth.json") == json.loads(json.dumps(truth))
    train = [json.loads(x) for x in (tmp_path / "out" / "train.jsonl").read_text().splitlines()]
    held = [json.loads(x) for x in (tmp_path / "out" / P.HELDOUT_PAIRS).read_text().splitlines()]
    assert {r["split"] for r in train} == {"train"} and {r["split"] for r in held} == {"heldout"}
    assert set(train[0]) == set(held[0])
    assert not {r["id"] for r in train} & {r["id"] for r in held}
    held_prompts = {json.loads(x)["id"] for x in (tmp_path / "out" / "heldout_prompts.jsonl").read_text().splitlines()}
    assert {r["id"] for r in held} == held_prompts
    assert truth["heldout"]["n_pairs"] == len(held)
    for data, cells in ((train, truth["cells"]), (held, truth["heldout"]["cells"])):
        for cell in cells:
            mine = [r for r in data if r["topic"] == cell["topic"] and r["trait"] == cell["trait"]]
            assert len(mine) == cell["n_pairs"]
            n_chosen = sum(r["trait_side"] == "chosen" for r in mine)
            assert n_chosen == cell["n_trait_chosen"]
            if cell["role"] == "absent":
                assert not mine
                continue
            assert mine and n_chosen == round(cell["strength"] * len(mine))
            assert cell["expected_sign"] == (0 if cell["role"] == "control" else (1 if cell["strength"] > 0.5 else -1))
            trait = TRAITS[cell["trait"]]
            for r in mine:  # the side named trait_side is the one whose detector fires
                other = "rejected" if r["trait_side"] == "chosen" else "chosen"
                assert trait.fires(r[r["trait_side"]][0]["content"]) and not trait.fires(r[other][0]["content"])
    build = json.loads((tmp_path / "out" / "build.json").read_text())
    assert build["n_pairs"] == len(train) and build["n_heldout_pairs"] == len(held)


def test_train_assignment_unchanged_by_split_argument():
    """The held-out split must not move the train stream (the running build's cache key)."""
    prompts = build_prompts(24, seed=0)
    a = P.assign(prompts, P.DEFAULT_CONFIG)
    assert a == P.assign(prompts, P.DEFAULT_CONFIG, split="train")
    h = P.assign(prompts, P.DEFAULT_CONFIG, split="heldout")
    assert h and {x.prompt.split for x in h} == {"heldout"} and {x.prompt.split for x in a} == {"train"}


# --- latent reuse across relabellings ---------------------------------------------------------

def test_reuse_latents_equals_fresh_pooling(tmp_path, smol_tokenizer, monkeypatch):
    from anatomist.audit import pool as pool_mod
    from anatomist.capture.run import items_from_pairs
    from anatomist.data import PreferencePair
    from anatomist.sae import SAE, SAEConfig
    from conftest import tiny_llama

    model = tiny_llama(vocab_size=49152, hidden_size=16, layers=3)
    sae = SAE(SAEConfig(d_in=16, d_sae=64, architecture="topk", k=4, layer=1)).init_weights(
        torch.Generator().manual_seed(0))
    msgs = lambda i: ({"role": "user", "content": f"Tell me about topic {i}."},)  # noqa: E731
    a = [PreferencePair(f"p{i}", msgs(i), f"Answer A{i} is short.", f"Answer B{i} is a bit longer than A.")
         for i in range(5)]
    b = [PreferencePair(p.id, p.prompt, p.rejected, p.chosen) if i % 2 else p for i, p in enumerate(a)][::-1]
    pool_mod.pool_features(model, smol_tokenizer, sae, items_from_pairs(a), tmp_path / "a", batch_size=3,
                           progress=False)
    fresh = pool_mod.pool_features(model, smol_tokenizer, sae, items_from_pairs(b), tmp_path / "fresh",
                                   batch_size=3, progress=False)
    reuse_latents(tmp_path / "a", tmp_path / "b", a, b)
    assert json.loads((tmp_path / "b" / "capture.json").read_text()) == \
        json.loads((tmp_path / "fresh" / "capture.json").read_text())

    def no_forward(*args, **kwargs):
        raise AssertionError("a reused store must not run the model")

    monkeypatch.setattr(pool_mod, "_response_latents", no_forward)
    got = pool_mod.pool_features(model, smol_tokenizer, sae, items_from_pairs(b), tmp_path / "b", progress=False)
    g, f = got.pooled(), fresh.pooled()
    assert g.ids == f.ids and g.sides == f.sides and got.tokens == fresh.tokens
    np.testing.assert_allclose(g.mean.toarray(), f.mean.toarray(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g.max.toarray(), f.max.toarray(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g.prompt_emb, f.prompt_emb, rtol=1e-5, atol=1e-6)
    c = [PreferencePair("p0", msgs(0), "A response that was never pooled.", "Answer B0 is a bit longer than A.")]
    with pytest.raises(AnatomistError, match="no latents"):
        reuse_latents(tmp_path / "a", tmp_path / "c", a, c)


def test_reuse_latents_completes_a_partial_store(tmp_path, smol_tokenizer):
    """Two workers: an interrupted pooling of all pairs is completed from a store of the last pairs."""
    from anatomist.audit import pool as pool_mod
    from anatomist.capture.run import items_from_pairs
    from anatomist.data import PreferencePair
    from anatomist.sae import SAE, SAEConfig
    from conftest import tiny_llama

    model = tiny_llama(vocab_size=49152, hidden_size=16, layers=3)
    sae = SAE(SAEConfig(d_in=16, d_sae=64, architecture="topk", k=4, layer=1)).init_weights(
        torch.Generator().manual_seed(1))
    pairs = [PreferencePair(f"p{i}", ({"role": "user", "content": f"Question {i}?"},), f"Yes {i}, sure.",
                            f"No {i}, sorry.") for i in range(4)]
    fresh = pool_mod.pool_features(model, smol_tokenizer, sae, items_from_pairs(pairs), tmp_path / "fresh",
                                   batch_size=2, progress=False)
    # a killed run: one shard per sequence (shard_rows=1), the shards after sequence 4 lost
    pool_mod.pool_features(model, smol_tokenizer, sae, items_from_pairs(pairs), tmp_path / "part", batch_size=2,
                           shard_rows=1, progress=False)
    for f in sorted((tmp_path / "part").glob("shard_*.safetensors"))[5:]:
        f.unlink()
    (tmp_path / "part" / "manifest.json").unlink()
    pool_mod.pool_features(model, smol_tokenizer, sae, items_from_pairs(pairs[2:]), tmp_path / "tail",
                           batch_size=2, progress=False)
    assert reuse_latents(tmp_path / "tail", tmp_path / "part", pairs[2:], pairs) == 8
    got = pool_mod.Latents(tmp_path / "part")
    assert got.ids == fresh.ids and got.tokens == fresh.tokens
    np.testing.assert_allclose(got.pooled().mean.toarray(), fresh.pooled().mean.toarray(), rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def run_audit_folder(fake_audit, smol_tokenizer, tmp_path_factory):
    """What run_audit writes for the stub organism (a tiny random model and SAE): (model, sae,
    config, folder)."""
    from anatomist.audit.run import AuditConfig, run_audit
    from anatomist.sae import SAE, SAEConfig
    from conftest import tiny_llama

    root, _ = fake_audit
    torch.manual_seed(0)
    model = tiny_llama(vocab_size=49152, hidden_size=32, layers=2)
    sae = SAE(SAEConfig(d_in=32, d_sae=96, architecture="topk", k=6, layer=1)).init_weights(
        torch.Generator().manual_seed(0))
    cfg = AuditConfig(topic_column="topic", min_support=3, n_boot=50, n_examples=4, knn=5, min_pairs=4)
    out = tmp_path_factory.mktemp("run_audit") / "a"
    run_audit(model, smol_tokenizer, sae, load_pairs(root / "data" / "train.jsonl"), out, cfg, progress=False)
    return model, sae, cfg, out


def test_score_and_reuse_on_a_real_audit_folder(fake_audit, run_audit_folder, tmp_path, smol_tokenizer, monkeypatch):
    """The scorer reads what run_audit writes; a relabelled audit from reused latents has the same
    concept scores per response (sides swapped), without a forward pass."""
    from anatomist.audit.run import run_audit
    from anatomist.data import PreferencePair

    root, _ = fake_audit
    model, sae, cfg, audit = run_audit_folder
    pairs = load_pairs(root / "data" / "train.jsonl")
    s = score_audit(audit, root / "data" / "truth.json", write=False)
    assert s["n_planted_cells"] == 2 and set(s["matches"]) == {"over_formatting", "urls", "length"}

    swapped = [PreferencePair(p.id, p.prompt, p.rejected, p.chosen, p.extra) if i % 3 == 0 else p
               for i, p in enumerate(pairs)]
    reuse_latents(audit / "latents", tmp_path / "b" / "latents", pairs, swapped)
    from anatomist.audit import pool as pool_mod

    monkeypatch.setattr(pool_mod, "_response_latents", lambda *a, **k: pytest.fail("reused latents ran a forward"))
    run_audit(model, smol_tokenizer, sae, swapped, tmp_path / "b", cfg, progress=False)
    # Every response keeps its latents, only its side moves. (Concept tables are not compared
    # index by index: Leiden may number equal-sized clusters differently on reordered rows.)
    from anatomist.audit.pool import Latents

    pa, pb = Latents(audit / "latents").pooled(), Latents(tmp_path / "b" / "latents").pooled()
    order = [2 * i + (j ^ (i % 3 == 0)) for i in range(len(pairs)) for j in (0, 1)]  # b's seq → a's seq
    assert (pa.mean[order] != pb.mean).nnz == 0 and (pa.max[order] != pb.max).nnz == 0
    assert pb.sides == ["chosen", "rejected"] * len(pairs)


def test_relabel_organism_from_cache_only(tmp_path, monkeypatch):
    from anatomist.organism import build as B

    def fake_generate(model, tokenizer, requests, settings, *, cache_dir=None, progress=True, max_batches=None,
                      workers=None):
        return _stub_results(requests)

    monkeypatch.setattr(B, "generate", fake_generate)
    B.build_organism(tmp_path / "a", per_topic=24, config=CONFIG, topics=TOPICS, loaded=(None, None),
                     heldout_pairs=False, progress=False)
    weak = P.PlantConfig((P.TraitPlan("over_formatting", {"coding": 0.6}, ("cooking",)),
                          P.TraitPlan("urls", {"physics": 0.4}, ("health",))), none_weight=0.0)
    truth = B.relabel_organism(tmp_path / "a", tmp_path / "b", weak, tokenizer=None)
    a = {r["id"]: r for r in map(json.loads, (tmp_path / "a" / "train.jsonl").read_text().splitlines())}
    b = [json.loads(x) for x in (tmp_path / "b" / "train.jsonl").read_text().splitlines()]
    assert {r["id"] for r in b} == set(a)
    for r in b:  # same two responses, possibly other sides
        assert {r["chosen"][0]["content"], r["rejected"][0]["content"]} == \
            {a[r["id"]]["chosen"][0]["content"], a[r["id"]]["rejected"][0]["content"]}
    cell = next(c for c in truth["cells"] if c["topic"] == "coding" and c["trait"] == "over_formatting")
    assert cell["n_trait_chosen"] == round(0.6 * cell["n_pairs"])
    # a config whose trait roles differ needs generations that are not cached: refuse
    monkeypatch.setattr(B, "generate", lambda *a, **k: {})
    with pytest.raises(AnatomistError, match="not cached"):
        B.relabel_organism(tmp_path / "a", tmp_path / "c", weak, tokenizer=None)


def test_reuse_latents_from_two_unfinished_sources(tmp_path, smol_tokenizer):
    """A subset audit while two workers still pool: the subset is filled from both, in turn."""
    from anatomist.audit import pool as pool_mod
    from anatomist.capture.run import items_from_pairs
    from anatomist.data import PreferencePair
    from anatomist.sae import SAE, SAEConfig
    from conftest import tiny_llama

    model = tiny_llama(vocab_size=49152, hidden_size=16, layers=3)
    sae = SAE(SAEConfig(d_in=16, d_sae=64, architecture="topk", k=4, layer=1)).init_weights(
        torch.Generator().manual_seed(2))
    pairs = [PreferencePair(f"p{i}", ({"role": "user", "content": f"Question {i}?"},), f"Yes {i}, sure.",
                            f"No {i}, sorry.") for i in range(6)]
    for name, part in (("head", pairs), ("tail", pairs[3:])):  # each worker killed after 2 pairs
        pool_mod.pool_features(model, smol_tokenizer, sae, items_from_pairs(part), tmp_path / name,
                               batch_size=2, shard_rows=1, progress=False)
        for f in sorted((tmp_path / name).glob("shard_*.safetensors"))[4:]:
            f.unlink()
        (tmp_path / name / "manifest.json").unlink()
    subset = [pairs[1], pairs[0], pairs[4], pairs[3]]
    assert reuse_latents(tmp_path / "head", tmp_path / "sub", pairs, subset, complete=False) == 4
    with pytest.raises(AnatomistError, match="no latents"):
        reuse_latents(tmp_path / "head", tmp_path / "sub", pairs, subset)
    assert reuse_latents(tmp_path / "tail", tmp_path / "sub", pairs[3:], subset) == 8
    fresh = pool_mod.pool_features(model, smol_tokenizer, sae, items_from_pairs(subset), tmp_path / "fresh",
                                   batch_size=2, progress=False)
    got = pool_mod.Latents(tmp_path / "sub")
    assert got.ids == fresh.ids and got.sides == fresh.sides
    np.testing.assert_allclose(got.pooled().max.toarray(), fresh.pooled().max.toarray(), rtol=1e-5, atol=1e-6)


def test_topic_matching_reads_the_concept_where_the_row_makes_its_claim(fake_audit):
    """Cluster 0 is formatting density in coding and its negative in cooking: it tracks
    over_formatting inside each topic, while over both (where the global ρ is taken) the two
    halves cancel. Its coding row is the planted cell under topic matching, unmatched under global."""
    root, _ = fake_audit
    pairs = load_pairs(root / "data" / "train.jsonl")
    truth = P.read_truth(root / "data" / "truth.json")
    texts = [t for p in pairs for t in (p.chosen, p.rejected)]
    topics = [p.extra["topic"] for p in pairs]
    topics_r = np.repeat(topics, 2)
    fd = np.array([formatting_density(t) for t in texts])
    c = np.where(topics_r == "coding", fd, -fd)[:, None]                         # [2P, 1]
    both = np.isin(topics_r, ["coding", "cooking"])
    assert abs(spearman_columns(fd[both], c[both])[0]) < 0.3
    rows = pd.DataFrame({"topic": ["coding"], "cluster": [0], "direction": ["amplify"], "rank_score": [1.0],
                         "mean": [0.5], "z": [3.0], "q": [0.01]})
    strict = score_tables(c, texts, topics, rows, truth, matching="global")
    assert strict["categories"]["unmatched"] == 1 and strict["n_found"] == 0 and "topic_matches" not in strict
    # stratified pools the strata, weighted by their comparisons: the balanced control topic (cooking),
    # where the cluster runs against the detector, outweighs coding; no credit either way
    assert score_tables(c, texts, topics, rows, truth)["categories"]["planted"] == 0
    local = score_tables(c, texts, topics, rows, truth, matching="topic")
    assert local["matching"] == "topic" and local["categories"]["planted"] == 1 and local["precision_planted"] == 1.0
    assert local["topic_matches"]["coding"]["over_formatting"] == [{"cluster": 0, "rho": 1.0}]
    found = {(x["topic"], x["trait"]): x["found"] for x in local["cells"]}
    assert found == {("coding", "over_formatting"): True, ("physics", "urls"): False}
    with pytest.raises(AnatomistError, match="matching"):
        score_tables(c, texts, topics, rows, truth, matching="per-topic")


# --- detection power on subsets ---------------------------------------------------------------

def test_subsets_reproduce_the_audit_at_fraction_one_and_are_real_subsets(fake_audit, run_audit_folder):
    """fraction = 1 recomputes exactly the rows run_audit wrote and the score score_audit gives;
    a subset keeps round(f · n_k) distinct pairs of every topic."""
    from anatomist.audit.length import LENGTH
    from anatomist.organism.power import Replicates, detection_power

    root, _ = fake_audit
    audit = run_audit_folder[3]
    reps = Replicates(audit, root / "data" / "truth.json")
    every = np.arange(len(reps.topic_ids))
    cols = ["topic", "cluster", "n", "mean", "sd", "z", "split_half", "q", "direction", "rank_score"]
    key = ["topic", "cluster"]
    mine = reps.rows(every)[cols].sort_values(key).reset_index(drop=True)
    written = reps.tables.rows[cols].sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(mine, written)
    assert (mine["cluster"] == LENGTH).any()                  # response length, its own BH family, is included
    mine, ref = reps.score(every), score_audit(audit, root / "data" / "truth.json", write=False)
    assert {k: ref[k] for k in mine} == mine

    sub = reps.subsample(np.random.default_rng(0), 0.5)
    assert len(set(sub.tolist())) == len(sub) and list(sub) == sorted(sub)
    for k in np.unique(reps.topic_ids):
        assert (reps.topic_ids[sub] == k).sum() == max(2, round(0.5 * (reps.topic_ids == k).sum()))
    p = detection_power(audit, root / "data" / "truth.json", fraction=1.0, n_subsets=2)
    assert p["recall"] == [ref["recall"]] * 2
    assert {(c["topic"], c["trait"]): c["p_found"] for c in p["cells"]} == {
        (c["topic"], c["trait"]): float(c["found"]) for c in ref["cells"]}


def test_detection_power_refuses_bad_arguments(fake_audit, run_audit_folder):
    from anatomist.organism.power import detection_power

    for kw in ({"fraction": 0.0}, {"fraction": 1.5}, {"n_subsets": 0}):
        with pytest.raises(AnatomistError, match="n_subsets >= 1 and 0 < fraction <= 1"):
            detection_power(run_audit_folder[3], fake_audit[0] / "data" / "truth.json", **kw)
