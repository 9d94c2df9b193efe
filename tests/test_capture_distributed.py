"""Data-parallel capture: the merge, and 2 CPU processes under torchrun (gloo); rank slices: test_parallel.py."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from anatomist.capture import ActivationStore, capture, items_from_pairs
from anatomist.capture.distributed import capture_distributed
from conftest import REPO, tiny_llama

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, smol_tokenizer):
    folder = tmp_path_factory.mktemp("dist") / "tiny"
    tiny_llama(vocab_size=49152, hidden_size=16, layers=2).save_pretrained(folder)
    smol_tokenizer.save_pretrained(folder)
    data = folder.parent / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Question {i}: why is the sky blue?" + " really" * (i % 4),
                                        "chosen": f"Scattering {i}." + " yes" * (i % 3),
                                        "rejected": f"No idea {i}."}) + "\n" for i in range(9)))
    return folder, data


def _files(folder):
    """File contents; safetensors as (header metadata, tensors): its header's key order varies by process."""
    from killharness import load_any

    return {p.name: load_any(p) if p.suffix == ".safetensors" else p.read_bytes()
            for p in sorted(folder.iterdir()) if p.is_file()}


def test_merged_ranks_equal_one_process(tiny, tmp_path):
    """Three 'ranks' run in turn (the barrier is a no-op): the merged folder is byte for byte the
    store one process writes, shards, metadata and settings included."""
    from anatomist.data import load_pairs
    from anatomist.models import load

    folder, data = tiny
    lm = load(str(folder))
    items = items_from_pairs(load_pairs(data))
    one = capture(lm.model, lm.tokenizer, items, tmp_path / "one", 1, model_name="m", batch_size=1, shard_tokens=60,
                  progress=False)
    for rank in (2, 1, 0):  # rank 0 last: it merges once the others are done
        merged = capture_distributed(lm.model, lm.tokenizer, items, tmp_path / "dp", 1, rank=rank, world=3,
                                     model_name="m", batch_size=1, shard_tokens=60)
    assert len(one.shards) > 2 and merged.n_sequences == len(items)
    from killharness import same_obj

    a, b = _files(tmp_path / "dp"), _files(tmp_path / "one")
    assert a.keys() == b.keys() and all(same_obj(a[k], b[k]) for k in a), sorted(a)
    assert not (tmp_path / "dp" / "parts").exists()


def test_torchrun_two_cpu_processes(tiny, tmp_path):
    """`torchrun --nproc-per-node 2` with gloo: the merged store equals a single-process capture."""
    from anatomist.data import load_pairs
    from anatomist.models import load

    folder, data = tiny
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ANATOMIST_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--master-addr", "127.0.0.1", "--master-port", str(port), "-m", "anatomist.capture.distributed",
                           "--data", str(data), "--model", str(folder), "--layer", "1", "--keep", "all",
                           "--batch-size", "1", "--out", str(tmp_path / "dp")],
                          cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "from 2 ranks" in proc.stdout
    lm = load(str(folder))
    one = capture(lm.model, lm.tokenizer, items_from_pairs(load_pairs(data)), tmp_path / "one", 1,
                  model_name=str(folder), batch_size=1, keep="all", progress=False)
    dp = ActivationStore(tmp_path / "dp")
    assert dp.settings == one.settings and dp.sequences() == one.sequences()
    a, b = dp.load(), one.load()
    for key in a:
        assert torch.equal(a[key], b[key]), key
