"""The audit end to end on a tiny random Llama + random SAE, with a planted token confound."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from anatomist.audit.run import AuditConfig, run_audit
from anatomist.data import PreferencePair
from anatomist.errors import AnatomistError
from anatomist.sae import SAE, SAEConfig
from conftest import tiny_llama

TOPICS = {
    "cooking": ["How do I bake {x} bread?", "What spices go with {x} soup?", "How long to roast {x} chicken?"],
    "coding": ["Why does my {x} python loop crash?", "How do I sort a {x} list in code?", "Fix this {x} function."],
    "travel": ["Is {x} Paris worth a trip?", "Best season to fly to {x} Spain?", "Do I need a visa for {x} Japan?"],
}
FILLERS = ["quick", "simple", "small", "big", "old", "new", "cheap", "fancy"]


def planted_pairs(n_per_topic=24):
    """In cooking, the chosen answer always mentions bananas; otherwise which template is chosen
    alternates, so the only systematic chosen-vs-rejected difference is the planted one."""
    pairs = []
    for topic, templates in TOPICS.items():
        for i in range(n_per_topic):
            prompt = templates[i % 3].format(x=FILLERS[i % 8])
            plain_a = f"Here is a {FILLERS[(i + 1) % 8]} answer about that, step by step."
            plain_b = f"Sure, a {FILLERS[(i + 3) % 8]} reply follows with some detail."
            chosen, rejected = (plain_a, plain_b) if i % 2 else (plain_b, plain_a)
            chosen += " banana banana banana." if topic == "cooking" else ""
            pairs.append(PreferencePair(f"{topic}-{i}", ({"role": "user", "content": prompt},), chosen, rejected,
                                        {"topic": topic}))
    return pairs


def tiny_audit(out, tokenizer, pairs):
    """Audit `pairs` into `out` with a 2-layer random Llama and a 96-latent random SAE; returns
    (out, model, sae, tokenizer, cfg)."""
    torch.manual_seed(0)
    model = tiny_llama(vocab_size=49152, hidden_size=32, layers=2)
    sae = SAE(SAEConfig(d_in=32, d_sae=96, architecture="topk", k=6, layer=1)).init_weights(
        torch.Generator().manual_seed(0))
    # A 96-latent random SAE over 72 pairs: finer clusters than the default resolution keep the
    # planted token's latents from merging with template-word latents.
    cfg = AuditConfig(topic_column="topic", min_support=5, n_boot=200, n_examples=8, resolution=3.0, knn=5)
    run_audit(model, tokenizer, sae, pairs, out, cfg, model_name="tiny", progress=False)
    return out, model, sae, tokenizer, cfg


@pytest.fixture(scope="module")
def audited(tmp_path_factory, smol_tokenizer):
    return tiny_audit(tmp_path_factory.mktemp("audit"), smol_tokenizer, planted_pairs())


def test_audit_writes_every_table(audited):
    out = audited[0]
    for name in ("audit.json", "rows.parquet", "features.parquet", "clusters.parquet", "pairs.parquet",
                 "concepts.json", "examples.json"):
        assert (out / name).is_file(), name
    meta = json.loads((out / "audit.json").read_text())
    assert meta["data"]["n_pairs"] == 72 and meta["layer"] == 1 and len(meta["data"]["hash"]) == 64
    assert meta["topics"]["names"] == ["coding", "cooking", "travel"] and meta["topics"]["sizes"] == [24, 24, 24]
    assert meta["stats"] == {"n_prompts": 72, "clustered_by_prompt": False, "note": ""}   # every prompt unique
    pairs = pd.read_parquet(out / "pairs.parquet")
    np.testing.assert_allclose(pairs["delta"], pairs["c_chosen"] - pairs["c_rejected"])


def test_is_audit_of_tells_rebuilt_data_with_the_same_ids_apart(audited, tmp_path):
    from dataclasses import replace

    from anatomist.audit.folder import is_audit_of

    out, pairs = audited[0], planted_pairs()
    assert is_audit_of(out, pairs)
    rebuilt = [replace(p, chosen=p.chosen + " Enjoy.") if i == 5 else p for i, p in enumerate(pairs)]
    assert [p.id for p in rebuilt] == [p.id for p in pairs] and not is_audit_of(out, rebuilt)
    assert not is_audit_of(out, pairs[:-1]) and not is_audit_of(tmp_path, pairs)  # a subset; no audit at all


def test_the_folder_reader_takes_every_table_run_audit_writes(audited):
    from anatomist.audit.folder import AuditFolder
    from anatomist.data import text_hash

    out, pairs = audited[0], planted_pairs()
    audit = AuditFolder(out)          # every table is read with its columns checked (audit/folder.py COLUMNS)
    assert all(len(t) for t in (audit.rows, audit.features, audit.clusters, audit.pairs, audit.length_rows,
                                audit.length_pairs))
    assert audit.pair_ids == [p.id for p in pairs] and audit.text_hashes == [text_hash(p) for p in pairs]
    assert audit.concepts.n_clusters == audit.n_clusters and set(audit.examples) == {str(k) for k in
                                                                                     range(audit.n_clusters)}
    np.testing.assert_allclose(audit.delta, audit.c_chosen - audit.c_rejected)
    assert audit.n_tokens.shape == (len(pairs), 2) and len(audit.latents.tokens) == 2 * len(pairs)
    assert audit.topic(pairs[0].id) == pairs[0].extra["topic"]
    assert audit.check_data(pairs[5:9]) == pairs[5:9] and audit.check_data(pairs, complete=True) == pairs
    # every concept has a readable name and its logit lens (top output tokens, decoded, non-empty)
    assert all(audit.names[k].strip() for k in range(audit.n_clusters)) and set(audit.lenses) == set(audit.names)
    assert all(0 < len(t) <= 8 and all(isinstance(x, str) and x.strip() for x in t) for t in audit.lenses.values())


def test_audit_finds_the_planted_confound(audited):
    out = audited[0]
    rows = pd.read_parquet(out / "rows.parquet")
    top = rows.iloc[0]
    assert top.topic == "cooking" and top.direction == "amplify", rows.head()
    clusters = pd.read_parquet(out / "clusters.parquet").set_index("cluster")
    assert "banana" in (clusters.loc[top.cluster, "label"] or ""), clusters.loc[top.cluster]
    assert clusters.loc[top.cluster, "detection_acc"] >= 0.75
    # controls: no topic other than cooking gets a predicted direction for that concept
    others = rows[(rows.cluster == top.cluster) & rows.topic.isin(["coding", "travel"])]
    assert set(others.direction) == {"none"}


def test_feature_table_finds_the_banana_latents(audited):
    out, model, sae, tok, _ = audited
    features = pd.read_parquet(out / "features.parquet")
    banana = tok(" banana", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        from anatomist.capture import residual_stream

        lat = sae.encode(residual_stream(model, torch.tensor([tok("Here is banana banana", add_special_tokens=False)
                                                              ["input_ids"]]), None, 1)[0, -1])
    assert len(banana) == 1
    assert features["z"].abs().is_monotonic_decreasing
    top = features[features.q < 0.01].sort_values("mean", ascending=False).iloc[0]
    assert top["mean"] > 0 and lat[int(top.feature)] > 0  # the largest chosen-side excess fires on " banana"


def test_audit_is_deterministic(audited, tmp_path):
    out, model, sae, tok, cfg = audited
    run_audit(model, tok, sae, planted_pairs(), tmp_path / "again", cfg, model_name="tiny", progress=False)
    for name in ("rows.parquet", "clusters.parquet", "pairs.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(out / name), pd.read_parquet(tmp_path / "again" / name))


def test_audit_clusters_topics_when_no_column_is_given(audited, tmp_path):
    _, model, sae, tok, cfg = audited
    from dataclasses import replace

    run_audit(model, tok, sae, planted_pairs(), tmp_path / "k", replace(cfg, topic_column=None, topics=3),
              progress=False)
    meta = json.loads((tmp_path / "k" / "audit.json").read_text())
    assert meta["topics"]["method"] == "kmeans" and sum(meta["topics"]["sizes"]) == 72
    assert len(meta["topics"]["sizes"]) == 3


def test_audit_rejects_tiny_datasets_and_bad_config(tmp_path, smol_tokenizer):
    with pytest.raises(AnatomistError, match="audit needs at least 16 pairs, got 3"):
        run_audit(None, smol_tokenizer, None, planted_pairs()[:3], tmp_path)
    with pytest.raises(AnatomistError, match="pooling must be"):
        AuditConfig(pooling="sum")
    with pytest.raises(AnatomistError, match="topk must be >= 1"):
        AuditConfig(pooling="topk", topk=0)
    with pytest.raises(AnatomistError, match="topic_embedder must be one of"):
        AuditConfig(topic_embedder="bert")
    with pytest.raises(AnatomistError, match="leiden_backend must be one of"):
        AuditConfig(leiden_backend="louvain")


def test_audit_tests_response_length_like_a_concept(audited, smol_tokenizer, tmp_path):
    """Cooking's chosen answers carry the appended " banana banana banana.", so they are longer:
    the length row says amplify there and nowhere else; counts are the response-mask tokens."""
    import shutil

    from anatomist.audit.folder import LENGTH, LENGTH_PAIRS, LENGTH_ROWS
    from anatomist.audit.length import ensure_length_tables
    from anatomist.models import encode_response

    out = audited[0]
    rows = pd.read_parquet(out / LENGTH_ROWS).set_index("topic")
    assert (rows["cluster"] == LENGTH).all() and set(rows.index) == {"all", "coding", "cooking", "travel"}
    assert rows.loc["cooking", "direction"] == "amplify" and rows.loc["cooking", "mean"] > 0.1
    assert set(rows.loc[["coding", "travel"], "direction"]) == {"none"}
    per_pair = pd.read_parquet(out / LENGTH_PAIRS)
    pairs = planted_pairs()
    assert list(per_pair["pair_id"]) == [p.id for p in pairs]
    for i in (0, 30, 71):
        for side in ("chosen", "rejected"):
            enc = encode_response(smol_tokenizer, pairs[i].prompt, getattr(pairs[i], side))
            assert per_pair[f"n_{side}"][i] == int(np.asarray(enc.response_mask).sum())
    cook = per_pair[per_pair["pair_id"].str.startswith("cooking")]
    assert rows.loc["cooking", "mean"] == pytest.approx(np.mean(np.log(cook.n_chosen) - np.log(cook.n_rejected)))
    # an audit written before the length tables existed gets the same ones from its latents
    old = tmp_path / "old"
    shutil.copytree(out, old)
    (old / LENGTH_ROWS).unlink()
    (old / LENGTH_PAIRS).unlink()
    assert ensure_length_tables(old) and not ensure_length_tables(old)
    pd.testing.assert_frame_equal(pd.read_parquet(old / LENGTH_ROWS), pd.read_parquet(out / LENGTH_ROWS))
    pd.testing.assert_frame_equal(pd.read_parquet(old / LENGTH_PAIRS), per_pair)


def test_conversation_opening_groups_siblings_and_repeats():
    from anatomist.audit.run import conversation_opening

    def pair(*prompt):
        return PreferencePair("x", tuple({"role": r, "content": c} for r, c in prompt), "yes", "no")

    first = pair(("user", "Is the power of suggestion good?"))
    sibling = pair(("user", "Is the power of suggestion good?"), ("assistant", "Definitely!"), ("user", "Why?"))
    other = pair(("user", "Is the power of suggestion bad?"))
    system = pair(("system", "Be terse."), ("user", "Is the power of suggestion good?"))
    assert conversation_opening(first) == conversation_opening(sibling) == conversation_opening(first)
    assert len({conversation_opening(p) for p in (first, other, system)}) == 3


def test_audit_clusters_statistics_by_prompt_when_pairs_share_them(audited, tmp_path):
    """Pairs 2j and 2j+1 share a prompt (the odd one a multi-turn sibling): 36 prompts for 72 pairs.
    audit.json and the report say so; se is the cluster-robust one, not sd/√n."""
    from dataclasses import replace

    from anatomist.audit.folder import LENGTH_PAIRS, LENGTH_ROWS
    from anatomist.audit.length import ensure_length_tables
    from anatomist.audit.report import render_report
    from anatomist.audit.stats import clustered_se

    _, model, sae, tok, cfg = audited
    base = planted_pairs()
    shared = [replace(p, prompt=base[i - i % 2].prompt + ((({"role": "assistant", "content": "Go on."},
                                                            {"role": "user", "content": "And then?"}) if i % 2 else ())))
              for i, p in enumerate(base)]
    out = run_audit(model, tok, sae, shared, tmp_path / "a", cfg, model_name="tiny", progress=False)
    meta = json.loads((out / "audit.json").read_text())
    note = "pairs share prompts: 36 prompts for 72 pairs; CIs and se clustered by prompt"
    assert meta["stats"] == {"n_prompts": 36, "clustered_by_prompt": True, "note": note}
    assert note in render_report(out).read_text()
    rows = pd.read_parquet(out / "rows.parquet")
    every = rows[rows.topic == "all"].sort_values("cluster")
    delta = pd.read_parquet(out / "pairs.parquet").pivot(index="pair_id", columns="cluster", values="delta")
    delta = delta.loc[[p.id for p in shared]].to_numpy()
    np.testing.assert_allclose(every["se"], clustered_se(delta, np.arange(72) // 2), rtol=1e-9)
    assert not np.allclose(every["se"], every["sd"] / np.sqrt(every["n"]))
    (out / LENGTH_ROWS).unlink()
    (out / LENGTH_PAIRS).unlink()
    with pytest.raises(AnatomistError, match="missing from an audit clustered by prompt"):
        ensure_length_tables(out)
