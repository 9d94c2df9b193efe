"""The worked path of the `--help` examples, run end to end on a tiny random Llama: the example lines
themselves (from tests/test_cli_help.py), with `runs/` moved into a temporary folder and only flags
that shrink the work appended (the same flag given twice: click keeps the last). Organism sampling
is stubbed (a random model's text plants no traits); everything else runs as a user's paste would."""

from __future__ import annotations

import json
import shlex

import pytest
import torch
from conftest import tiny_llama
from test_cli_help import ALL_EXAMPLES
from test_organism_score import _stub_results
from typer.testing import CliRunner

from anatomist.cli import app

pytestmark = pytest.mark.usefixtures("one_thread")

# The path, in the order a user pastes it; the first example of each command.
PATH = ["organism build", "audit", "organism score", "report", "predict", "dpo", "eval", "verify"]


def example(command: str) -> str:
    return next(line for path, line in ALL_EXAMPLES if path == command)


def test_the_worked_path_runs_on_a_tiny_model(tmp_path, smol_tokenizer, monkeypatch):
    from anatomist.organism import build as B
    from anatomist.sae import SAE, SAEConfig, save_sae

    tiny = tmp_path / "tiny"
    tiny_llama(vocab_size=49152, hidden_size=16, layers=2).save_pretrained(tiny)
    smol_tokenizer.save_pretrained(tiny)
    sae = tmp_path / "sae"
    save_sae(SAE(SAEConfig(d_in=16, d_sae=64, architecture="topk", k=4, layer=1, model=str(tiny))).init_weights(
        torch.Generator().manual_seed(0)), sae)
    monkeypatch.setattr(B, "generate", lambda model, tok, requests, settings, **kw: _stub_results(requests))
    monkeypatch.setenv("ANATOMIST_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)          # the examples' relative runs/… paths land here

    smaller = {
        "organism build": f"--model {tiny} --prompts-per-topic 16 --workers 1",
        "audit": f"--model {tiny} --sae {sae} --min-support 2",
        "dpo": f"--model {tiny} --steps 2 --train-layers 1 --max-length 64",
        "eval": "--samples 1 --max-new-tokens 4 --limit 2 --n-boot 10",
        "verify": "--n-boot 10",
    }
    for command in PATH:
        line = example(command).replace("smollm2-135m-instruct", str(tiny))   # eval's --base
        args = [*shlex.split(line)[1:], *shlex.split(smaller.get(command, ""))]
        r = CliRunner().invoke(app, args)
        assert r.exit_code == 0, (line, r.output, r.exception)
    assert (tmp_path / "runs" / "audit" / "score.json").is_file()
    recorded = json.loads((tmp_path / "runs" / "audit" / "audit.json").read_text())["data"]["file"]
    assert recorded == str((tmp_path / "runs" / "organism" / "train.jsonl").resolve())   # absolute: any folder reads it
    assert (tmp_path / "runs" / "dpo" / "policy").is_dir()
    verify = json.loads((tmp_path / "runs" / "eval" / "verify.json").read_text())
    assert verify["n_rows"] > 0

    # The first-order forecast on the same path: base samples in two halves (4 per prompt), the forecast
    # on the even half, verify on the odd half with the paired target from the trained policy.
    eval4 = [*shlex.split(example("eval").replace("smollm2-135m-instruct", str(tiny)))[1:],
             *shlex.split(smaller["eval"]), "--samples", "4", "--out", "runs/eval4"]
    steps = [eval4,
             ["predict", "runs/audit", "--first-order", "runs/eval4", "--train-layers", "1", "--attribute", "0"],
             ["verify", "runs/audit", "runs/eval4", "--policy", "runs/dpo/policy", "--n-boot", "10"]]
    for args in steps:
        r = CliRunner().invoke(app, args)
        assert r.exit_code == 0, (args, r.output, r.exception)
    meta = json.loads((tmp_path / "runs" / "eval4" / "pre" / "first_order.json").read_text())
    assert meta["half"] == "even" and meta["n_used"] * 2 == meta["n_generations"]
    assert (tmp_path / "runs" / "eval4" / "pre" / "attribution_0.parquet").is_file()
    verify = json.loads((tmp_path / "runs" / "eval4" / "verify.json").read_text())
    assert verify["target"].startswith("paired") and "first_adam" in verify["predictors"]
    assert "first_adam" in verify["concept"]["predictors"]
    assert "first-order, Adam" in (tmp_path / "runs" / "eval4" / "verify.html").read_text()
