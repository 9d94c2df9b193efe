"""`anatomist shape export` and `anatomist steer` end to end on a tiny saved model and a hand-made audit."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_llama
from test_shape_audit import make_audit
from typer.testing import CliRunner

from anatomist.cli import app
from anatomist.errors import AnatomistError
from anatomist.sae import SAE, SAEConfig, save_sae

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("args", [["shape", "--help"], ["shape", "export", "--help"], ["steer", "--help"]])
def test_help(args):
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0 and "Example: anatomist" in r.output, r.output


@pytest.fixture
def setup(tmp_path, smol_tokenizer):
    model_dir = tmp_path / "model"
    tiny_llama(vocab_size=49152, hidden_size=16, layers=2).save_pretrained(model_dir)
    smol_tokenizer.save_pretrained(model_dir)
    sae = SAE(SAEConfig(d_in=16, d_sae=16, architecture="topk", k=4, layer=1)).init_weights(
        torch.Generator().manual_seed(0))
    save_sae(sae, tmp_path / "sae")
    audit = make_audit(tmp_path / "audit", tokens=None, sae=str(tmp_path / "sae"), layer=1)
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"id": i, "prompt": f"question {i}", "chosen": f"yes {i}",
                                        "rejected": f"no {i}"}) + "\n" for i in ("p0", "p1", "p2", "p3")))
    return model_dir, audit, data


def test_shape_export_cli(setup, tmp_path):
    model_dir, audit, data = setup
    out = tmp_path / "ds.parquet"
    r = CliRunner().invoke(app, ["shape", "export", "--audit", str(audit), "--data", str(data), "--model",
                                 str(model_dir), "--concept", "emoji", "--lam", "-2", "--concept", "1", "--lam", "0.5",
                                 "--beta", "0.5", "--inoculate", "0", "--out", str(out)])
    assert r.exit_code == 0, r.output
    import pandas as pd

    ds = pd.read_parquet(out)
    assert ds["shaping_offset"].tolist() == pytest.approx([-2.0, -3.0, 1.5, -8.0])        # −2·Δc₀ + 0.5·Δc₁
    assert [len(p) for p in ds["prompt"]] == [2, 2, 1, 2]                                   # inoculated where Δc₀ > 0
    meta = json.loads((tmp_path / "ds.parquet.export.json").read_text())
    assert meta["beta"] == 0.5 and meta["lam"] == {"0": -2.0, "1": 0.5} and meta["n_pairs"] == 4
    bad = CliRunner().invoke(app, ["shape", "export", "--audit", str(audit), "--data", str(data), "--concept", "0",
                                   "--out", str(out)])
    assert isinstance(bad.exception, AnatomistError) and "one --lam per --concept" in str(bad.exception)


def test_steer_cli(setup):
    model_dir, audit, _ = setup
    args = ["steer", "--audit", str(audit), "--model", str(model_dir), "--concept", "0", "--prompt", "Hi.",
            "--max-new-tokens", "5"]
    r = CliRunner().invoke(app, [*args, "--alpha", "0", "--alpha", "40"])
    assert r.exit_code == 0, r.output
    assert "concept 0 (bold / emoji), layer 1" in r.output and "[α=0] Hi." in r.output and "[α=40] Hi." in r.output
    outs = r.output.split("[α=")[1:]
    assert outs[0].split("\n", 1)[1] != outs[1].split("\n", 1)[1]                          # steering moved the text


def test_shaping_clis_refuse_data_the_audit_did_not_score(setup, tmp_path):
    """`shape export` and `dpo --lam` match pairs to the audit by id: a file with the same ids and one
    pair's sides swapped would shift that pair's reference (and its λ) the wrong way. Refused in one line."""
    model_dir, audit, data = setup
    rows = [json.loads(x) for x in data.read_text().splitlines()]
    rows[1]["chosen"], rows[1]["rejected"] = rows[1]["rejected"], rows[1]["chosen"]
    relabelled = tmp_path / "relabelled.jsonl"
    relabelled.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "ds.parquet"
    r = CliRunner().invoke(app, ["shape", "export", "--audit", str(audit), "--data", str(relabelled), "--model",
                                 str(model_dir), "--concept", "0", "--lam", "-2", "--out", str(out)])
    assert isinstance(r.exception, AnatomistError), r.output
    assert "pair 'p1' has chosen and rejected swapped relative to the audit" in str(r.exception)
    assert not out.exists()
    r = CliRunner().invoke(app, ["dpo", "--data", str(relabelled), "--model", str(model_dir), "--audit", str(audit),
                                 "--lam", "0=-2", "--steps", "1", "--train-layers", "1", "--out", str(tmp_path / "run"),
                                 "--cache-dir", str(tmp_path / "cache")])
    assert isinstance(r.exception, AnatomistError), r.output
    assert "pair 'p1' has chosen and rejected swapped relative to the audit" in str(r.exception)
    assert not (tmp_path / "run").exists()
    # the audited file itself, and a subset of it (--limit), pass the check
    r = CliRunner().invoke(app, ["shape", "export", "--audit", str(audit), "--data", str(data), "--model",
                                 str(model_dir), "--concept", "0", "--lam", "-2", "--limit", "2", "--out", str(out)])
    assert r.exit_code == 0, r.output


def test_shape_export_gets_past_the_bad_rows_of_the_shared_hh_file(setup, tmp_path, shared_data, caplog):
    """The shared HH dev file's first bad row is row 87 (an empty chosen reply): `shape export` stops
    there naming --on-bad-row, and with `--on-bad-row skip` exports the rest and logs the count.
    A 90-line slice of the real file keeps the export to seconds."""
    import gzip
    import logging

    import numpy as np

    from anatomist.data import load_pairs
    from conftest import HH_FILE

    model_dir, _, _ = setup
    with gzip.open(HH_FILE, "rb") as f:
        head = b"".join(f.readline() for _ in range(90))
    data = tmp_path / "hh-rlhf-harmless-base-test-dev.jsonl"
    data.write_bytes(head)
    pairs = load_pairs(data, on_bad_row="skip")
    assert [e.row for e in pairs.skipped] == [87] and len(pairs) == 89
    P = len(pairs)
    rng = np.random.default_rng(0)
    audit = make_audit(tmp_path / "hh-audit", ids=[p.id for p in pairs], c_chosen=rng.normal(size=(P, 2)),
                       c_rejected=rng.normal(size=(P, 2)), tokens=None, data=list(pairs))
    args = ["shape", "export", "--audit", str(audit), "--data", str(data), "--model", str(model_dir),
            "--concept", "0", "--lam", "-1", "--max-length", "0", "--out", str(tmp_path / "ds.jsonl")]
    r = CliRunner().invoke(app, args)
    assert isinstance(r.exception, AnatomistError), r.output
    assert 'row 87: field "chosen": empty response' in str(r.exception) and "--on-bad-row skip" in str(r.exception)
    with caplog.at_level(logging.WARNING, logger="anatomist.data.io"):
        r = CliRunner().invoke(app, [*args, "--on-bad-row", "skip"])
    assert r.exit_code == 0, r.output
    assert len((tmp_path / "ds.jsonl").read_text().splitlines()) == 89
    assert any("skipped 1 bad rows of 90 (first: row 87, field chosen" in m for m in caplog.messages), caplog.messages
