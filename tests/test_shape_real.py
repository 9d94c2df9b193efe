"""Shaping on the real default model and the real demo audit (runs/demo/audit from `make demo`)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import HH_FILE, REPO

AUDIT = REPO / "runs" / "demo" / "audit"
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (AUDIT / "audit.json").is_file(), reason="runs/demo/audit is missing: make demo")]


@pytest.fixture(scope="module")
def real():
    from anatomist.audit.folder import AuditFolder
    from anatomist.data import load_pairs

    torch.set_num_threads(1)
    audit = AuditFolder(AUDIT)
    if audit.text_hashes is None:        # shaping a subset needs them (AuditFolder.check_data)
        pytest.skip("runs/demo/audit predates per-pair text hashes: re-run `make demo`")
    data = audit.meta["data"].get("file") or HH_FILE      # older demos audited HH without recording the file
    pairs = {p.id: p for p in load_pairs(REPO / data, on_bad_row="skip")}
    return audit, [pairs[i] for i in audit.pair_ids]


def test_real_token_masks_match_the_audit(real, smol_tokenizer):
    from anatomist.shape import TokenFilter, shape_pairs
    from anatomist.shape.masks import token_scores

    audit, pairs = real
    k = int(audit.clusters.sort_values("q").cluster.iloc[0])                     # the most significant concept
    shaped = shape_pairs(pairs[:20], audit, lam={k: -1.0}, token_filter=TokenFilter((k,), tau=2.0),
                         tokenizer=smol_tokenizer, max_length=audit.meta["config"]["max_length"])
    c_pos, c_neg = audit.scores([p.id for p in pairs[:20]], [k])
    assert [p.offset for p in shaped] == pytest.approx(list(-(c_pos - c_neg)[:, 0]))
    for p in shaped[:5]:                         # token scores average to the audited (mean-pooled) score
        assert token_scores(audit, p.id, "chosen", k).mean() == pytest.approx(audit.scores([p.id], [k])[0][0, 0])
    kept = np.mean([m for p in shaped for m in (*p.chosen_token_mask, *p.rejected_token_mask)])
    assert 0.5 < kept < 1.0


def test_real_steering(real, smol):
    from anatomist.shape.steer import audit_direction, steered_generate

    audit, _ = real
    d = audit_direction(audit, 3)
    prompts = ["How do I make friends?", "Tell me about the moon."]
    plain = steered_generate(smol.model, smol.tokenizer, prompts, layer=audit.layer, vector=0 * d, max_new_tokens=16)
    steered = steered_generate(smol.model, smol.tokenizer, prompts, layer=audit.layer, vector=80 * d, max_new_tokens=16)
    assert plain[0].startswith("Making friends") and steered != plain


def test_real_trl_export_and_step(real, smol, tmp_path):
    """On the real model: exported reference log-probs = TRL's own; one TRL step = the shaped loss."""
    trl = pytest.importorskip("trl")
    from anatomist.shape.export import export_trl, load_export
    from anatomist.shape.recipe import Recipe
    from anatomist.shape.losses import dpo_loss
    from anatomist.shape.trl_compat import PrecomputedRefDPOTrainer

    audit, pairs = real
    pairs, beta, lam = pairs[:4], 0.1, {3: -1.0}
    args = trl.DPOConfig(output_dir=str(tmp_path / "trl"), beta=beta, max_length=256, max_steps=1,
                         per_device_train_batch_size=4, learning_rate=1e-6, report_to=[], save_strategy="no",
                         use_cpu=True, bf16=False, gradient_checkpointing=False, disable_tqdm=True,
                         precompute_ref_log_probs=True)
    plain = load_export(export_trl(smol.model, smol.tokenizer, pairs, audit, tmp_path / "plain.jsonl",
                                   recipe=Recipe(), beta=beta, max_length=256, progress=False))
    theirs = trl.DPOTrainer(model=smol.model, args=args, processing_class=smol.tokenizer,
                            train_dataset=plain.remove_columns(["ref_chosen_logps", "ref_rejected_logps"])).train_dataset
    theirs = {r["id"]: r for r in theirs}
    assert sorted(theirs) == sorted(plain["id"])                 # the export drops what TRL drops (long prompts)
    for r in plain:
        assert (theirs[r["id"]]["ref_chosen_logps"], theirs[r["id"]]["ref_rejected_logps"]) == \
            pytest.approx((r["ref_chosen_logps"], r["ref_rejected_logps"]), abs=1e-3)

    shaped = load_export(export_trl(smol.model, smol.tokenizer, pairs, audit, tmp_path / "shaped.jsonl",
                                    recipe=Recipe(lam=lam), beta=beta, max_length=256, progress=False))
    losses = []

    class Recording(PrecomputedRefDPOTrainer):
        def compute_loss(self, model, inputs, *a, **kw):
            losses.append(super().compute_loss(model, inputs, *a, **kw))
            return losses[-1]

    Recording(model=copy.deepcopy(smol.model), args=args, train_dataset=shaped, processing_class=smol.tokenizer).train()
    # Before the first update policy = reference, so on the policy's own log-probs only the offset remains.
    pol = torch.tensor([theirs[i]["ref_chosen_logps"] for i in shaped["id"]])
    pol_r = torch.tensor([theirs[i]["ref_rejected_logps"] for i in shaped["id"]])
    expected = dpo_loss(pol, pol_r, pol, pol_r, beta=beta, offset=torch.tensor(shaped["shaping_offset"])).loss.mean()
    assert losses[0].item() == pytest.approx(expected.item(), abs=1e-4)
