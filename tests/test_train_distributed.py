"""Data-parallel DPO: batch shares, re-joined outputs, and 2 CPU processes under torchrun (gloo)
following the single-process loss curve with the same global batch."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_llama
from test_audit_distributed import torchrun
from test_train_dpo import PROMPTS

from anatomist.shape.losses import DPOOutput
from anatomist.parallel import DataParallel, merge_outputs

pytestmark = pytest.mark.usefixtures("one_thread")


def test_shares_split_each_micro_batch_and_outputs_rejoin_in_order():
    micro = [[4, 0, 2], [5], [1, 3]]
    # rank_slice(3, ·, 2) = [0, 1) | [1, 3); rank_slice(1, ·, 2) = [] | [0, 1); rank_slice(2, ·, 2) = [0, 1) | [1, 2)
    assert DataParallel(0, 2).share(micro) == [[4], [1]]
    assert DataParallel(1, 2).share(micro) == [[0, 2], [5], [3]]

    def out(idx):  # loss = pair index, rewards = ± index: easy to see where each value went
        t = torch.tensor(idx, dtype=torch.float)
        return idx, DPOOutput(t, t, -t)
    per_rank = [iter([out(i) for i in DataParallel(r, 2).share(micro)]) for r in range(2)]
    merged = merge_outputs(micro, per_rank, 2)
    assert [idx for idx, _ in merged] == micro
    for idx, o in merged:
        assert o.loss.tolist() == idx and o.rejected_reward.tolist() == [-i for i in idx]


def test_torchrun_two_processes_follow_the_single_process_curve(smol_tokenizer, tmp_path):
    from anatomist.data import load_pairs
    from anatomist.models import load
    from anatomist.shape.pairs import plain
    from anatomist.train.dpo import DPOConfig, train_dpo

    folder = tmp_path / "model"
    tiny_llama(vocab_size=49152, hidden_size=16, layers=4).save_pretrained(folder)
    smol_tokenizer.save_pretrained(folder)
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": q, "chosen": f"A good answer number {i}.",
                                        "rejected": f"bad {i} ✨✨ **really** bad"}) + "\n"
                            for i, q in enumerate(PROMPTS)))
    # 6 pairs, micro-batches of 3 (ranks take 1 and 2 pairs), 2 per step: every step sees all pairs.
    cfg = DPOConfig(beta=0.5, lr=5e-3, steps=4, batch_size=3, grad_accum=2, train_layers=2, warmup_ratio=0.0,
                    max_length=64, max_response_tokens=None)
    flags = ["--beta", "0.5", "--lr", "5e-3", "--steps", "4", "--batch-size", "3", "--grad-accum", "2",
             "--train-layers", "2", "--warmup", "0", "--max-length", "64", "--max-response-tokens", "0"]
    proc = torchrun("anatomist.train.distributed", "--data", data, "--model", folder, "--out", tmp_path / "dp",
                    "--cache-dir", tmp_path / "dp-cache", *flags, tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]

    lm = load(str(folder))
    one = train_dpo(lm.model, lm.tokenizer, plain(load_pairs(data)), cfg, tmp_path / "one",
                    cache_dir=tmp_path / "one-cache", save_model=False, progress=False)
    dp = [json.loads(line) for line in (tmp_path / "dp" / "metrics.jsonl").read_text().splitlines()]
    assert len(dp) == len(one.history) == 4  # written by rank 0 alone
    losses = [h["dpo/loss"] for h in one.history]
    assert losses[-1] < losses[0] - 0.05, losses  # the curve moves: a flat one would match trivially
    # Same global batch: the loss curve within 1e-5 relative. The margin is a difference of β-scaled
    # log-prob sums of ~100 nats each, so float32 rounding of the ranks' summed gradient shows in it
    # at ~1e-6 absolute (not relative to the small difference).
    for a, b in zip(dp, one.history):
        assert a["dpo/loss"] == pytest.approx(b["dpo/loss"], rel=1e-5), a["step"]
        assert a["dpo/reward_margin"] == pytest.approx(b["dpo/reward_margin"], abs=2e-5), a["step"]
        assert a["dpo/grad_norm"] == pytest.approx(b["dpo/grad_norm"], rel=1e-4), a["step"]
    from safetensors.torch import load_file

    trained = load_file(str(tmp_path / "dp" / "policy" / "model.safetensors"))
    for name, p in one.model.named_parameters():
        if name in trained:
            torch.testing.assert_close(trained[name], p.detach(), rtol=1e-5, atol=1e-6)
