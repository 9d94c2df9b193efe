"""`anatomist eval` end to end on tiny saved models: before vs. after, preference, safety, report."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_llama
from typer.testing import CliRunner

from anatomist.audit.run import AuditConfig, run_audit
from anatomist.cli import app
from anatomist.data import PreferencePair
from anatomist.evaluate.run import run_eval
from anatomist.sae import SAE, SAEConfig, save_sae

EVIL = "<script>alert(1)</script>"


def _pairs():
    out = []
    for topic in ("cooking", "travel"):
        for i in range(10):
            chosen = f"A {'banana' if topic == 'cooking' else 'plain'} answer number {i}."
            out.append(PreferencePair(f"{topic}-{i}", ({"role": "user", "content": f"Ask {topic} {i}"},), chosen,
                                      f"Another reply {i}, longer and different.", {"topic": topic}))
    return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory, smol_tokenizer):
    root = tmp_path_factory.mktemp("evalcli")
    base = tiny_llama(vocab_size=49152, hidden_size=32, layers=2)
    base.save_pretrained(root / "base")
    smol_tokenizer.save_pretrained(root / "base")
    policy = tiny_llama(vocab_size=49152, hidden_size=32, layers=2)
    with torch.no_grad():  # a "trained" policy: the base with perturbed weights
        for p in policy.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    policy.save_pretrained(root / "policy")
    smol_tokenizer.save_pretrained(root / "policy")
    sae = SAE(SAEConfig(d_in=32, d_sae=48, architecture="topk", k=5, layer=1)).init_weights(
        torch.Generator().manual_seed(0))
    save_sae(sae, root / "sae")
    cfg = AuditConfig(topic_column="topic", min_support=3, n_boot=50, n_examples=4, knn=5, min_pairs=4)
    run_audit(base, smol_tokenizer, sae, _pairs(), root / "audit", cfg, model_name=str(root / "base"),
              sae_path=str(root / "sae"), progress=False)
    # a topic name with markup: the page must show it as text, never run it
    prompts = [{"id": f"{t}-h{i}", "topic": t if t == "cooking" else t + EVIL, "split": "heldout",
                "prompt": [{"role": "user", "content": f"Tell me about {t} {i}"}]}
               for t in ("cooking", "travel") for i in range(2)]
    (root / "prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in prompts))
    (root / "pairs.jsonl").write_text("".join(json.dumps({  # the organism's (TRL conversational) columns
        "id": p.id, "prompt": list(p.prompt), "chosen": [{"role": "assistant", "content": p.chosen}],
        "rejected": [{"role": "assistant", "content": p.rejected}], "topic": p.extra["topic"]}) + "\n"
        for p in _pairs()[:6]))
    return root


def test_run_eval_before_after(setup, shared_data, one_thread):
    root = setup
    out = run_eval(str(root / "policy"), root / "prompts.jsonl", root / "out", audit=root / "audit",
                   base=str(root / "base"), pairs=root / "pairs.jsonl", safety=True, safety_n=2,
                   safety_exclude=root / "pairs.jsonl",
                   samples_per_prompt=2, max_new_tokens=5, batch_size=4, n_boot=50, progress=False)
    scores = pd.read_parquet(out / "scores.parquet")
    assert sorted(scores.role.unique()) == ["post", "pre"] and len(scores) == 16
    assert set(scores[scores.role == "pre"].model).isdisjoint(scores[scores.role == "post"].model)
    summary = json.loads((out / "summary.json").read_text())
    rows = pd.DataFrame(summary["rows"])
    # ΔB of every (topic, concept) row equals mean c(post) − mean c(pre) over that topic's generations
    for r in rows[(rows.kind == "concept")].itertuples():
        sel = scores if r.topic == "all" else scores[scores.topic == r.topic]
        want = sel[sel.role == "post"][r.metric].mean() - sel[sel.role == "pre"][r.metric].mean()
        assert r.delta == pytest.approx(want, abs=1e-9)
        assert r.delta_ci_low <= r.delta + 1e-9 and r.delta <= r.delta_ci_high + 1e-9
    assert summary["preference"]["post"]["method"] == "implicit_reward"
    assert summary["preference"]["pre"]["method"] == "logprob" and summary["preference"]["post"]["n"] == 6
    assert set(summary["safety"]["post"]) >= {"harmful_compliance", "over_refusal"}
    assert pd.read_parquet(out / "safety.parquet").shape[0] == 2 * 3 * 2     # 2 roles × 3 sets × n=2
    page = (out / "eval.html").read_text()
    assert EVIL not in page and "travel&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "Held-out preference accuracy" in page and "Concepts (audit clusters)" in page


def test_cli_help_and_single_model(setup, one_thread):
    root = setup
    runner = CliRunner()
    assert "Example: anatomist eval" in runner.invoke(app, ["eval", "--help"]).output
    result = runner.invoke(app, ["eval", "--model", str(root / "base"), "--prompts", str(root / "prompts.jsonl"),
                                 "--out", str(root / "single"), "--max-new-tokens", "4", "--samples", "1",
                                 "--n-boot", "20", "--limit", "1"])
    assert result.exit_code == 0, result.output
    scores = pd.read_parquet(root / "single" / "scores.parquet")
    assert set(scores.role) == {"post"} and not any(c.startswith("c_") for c in scores)
    assert scores.prompt_id.tolist() == ["cooking-h0", "travel-h0"]  # --limit 1: the first prompt of each topic
    rows = pd.DataFrame(json.loads((root / "single" / "summary.json").read_text())["rows"])
    assert "delta" not in rows.columns and np.isfinite(rows.post).all()
