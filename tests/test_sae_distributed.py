"""Data-parallel SAE training: 2 CPU processes under torchrun (gloo) follow the single-process run
step for step (BatchTopK over the global batch, dead latents and aux-k included; JumpReLU's learned
threshold, a dense path).

Run as a script under torchrun, this file is the worker: `train_sae` on the same data and settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from anatomist.sae import load_sae, sae_config, train_sae
from anatomist.sae.config import TrainConfig

# Odd batch (ranks take 31 and 32 rows); dead_tokens small enough that aux-k is active from step ~3.
TC = TrainConfig(tokens=63 * 16, batch_size=63, lr=3e-3, warmup_steps=2, aux_k=8, dead_tokens=150,
                 buffer_tokens=400, init_tokens=500, log_every=1, checkpoint_every=5, seed=3)


def _data() -> torch.Tensor:
    from test_sae import sparse_data

    return sparse_data(n=900, d=16, n_feats=40, per_token=3, seed=1)               # [900, 16]


def _cfg(arch: str):
    return sae_config(16, width=96, k=4, architecture=arch)


@pytest.mark.parametrize("arch", ["batchtopk", "jumprelu"])
def test_torchrun_two_processes_follow_the_single_process_run(tmp_path, arch):
    torch.set_num_threads(1)
    one = train_sae(_data(), _cfg(arch), tmp_path / "one", train=TC, progress=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", __file__,
           str(tmp_path / "dp"), arch]
    proc = subprocess.run(cmd, check=False, cwd=Path(__file__).parent, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]

    a = json.loads((tmp_path / "dp" / "training.json").read_text())["history"]
    b = json.loads((tmp_path / "one" / "training.json").read_text())["history"]
    assert len(a) == len(b) == TC.steps  # one entry per step, written by rank 0 alone
    assert b[-1]["fvu"] < 0.7 * b[0]["fvu"]  # the run learned: a flat curve would match trivially
    assert arch != "batchtopk" or max(h["aux"] for h in b) > 0  # dead latents appeared, aux-k ran
    for x, y in zip(a, b):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-5), x["step"]
        assert x["aux"] == pytest.approx(y["aux"], rel=1e-5, abs=1e-7), x["step"]
        assert (x["l0"], x["dead_frac"]) == (y["l0"], y["dead_frac"]), x["step"]  # same selection, same dead set
        assert x["fvu"] == pytest.approx(y["fvu"], rel=1e-5), x["step"]
    dp = load_sae(tmp_path / "dp")
    for name, p in one.state_dict().items():
        torch.testing.assert_close(dp.state_dict()[name], p, rtol=1e-5, atol=1e-6, msg=name)
    assert not (tmp_path / "dp" / "checkpoint.pt").exists()


def test_cli_under_torchrun_equals_one_process_on_a_store(tmp_path):
    """`torchrun -m anatomist.sae.distributed` with `anatomist sae train` flags on a capture store."""
    from test_audit_distributed import torchrun

    from anatomist.capture.store import ActivationStore, ShardWriter

    torch.set_num_threads(1)
    acts = _data()
    writer = ShardWriter(tmp_path / "acts", {"model": "tiny", "layer": 1, "d_model": 16}, shard_rows=300)
    for i in range(9):  # 9 sequences of 100 tokens (pos 0 of each is excluded from training)
        rows = slice(100 * i, 100 * (i + 1))
        writer.add(i, f"r{i}", "chosen", acts=acts[rows], pos=torch.arange(100), token=torch.zeros(100, dtype=torch.long),
                   response=torch.ones(100, dtype=torch.bool))
    writer.close(9)
    flags = ["--tokens", "1008", "--batch-size", "63", "--width", "96", "--k", "4", "--lr", "3e-3", "--aux-k", "8",
             "--seed", "3"]
    proc = torchrun("anatomist.sae.distributed", "--data", tmp_path / "acts", "--out", tmp_path / "dp", *flags,
                    tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("SAE saved to") == 1  # rank 0 alone reports

    cfg = sae_config(16, width=96, k=4, model="tiny", layer=1)
    one = train_sae(ActivationStore(tmp_path / "acts"), cfg, tmp_path / "one", progress=False,
                    train=TrainConfig(tokens=1008, batch_size=63, lr=3e-3, aux_k=8, seed=3))
    a = json.loads((tmp_path / "dp" / "training.json").read_text())
    b = json.loads((tmp_path / "one" / "training.json").read_text())
    assert a["run_key"] == b["run_key"] and len(a["history"]) == len(b["history"]) == 2  # steps 10 and 16
    for x, y in zip(a["history"], b["history"]):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-5), x["step"]
    dp = load_sae(tmp_path / "dp")
    for name, p in one.state_dict().items():
        torch.testing.assert_close(dp.state_dict()[name], p, rtol=1e-5, atol=1e-6, msg=name)


def _worker(out: str, arch: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    try:
        train_sae(_data(), _cfg(arch), out, train=TC, progress=False)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    _worker(*sys.argv[1:])
