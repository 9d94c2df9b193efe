"""The one reader of an audit folder: lazy, column-checked tables, one-line errors, the data check."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from anatomist.audit import folder as F
from anatomist.audit.folder import AuditFolder, is_audit_of, write_table
from anatomist.data import PreferencePair, dataset_hash, text_hash
from anatomist.errors import AnatomistError, DataError

C_CHOSEN = np.array([[1.0, 0.0], [2.0, 1.0], [0.0, -1.0]])      # [P, C]
C_REJECTED = np.array([[0.0, 0.5], [0.5, 1.0], [1.0, 0.0]])


def pairs(ids=("a", "b", "c")):
    return [PreferencePair(i, ({"role": "user", "content": f"q {i}"},), f"yes {i}", f"no {i}", {"topic": "t"})
            for i in ids]


def make_folder(path, data=None, *, hashes=True, meta=True):
    """pairs.parquet + clusters.parquet + audit.json of `data`, through the writer's own column check."""
    data = pairs() if data is None else data
    path.mkdir(parents=True, exist_ok=True)
    P, C = C_CHOSEN.shape
    table = pd.DataFrame({"pair_id": np.repeat([p.id for p in data], C), "topic_id": np.repeat([0, 1, 0], C),
                          "cluster": np.tile(np.arange(C), P), "c_chosen": C_CHOSEN.ravel(),
                          "c_rejected": C_REJECTED.ravel(), "delta": (C_CHOSEN - C_REJECTED).ravel()})
    if hashes:
        table[F.TEXT_HASH] = np.repeat([text_hash(p) for p in data], C)
    write_table(path, F.PAIRS, table)
    write_table(path, F.CLUSTERS, pd.DataFrame({
        "cluster": [0, 1], "label": ["emoji", None], "label_status": "ok", "detection_acc": 0.9, "n_features": 1,
        "features": [[1], [2]], "mean_delta": [0.5, 0.0], "q": 0.5, "direction": "none"}))
    if meta:
        (path / F.META).write_text(json.dumps({"layer": 2, "sae": "s", "data": {"hash": dataset_hash(data)},
                                               "topics": {"names": ["food", "code"]}}))
    return path


def test_tables_are_read_lazily_once_and_reshaped_in_audit_order(tmp_path, monkeypatch):
    path = make_folder(tmp_path / "a")
    (path / F.ROWS).write_bytes(b"PAR1 not really")       # never asked for below, so never read
    reads = []
    real = pd.read_parquet
    monkeypatch.setattr(pd, "read_parquet", lambda p, **kw: reads.append(p.name) or real(p, **kw))
    audit = AuditFolder(path)
    assert reads == []
    assert audit.pair_ids == ["a", "b", "c"] and audit.n_clusters == 2
    np.testing.assert_array_equal(audit.c_chosen, C_CHOSEN)
    np.testing.assert_array_equal(audit.response_scores[1::2], C_REJECTED)
    pos, neg = audit.scores(["c", "a"], [1])
    assert pos[:, 0].tolist() == [-1.0, 0.0] and neg[:, 0].tolist() == [0.0, 0.5]
    assert audit.topic("b") == "code" and audit.labels == {0: "emoji", 1: ""} and audit.label(1) == ""
    assert audit.resolve_concept("emo") == 0 and audit.layer == 2
    assert reads == [F.PAIRS, F.CLUSTERS]                   # each file once; rows.parquet untouched
    assert audit.length_rows is None and audit.n_tokens is None and audit.score is None   # optional files
    with pytest.raises(AnatomistError, match=r"a/rows.parquet: unreadable \(ArrowInvalid"):
        audit.rows


def test_missing_folder_file_and_column_are_one_line_errors(tmp_path):
    with pytest.raises(AnatomistError, match="nope: no such audit folder"):
        AuditFolder(tmp_path / "nope")
    audit = AuditFolder(make_folder(tmp_path / "a"))
    with pytest.raises(AnatomistError, match="a is not a finished audit folder: missing examples.json, concepts.json"):
        audit.require(F.META, F.EXAMPLES, F.CONCEPTS)
    with pytest.raises(AnatomistError, match="missing rows.parquet; run `anatomist audit --out"):
        audit.rows
    pd.read_parquet(tmp_path / "a" / F.CLUSTERS).drop(columns=["label", "q"]).to_parquet(tmp_path / "a" / F.CLUSTERS)
    with pytest.raises(AnatomistError, match=r"a/clusters.parquet: missing column\(s\) label, q$"):
        AuditFolder(tmp_path / "a").labels
    (tmp_path / "a" / F.EXAMPLES).write_text("[]")
    with pytest.raises(AnatomistError, match="examples.json: expected a JSON object, got list"):
        audit.examples
    table = pd.read_parquet(tmp_path / "a" / F.PAIRS)
    table.iloc[::-1].to_parquet(tmp_path / "a" / F.PAIRS)                 # not pair-major, cluster-minor
    with pytest.raises(AnatomistError, match="expected every cluster 0..1 once per pair"):
        AuditFolder(tmp_path / "a").pair_ids
    with pytest.raises(AssertionError, match="written without"):          # the writer checks the same columns
        write_table(tmp_path / "a", F.PAIRS, table.drop(columns=["delta"]))


def test_check_data_refuses_texts_the_audit_did_not_score(tmp_path):
    audit = AuditFolder(make_folder(tmp_path / "a"))
    data = pairs()
    assert audit.check_data(data) == data and audit.check_data(data[2:]) == data[2:]   # a subset, by id
    assert audit.check_data(data, complete=True) == data
    swapped = [PreferencePair(p.id, p.prompt, p.rejected, p.chosen, p.extra) for p in data]
    with pytest.raises(AnatomistError, match="pair 'a' has chosen and rejected swapped relative to the audit in"):
        audit.check_data(swapped)
    edited = [*data[:1], PreferencePair("b", data[1].prompt, "yes b!", "no b")]
    with pytest.raises(AnatomistError, match="the given pairs: pair 'b' holds other texts than the audit"):
        audit.check_data(edited)
    with pytest.raises(DataError, match="pair 'zz' is not in the audit"):
        audit.check_data(pairs(("a", "zz")))
    with pytest.raises(AnatomistError, match="is not the data audited in"):
        audit.check_data(data[:2], complete=True)                 # the scorer needs every pair
    # a preference file is read and named in the refusal
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"id": p.id, "prompt": p.prompt[0]["content"], "chosen": p.rejected,
                                        "rejected": p.chosen}) + "\n" for p in data))
    with pytest.raises(AnatomistError, match=r"d.jsonl: pair 'a' has chosen and rejected swapped"):
        audit.check_data(path)
    assert is_audit_of(tmp_path / "a", data) and not is_audit_of(tmp_path / "a", swapped)
    assert not is_audit_of(tmp_path / "nothing", data)


def test_an_audit_without_text_hashes_checks_only_its_complete_data(tmp_path):
    old = AuditFolder(make_folder(tmp_path / "old", hashes=False))
    data = pairs()
    assert old.text_hashes is None and old.check_data(data) == data
    with pytest.raises(AnatomistError, match="predates per-pair text hashes, so it takes only its complete data"):
        old.check_data(data[:2])
    with pytest.raises(AnatomistError, match="x.json: cannot be checked against .*predates per-pair text hashes"):
        old.check_text_hashes(["a"], ["h"], src="x.json")
    bare = make_folder(tmp_path / "bare", hashes=False, meta=False)
    (bare / F.META).write_text(json.dumps({"layer": 1}))
    with pytest.raises(AnatomistError, match="audit.json: records no data hash"):
        AuditFolder(bare).check_data(data)
