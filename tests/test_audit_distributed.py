"""Data-parallel audit pooling: the merged latent store and the audit tables equal one process's,
with 'ranks' run in turn and with 2 CPU processes under torchrun (gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import torch
from conftest import REPO, tiny_llama
from test_audit_run import planted_pairs

from anatomist.audit.distributed import audit_distributed, pool_distributed
from anatomist.audit.pool import pool_features
from anatomist.audit.run import AuditConfig, run_audit
from anatomist.capture.run import items_from_pairs

pytestmark = pytest.mark.usefixtures("one_thread")

# batch_size 1: every rank batches like one process, so latents (not only tables) match exactly
CFG = AuditConfig(topic_column="topic", min_support=3, n_boot=100, n_examples=4, resolution=3.0, knn=4, batch_size=1)
TABLES = ("rows.parquet", "pairs.parquet", "features.parquet", "clusters.parquet")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, smol_tokenizer):
    """A tiny random Llama (with the real tokenizer), a random SAE and 24 pairs, all saved as files."""
    from anatomist.sae import SAE, SAEConfig, save_sae

    root = tmp_path_factory.mktemp("audit_dp")
    tiny_llama(vocab_size=49152, hidden_size=16, layers=2).save_pretrained(root / "model")
    smol_tokenizer.save_pretrained(root / "model")
    save_sae(SAE(SAEConfig(d_in=16, d_sae=48, architecture="topk", k=4, layer=1)).init_weights(
        torch.Generator().manual_seed(0)), root / "sae")
    data = root / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": p.prompt[0]["content"], "chosen": p.chosen, "rejected": p.rejected,
                                        "topic": p.extra["topic"]}) + "\n" for p in planted_pairs(8)))
    return root, data


@pytest.fixture(scope="module")
def loaded(tiny):
    from anatomist.data import load_pairs
    from anatomist.models import load
    from anatomist.sae import load_sae

    root, data = tiny
    lm = load(str(root / "model"))
    return lm.model, lm.tokenizer, load_sae(root / "sae"), list(load_pairs(data))


@pytest.fixture(scope="module")
def one(loaded, tmp_path_factory):
    """The single-process audit everything is compared with, on one thread as the ranks are
    (module fixtures run before `one_thread`; the thread count changes float rounding)."""
    model, tok, sae, pairs = loaded
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_audit(model, tok, sae, pairs, tmp_path_factory.mktemp("one") / "audit", CFG, progress=False)
    finally:
        torch.set_num_threads(n)


def torchrun(module: str, *args, tmp, nproc: int = 2) -> subprocess.CompletedProcess:
    """`torchrun --standalone` (rendezvous on a free local port), gloo on CPU, one thread per rank."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ANATOMIST_CACHE": str(tmp / "cache")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), "-m", module]
    return subprocess.run([*cmd, *map(str, args)], check=False, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=env)


def _same_tables(a, b):
    for name in TABLES:
        x, y = pd.read_parquet(a / name), pd.read_parquet(b / name)
        pd.testing.assert_frame_equal(x, y, check_exact=True)
    assert json.loads((a / "concepts.json").read_text()) == json.loads((b / "concepts.json").read_text())


def test_merged_latents_equal_one_process_store(loaded, tmp_path):
    """Three 'ranks' in turn (rank 0 last, the barrier a no-op), small shards: the merged store is,
    file for file, the one `pool_features` writes; a rerun after the merge pools nothing."""
    from killharness import load_any, same_obj

    model, tok, sae, pairs = loaded
    items = items_from_pairs(pairs)
    pool_features(model, tok, sae, items, tmp_path / "one", batch_size=1, shard_rows=40, progress=False)
    for rank in (2, 1, 0):
        merged = pool_distributed(model, tok, sae, items, tmp_path / "dp", rank=rank, world=3, batch_size=1,
                                  shard_rows=40)
    assert merged.n_sequences == len(items) and len(merged.shards) > 2
    assert not (tmp_path / "dp" / "parts").exists()

    def files(folder):
        return {p.name: load_any(p) if p.suffix == ".safetensors" else p.read_bytes()
                for p in sorted(folder.iterdir()) if p.is_file()}
    a, b = files(tmp_path / "dp"), files(tmp_path / "one")
    assert a.keys() == b.keys() and all(same_obj(a[k], b[k]) for k in a), sorted(a)
    # A rerun (say after a kill past the merge) finds the merged store and does not pool again.
    pool_distributed(None, None, None, items, tmp_path / "dp", rank=1, world=3)
    assert not (tmp_path / "dp" / "parts").exists()


def test_ranks_in_turn_audit_equals_one_process(loaded, one, tmp_path):
    model, tok, sae, pairs = loaded
    for rank in (1, 0):
        folder = audit_distributed(model, tok, sae, pairs, tmp_path / "dp", CFG, rank=rank, world=2, progress=False)
        assert (folder is None) == (rank != 0)
    assert len(pd.read_parquet(one / "rows.parquet")) > 0  # a real table to compare, not an empty one
    _same_tables(folder, one)


def test_torchrun_two_cpu_processes(tiny, one, tmp_path):
    """`torchrun --nproc-per-node 2` with gloo: the audit tables equal the single-process run's."""
    root, data = tiny
    proc = torchrun("anatomist.audit.distributed", "--data", data, "--model", root / "model", "--sae", root / "sae",
                    "--topic-column", "topic", "--min-support", "3", "--n-boot", "100", "--n-examples", "4",
                    "--resolution", "3.0", "--knn", "4", "--batch-size", "1", "--no-report", "--out", tmp_path / "dp",
                    tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "pooled on 2 ranks" in proc.stdout
    assert not (tmp_path / "dp" / "latents" / "parts").exists()
    _same_tables(tmp_path / "dp", one)
