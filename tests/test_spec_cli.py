"""CLI help, the analysis on a tiny model, and the real default model end to end (slow)."""

import pytest
import torch
from typer.testing import CliRunner

from anatomist.cli import app
from anatomist.spec_decode.analyze import collect, render_html, slopes
from anatomist.spec_decode.head import MTPConfig, MTPHead
from anatomist.spec_decode.stats import chi2_sf, chisquare_gof, linear_fit

pytestmark = pytest.mark.usefixtures("one_thread")



@pytest.mark.parametrize("args", [["mtp", "--help"], ["mtp", "train", "--help"], ["mtp", "analyze", "--help"],
                                  ["generate", "--help"]])
def test_help(args):
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "Usage" in r.output


def test_generate_rejects_mtp_without_head():
    from anatomist.errors import AnatomistError

    r = CliRunner().invoke(app, ["generate", "-p", "hi", "--spec", "mtp"])
    assert isinstance(r.exception, AnatomistError)


def test_stats_helpers():
    assert chi2_sf(3.841458820694124, 1) == pytest.approx(0.05, abs=1e-9)
    assert chi2_sf(18.307038053275146, 10) == pytest.approx(0.05, abs=1e-9)
    stat, df, p = chisquare_gof(torch.tensor([10, 20, 30]), torch.tensor([1.0, 2.0, 3.0]))
    assert stat == 0 and df == 2 and p == pytest.approx(1.0)
    x = torch.arange(100.0)
    fit = linear_fit(x, 3 - 0.5 * x + torch.tensor([1.0, -1.0]).repeat(50))
    # residual sd ≈ 1, Sxx = 83325 → se = sqrt(100/98/83325)
    assert fit.slope == pytest.approx(-0.5, abs=1e-3)
    assert fit.slope_se == pytest.approx((sum((fit.intercept + fit.slope * x - (3 - 0.5 * x + torch.tensor(
        [1.0, -1.0]).repeat(50))) ** 2).item() / 98 / 83325) ** 0.5, rel=1e-6)


def test_analysis_on_tiny_model(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    m = LlamaForCausalLM(LlamaConfig(vocab_size=16, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2)).eval()
    with torch.no_grad():
        m.lm_head.weight.mul_(30)
    heads = {"a": MTPHead(m, MTPConfig(gamma=2)).eval()}
    recs = collect(m, heads, [[1, 2, 3], [4, 5]], temperatures=(0.5, 1.5), gamma=2, max_new_tokens=10,
                   progress=False)
    assert {r.mode for r in recs} == {"rs", "greedy"} and {r.temperature for r in recs} == {0.5, 1.5}
    s = slopes(recs)
    assert set(s) == {("a", "rs"), ("a", "greedy")}
    assert s[("a", "rs")]["fit"].n == sum(1 for r in recs if r.mode == "rs" and r.depth == 1)
    page = render_html(recs)
    assert page.startswith("<!DOCTYPE html>") and "Plotly.newPlot" in page and "slope" in page


@pytest.mark.slow
def test_default_model_speculative_greedy_matches_plain():
    """On SmolLM2-135M with an untrained head and the n-gram drafter: T=0 output is plain greedy."""
    from anatomist.models import load
    from anatomist.models.chat import apply_chat_template
    from anatomist.spec_decode.drafters import MTPDrafter, NGramDrafter
    from anatomist.spec_decode.generate import generate

    lm = load()
    ids = [apply_chat_template(lm.tokenizer, [{"role": "user", "content": "Name three colours."}]),
           apply_chat_template(lm.tokenizer, [{"role": "user", "content": "What is 2+2?"}])]
    plain = generate(lm.model, ids, temperature=0, max_new_tokens=24)
    head = MTPHead(lm.model, MTPConfig(gamma=3, draft_vocab=4096)).eval()
    for drafter in (MTPDrafter(head), NGramDrafter()):
        out = generate(lm.model, ids, drafter=drafter, temperature=0, max_new_tokens=24)
        assert out.tokens == plain.tokens
