"""Bad-input corpus: malformed inputs through the real command line, one row each.

Every row runs `anatomist.cli.main()` in-process (the same code path as the `anatomist` script:
typer parsing, the stage's CLI, and main()'s `error: …` / exit 2 handling) and asserts: a non-zero
exit, stderr of exactly one line starting `error:` that names what and where (the expected
substrings), no traceback, and an output folder that is absent, unchanged, or clean (no temp
file, every file parses). One row also runs in a real subprocess, to catch anything that writes
to stderr behind main()'s back (warnings, progress bars).

Data-file rows complement tests/test_data_bad_inputs.py (which checks `load_pairs` messages field
by field) by going through the CLIs that read data. Everything runs on tiny random models and
SAEs written to a temporary folder; nothing loads the real model.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import shutil
import subprocess
import sys
import traceback
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import REPO, tiny_llama
from killharness import scan

pytestmark = pytest.mark.usefixtures("one_thread")

OK = {"prompt": "Why is the sky blue?", "chosen": "Rayleigh scattering.", "rejected": "No idea."}


def _jsonl(path: Path, rows) -> None:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


@pytest.fixture(scope="module")
def w(tmp_path_factory, smol_tokenizer):
    """Every input the corpus needs, built once: tiny models, SAEs, stores, heads, audits, data."""
    from safetensors.torch import load_file, save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    from anatomist.capture import ShardWriter
    from anatomist.sae import SAE, SAEConfig, save_sae
    from anatomist.spec_decode.head import MTPConfig, MTPHead, save_head
    from test_audit_report import make_fake_audit

    r = tmp_path_factory.mktemp("bad-inputs")
    p = {"root": str(r)}

    def path(name):
        p[name.split(".")[0].replace("-", "_")] = str(r / name)
        return r / name

    # models: the real tokenizer (chat template) on a random 2-layer Llama; the same without template
    model = tiny_llama(vocab_size=49152, hidden_size=16, layers=2)
    model.save_pretrained(path("tiny"))
    smol_tokenizer.save_pretrained(r / "tiny")
    shutil.copytree(r / "tiny", path("notpl"))
    (r / "notpl" / "chat_template.jinja").unlink(missing_ok=True)
    cfg = json.loads((r / "notpl" / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (r / "notpl" / "tokenizer_config.json").write_text(json.dumps(cfg))

    # data files
    _jsonl(path("good.jsonl"), [{**OK, "chosen": f"Scattering, reason {i}."} for i in range(20)])
    _jsonl(path("badline.jsonl"), [OK, '{"prompt": "a", "chosen": }'])
    _jsonl(path("missing_field.jsonl"), [OK, {"prompt": "a", "rejected": "b"}])
    _jsonl(path("wrong_type.jsonl"), [{**OK, "chosen": 3}])
    path("empty.jsonl").write_text("")
    _jsonl(path("dup.jsonl"), [{**OK, "id": "x"}, {**OK, "id": "x", "chosen": "Other."}])
    _jsonl(path("blank.jsonl"), [OK, {**OK, "chosen": "   "}])
    z = gzip.compress(("".join(json.dumps({**OK, "chosen": f"c{i}"}) + "\n" for i in range(300))).encode())
    path("trunc.jsonl.gz").write_bytes(z[:len(z) // 2])
    path("data.tsv").write_text("prompt\tchosen\trejected\n")
    _jsonl(path("unknown_fmt.jsonl"), [{"question": "q", "answer": 1}])
    path("dir_as_data.jsonl").mkdir()
    _jsonl(path("allbad.jsonl"), [{**OK, "chosen": ""}, "{"])
    path("latin1.jsonl").write_bytes(json.dumps(OK).encode()[:-2] + b' caf\xe9"}\n')

    # SAEs: a good one (d_in 16, layer 1) and damaged copies
    sae = SAE(SAEConfig(d_in=16, d_sae=64, architecture="topk", k=4, layer=1, model="tiny")).init_weights(
        torch.Generator().manual_seed(0))
    save_sae(sae, path("sae"))
    weights = load_file(str(r / "sae" / "sae_weights.safetensors"))
    raw_cfg = json.loads((r / "sae" / "cfg.json").read_text())

    def sae_variant(name, tensors=None, cfg=None, cfg_text=None, truncate=False):
        d = path(name)
        d.mkdir()
        save_file(tensors if tensors is not None else weights, str(d / "sae_weights.safetensors"))
        if truncate:
            data = (d / "sae_weights.safetensors").read_bytes()
            (d / "sae_weights.safetensors").write_bytes(data[:len(data) // 2])
        (d / "cfg.json").write_text(cfg_text if cfg_text is not None else json.dumps(cfg or raw_cfg))

    def with_anatomist(**changes):
        c = json.loads(json.dumps(raw_cfg))
        c["metadata"]["anatomist"].update(changes)
        return c

    sae_variant("sae_badjson", cfg_text="{not json")
    sae_variant("sae_trunc", truncate=True)
    sae_variant("sae_shape", tensors={**weights, "W_enc": weights["W_enc"][:, :32].contiguous()})
    sae_variant("sae_dtype", tensors={**weights, "W_enc": weights["W_enc"].to(torch.int32)})
    sae_variant("sae_missing", tensors={k: v for k, v in weights.items() if k != "b_dec"})
    sae_variant("sae_bshape", tensors={**weights, "b_enc": weights["b_enc"][:3].contiguous()})
    sae_variant("sae_cfgmismatch", cfg=with_anatomist(d_sae=128))
    sae_variant("sae_badk", cfg=with_anatomist(k=-3))
    sae_variant("sae_layer9", cfg=with_anatomist(layer=9))
    sae_variant("sae_foreign", cfg={"architecture": "standard", "d_in": 16})
    sae_variant("sae_notdict", cfg_text="[1, 2]")
    save_sae(SAE(SAEConfig(d_in=32, d_sae=64, architecture="topk", k=4, layer=1)).init_weights(
        torch.Generator().manual_seed(0)), path("sae_d32"))

    # activation stores: a finished one and damaged copies
    g = torch.Generator().manual_seed(0)
    writer = ShardWriter(path("store"), {"model": "tiny", "layer": 1, "d_model": 16}, shard_rows=200)
    for s in range(20):
        writer.add(s, str(s), "text", acts=torch.randn(30, 16, generator=g), pos=torch.arange(30),
                   token=torch.zeros(30, dtype=torch.long), response=torch.ones(30, dtype=torch.bool))
    writer.close(20)
    for name in ("store_trunc", "store_badjson", "store_badman", "store_partial", "store_copy"):
        shutil.copytree(r / "store", path(name))
    shard = sorted((r / "store_trunc").glob("shard_*"))[1]
    shard.write_bytes(shard.read_bytes()[:100])
    (r / "store_badjson" / "capture.json").write_text("{nope")
    (r / "store_badman" / "manifest.json").write_text("{nope")
    (r / "store_partial" / "manifest.json").unlink()

    # MTP heads for the tiny model, and damaged copies
    trunk = LlamaForCausalLM.from_pretrained(r / "tiny")
    save_head(MTPHead(trunk, MTPConfig(gamma=2, draft_vocab=64)), path("head"))
    for name in ("head_badjson", "head_fmt", "head_unknown", "head_trunc", "head_novocab"):
        shutil.copytree(r / "head", path(name))
    head_cfg = json.loads((r / "head" / "config.json").read_text())
    (r / "head_badjson" / "config.json").write_text("{x")
    (r / "head_fmt" / "config.json").write_text(json.dumps({**head_cfg, "format": "other"}))
    (r / "head_unknown" / "config.json").write_text(json.dumps({**head_cfg, "gama": 3}))
    hw = r / "head_trunc" / "mtp_head.safetensors"
    hw.write_bytes(hw.read_bytes()[:200])
    state = load_file(str(r / "head" / "mtp_head.safetensors"))
    save_file({k: v for k, v in state.items() if k != "vocab_ids"}, str(r / "head_novocab" / "mtp_head.safetensors"))
    wider = LlamaForCausalLM(LlamaConfig(**{**trunk.config.to_dict(), "hidden_size": 32, "intermediate_size": 64}))
    save_head(MTPHead(wider, MTPConfig(gamma=2, draft_vocab=64)), path("head_big"))

    # audit folders (as run.py writes them) and damaged copies
    for name in ("rep_json", "rep_pq", "rep_col", "rep_examples"):
        make_fake_audit(path(name), malicious=False)
    (r / "rep_json" / "audit.json").write_text("{bad")
    (r / "rep_pq" / "rows.parquet").write_bytes(b"PAR1 not really")
    import pandas as pd

    frame = pd.read_parquet(r / "rep_col" / "clusters.parquet").drop(columns=["label"])
    frame.to_parquet(r / "rep_col" / "clusters.parquet")
    (r / "rep_examples" / "examples.json").write_text("[]")
    path("empty_dir").mkdir()
    # an audit whose audit.json records its data relative to a folder it ran in (older audits did), for
    # `organism score`; a truth file of the current version beside nothing
    make_fake_audit(path("org_audit"), malicious=False)
    meta = json.loads((r / "org_audit" / "audit.json").read_text())
    meta["data"] = {**meta.get("data", {}), "file": "elsewhere/train.jsonl"}
    (r / "org_audit" / "audit.json").write_text(json.dumps(meta))
    from anatomist.organism.plant import TRUTH_VERSION

    path("truthdir").mkdir()
    p["truth"] = str(r / "truthdir" / "truth.json")
    Path(p["truth"]).write_text(json.dumps({"version": TRUTH_VERSION, "traits": {}, "cells": []}))
    return SimpleNamespace(**p)


CAP = "capture --model {tiny} --layer 1 --out {out} --data"
AUD = "audit --model {tiny} --sae {sae} --out {out} --data {good}"
EVAL = "sae eval --data {store} --ce-sequences 0"
TRAIN = "sae train --out {out} --tokens 2K --batch-size 100 --data {store}"
GEN = "generate -p hi --model {tiny} --max-new-tokens 2"

# (id, command line, substrings the one error line must hold, what the output folder must be afterwards:
#  "absent" (never created), "unchanged" (an existing folder, byte for byte) or "clean" (no temp file,
#  every file parses; a resumable partial state).  {out} is a fresh folder per row; "unchanged"
#  rows name their folder in the command line as {out:NAME}.)
CASES = [
    # data files
    ("data-bad-json-line", f"{CAP} {{badline}}", ["badline.jsonl: row 2: invalid JSON"], "absent"),
    ("data-missing-field", "data inspect {missing_field}", ['missing_field.jsonl: row 2: field "chosen": missing field'], None),
    ("data-wrong-type", f"{CAP} {{wrong_type}}", ['wrong_type.jsonl: row 1: field "chosen": wrong type: expected a string, got int 3'], "absent"),
    ("data-empty-file", "audit --model {tiny} --sae {sae} --out {out} --data {empty}", ["empty.jsonl: empty dataset: no rows"], "absent"),
    ("data-duplicate-ids", f"{CAP} {{dup}}", ["dup.jsonl: row 2: field \"id\": duplicate id: 'x' (first at row 1)"], "absent"),
    ("data-blank-response", "data inspect {blank}", ['blank.jsonl: row 2: field "chosen": empty response'], None),
    ("data-gzip-truncated", f"{CAP} {{trunc}}", ["trunc.jsonl.gz: unreadable file"], "absent"),
    ("data-unknown-extension", "sae train --model {tiny} --out {out} --data {data}", ["data.tsv: unknown extension"], "absent"),
    ("data-unknown-format", f"{CAP} {{unknown_fmt}}", ["unknown_fmt.jsonl: row 1: unknown format: columns seen: question"], "absent"),
    ("data-directory", "data inspect {dir_as_data}", ["dir_as_data.jsonl: not a file"], None),
    ("data-missing-file", "audit --model {tiny} --sae {sae} --out {out} --data {root}/nope.jsonl", ["nope.jsonl: file not found"], "absent"),
    ("data-all-rows-bad", f"{CAP} {{allbad}} --on-bad-row skip", ["allbad.jsonl: no valid rows: all 2 rows were skipped"], "absent"),
    ("data-not-utf8", f"{CAP} {{latin1}}", ["latin1.jsonl: row 1: not UTF-8"], "absent"),
    ("data-bad-row-hint-audit", "audit --model {tiny} --sae {sae} --out {out} --data {missing_field}",
     ['missing_field.jsonl: row 2: field "chosen": missing field (--on-bad-row skip skips and counts such rows)'], "absent"),
    ("data-bad-row-hint-eval", "eval --model {tiny} --prompts {good} --out {out} --pairs {wrong_type}",
     ['wrong_type.jsonl: row 1: field "chosen": wrong type', "(--on-bad-row skip skips"], "absent"),
    ("data-bad-row-flag-dpo", "dpo --model {tiny} --out {out} --data {good} --on-bad-row maybe",
     ["on_bad_row must be 'error' or 'skip', got 'maybe'"], "absent"),
    ("demo-missing-data-before-the-model", "demo --out {out} --model {root}/no-such-model --data {root}/nope.jsonl",
     ["nope.jsonl: file not found"], "absent"),
    ("data-format-flag", "data inspect {good} --format trl", ["unknown format 'trl'"], None),
    ("data-on-bad-row-flag", f"{CAP} {{good}} --on-bad-row warn", ["on_bad_row must be 'error' or 'skip', got 'warn'"], "absent"),
    # models and tokenizers
    ("model-missing-path", "capture --model {root}/no-such-model --layer 1 --out {out} --data {good}", ["no-such-model: model folder not found"], "absent"),
    ("model-mistyped-alias", "model info smollm2-135m",
     ["cannot load tokenizer 'smollm2-135m': not an alias, a model folder or a hub model in the local HF cache",
      "aliases: smollm2-135m-instruct; did you mean smollm2-135m-instruct?", "ANATOMIST_ALLOW_HUB=1"], None),
    ("model-path-is-a-file", "model info {good}", ["good.jsonl: expected a model folder, a .gguf file or a HF model id"], None),
    ("model-missing-gguf", "model info {root}/x.gguf", ["x.gguf: GGUF file not found"], None),
    ("model-folder-without-weights", "model info {sae}", ["cannot load tokenizer", "sae"], None),
    ("tokenizer-missing-path", "data inspect {good} --tokenizer {root}/no-such-tok", ["no-such-tok: model folder not found"], None),
    ("no-chat-template-capture", "capture --model {notpl} --layer 1 --out {out} --data {good}", ["notpl' has no chat template"], "absent"),
    ("no-chat-template-audit", "audit --model {notpl} --sae {sae} --out {out} --data {good}", ["notpl' has no chat template"], "absent"),
    ("layer-out-of-range", f"{CAP} {{good}} --layer 7", ["layer 7 is out of range: the model has 2 layers (0..1)"], "absent"),
    ("layer-negative-out-of-range", f"{CAP} {{good}} --layer -3", ["layer -3 is out of range"], "absent"),
    ("sae-train-layer-out-of-range", "sae train --model {tiny} --layer 5 --out {out} --tokens 1K --data {good}", ["layer 5 is out of range"], "absent"),
    # configs: out-of-range values
    ("capture-dtype", f"{CAP} {{good}} --dtype int8", ["dtype must be one of", "got 'int8'"], "absent"),
    ("capture-keep", f"{CAP} {{good}} --keep prompt", ["keep must be one of", "got 'prompt'"], "absent"),
    ("sae-k-negative", f"{TRAIN} --k -2", ["k must be in 1..d_sae=128, got -2"], "absent"),
    ("sae-k-above-width", f"{TRAIN} --k 999 --width 2x", ["k must be in 1..d_sae=32, got 999"], "absent"),
    ("sae-width", f"{TRAIN} --width abc", ["width must be like '8x' or a latent count, got 'abc'"], "absent"),
    ("sae-arch", f"{TRAIN} --arch foo", ["architecture must be one of", "got 'foo'"], "absent"),
    ("sae-lr-negative", f"{TRAIN} --lr -1", ["lr must be positive, got -1.0"], "absent"),
    ("sae-aux-k-negative", f"{TRAIN} --aux-k -1", ["aux_k must be >= 0 (0: off), got -1"], "absent"),
    ("sae-tokens", f"{TRAIN} --tokens lots", ["expected a count like 2M, 500K or 100000, got 'lots'"], "absent"),
    ("sae-batch-size", f"{TRAIN} --batch-size 0", ["batch_size must be positive, got 0"], "absent"),
    ("mtp-gamma", "mtp train --out {out} --gamma 0", ["gamma must be >= 1, got 0"], "absent"),
    ("mtp-loss", "mtp train --out {out} --loss foo", ["loss must be one of ce, kl, tv, e2e_tv, got 'foo'"], "absent"),
    ("mtp-steps", "mtp train --out {out} --steps 0", ["steps must be >= 1, got 0"], "absent"),
    ("audit-alpha", f"{AUD} --alpha 2", ["alpha must be in (0, 1), got 2.0"], "absent"),
    ("audit-pooling", f"{AUD} --pooling sum", ["pooling must be one of mean, max, topk, calmax, got 'sum'"], "absent"),
    ("audit-min-support", f"{AUD} --min-support 0", ["min_support >= 1"], "absent"),
    ("audit-resolution", f"{AUD} --resolution -1", ["resolution must be positive, got -1.0"], "absent"),
    ("audit-labeller", f"{AUD} --labeller gpt", ["--labeller 'gpt': choose one of offline, openai"], "absent"),
    ("audit-topic-method", f"{AUD} --topic-method foo", ["topic_method must be 'kmeans' or 'leiden', got 'foo'"], "absent"),
    ("audit-remote-llm-refused", f"{AUD} --labeller openai --base-url http://example.com/v1 --llm-model m",
     ["refusing to send dataset text to example.com", "--allow-remote"], "absent"),
    ("audit-llm-without-model", f"{AUD} --labeller openai --base-url http://127.0.0.1:9/v1", ["needs a model name"], "absent"),
    ("audit-llm-bad-url", f"{AUD} --labeller openai --base-url ftp://x --llm-model m", ["--base-url 'ftp://x': expected http(s)://"], "absent"),
    ("audit-too-few-pairs", f"{AUD} --limit 4", ["audit needs at least 16 pairs, got 4"], "absent"),
    ("audit-topic-column-missing", f"{AUD} --topic-column nosuch --limit 16", ["field 'nosuch' (the topic column) is missing"], "clean"),
    ("generate-temperature", f"{GEN} --temperature -1", ["--temperature must be >= 0, got -1.0"], None),
    ("generate-top-k", f"{GEN} --top-k -5", ["--top-k must be >= 0 (0: off), got -5"], None),
    ("generate-top-p", f"{GEN} --top-p 2", ["--top-p must be in (0, 1], got 2.0"], None),
    ("generate-draft-mode", f"{GEN} --spec ngram --draft-mode foo", ["--draft-mode must be rs or greedy, got 'foo'"], None),
    ("generate-spec", f"{GEN} --spec foo", ["--spec must be none, mtp or ngram, got 'foo'"], None),
    ("organism-heldout-fraction", "organism build --out {out} --model {tiny} --heldout-fraction 2", ["heldout_fraction must be in [0, 1), got 2.0"], "absent"),
    # SAE files
    ("sae-cfg-bad-json", f"{EVAL} {{sae_badjson}}", ["sae_badjson: unreadable SAE files (JSONDecodeError"], None),
    ("sae-weights-truncated", f"{EVAL} {{sae_trunc}}", ["sae_trunc: unreadable SAE files (SafetensorError"], None),
    ("sae-wrong-shape", f"{EVAL} {{sae_shape}}", ["sae_shape/sae_weights.safetensors: W_enc (16, 32) / W_dec (64, 16) do not match d_in=16, d_sae=64"], None),
    ("sae-int-dtype", f"{EVAL} {{sae_dtype}}", ["sae_dtype/sae_weights.safetensors: W_enc has dtype int32, expected a floating-point dtype"], None),
    ("sae-missing-tensor", f"{EVAL} {{sae_missing}}", ["sae_missing/sae_weights.safetensors: missing tensors ['b_dec']"], None),
    ("sae-bias-shape", f"{EVAL} {{sae_bshape}}", ["sae_bshape/sae_weights.safetensors: b_enc has shape (3,), expected (64,)"], None),
    ("sae-cfg-does-not-match-weights", f"{EVAL} {{sae_cfgmismatch}}", ["sae_cfgmismatch/sae_weights.safetensors: W_enc (16, 64)", "d_sae=128"], None),
    ("sae-cfg-out-of-range-k", f"{EVAL} {{sae_badk}}", ["sae_badk/cfg.json: k must be in 1..d_sae=64, got -3"], None),
    ("sae-foreign-cfg-missing-field", f"{EVAL} {{sae_foreign}}", ['sae_foreign/cfg.json: missing field "d_sae"'], None),
    ("sae-cfg-not-an-object", f"{EVAL} {{sae_notdict}}", ["sae_notdict/cfg.json: expected a JSON object, got list"], None),
    ("sae-missing-folder", f"{EVAL} {{root}}/nosae", ["nosae: not an SAE folder (needs cfg.json and sae_weights.safetensors)"], None),
    ("sae-store-width-mismatch", f"{EVAL} {{sae_d32}}", ["activations have width 16, the SAE expects 32"], None),
    ("sae-width-vs-model", "audit --model {tiny} --sae {sae_d32} --out {out} --data {good}", ["the SAE reads width d_in=32 but the model's residual stream has width 16"], "absent"),
    ("sae-layer-beyond-model", "audit --model {tiny} --sae {sae_layer9} --out {out} --data {good}", ["layer 9 is out of range"], "absent"),
    # activation stores
    ("store-truncated-shard", "sae train --out {out} --data {store_trunc}", ["store_trunc/shard_00001.safetensors: not a readable activation shard"], "absent"),
    ("store-bad-capture-json", "sae train --out {out} --data {store_badjson}", ["store_badjson/capture.json: unreadable (JSONDecodeError"], "absent"),
    ("store-bad-manifest", "sae train --out {out} --data {store_badman}", ["store_badman/manifest.json: unreadable (JSONDecodeError"], "absent"),
    ("store-unfinished", "sae train --out {out} --data {store_partial}", ["store_partial: capture is not finished; rerun the same capture command to resume"], "absent"),
    ("capture-into-another-run", "capture --model {tiny} --layer 1 --data {good} --out {out:store_copy}", ["store_copy: holds a capture with other settings"], "unchanged"),
    # MTP head folders
    ("head-bad-json", f"{GEN} --spec mtp --head {{head_badjson}}", ["head_badjson: unreadable an MTP head folder (JSONDecodeError"], None),
    ("head-unknown-field", f"{GEN} --spec mtp --head {{head_unknown}}", ["head_unknown/config.json: unknown field(s) gama"], None),
    ("head-wrong-format", f"{GEN} --spec mtp --head {{head_fmt}}", ["head_fmt/config.json: field \"format\" is not 'anatomist-mtp-head'"], None),
    ("head-truncated-weights", f"{GEN} --spec mtp --head {{head_trunc}}", ["head_trunc: unreadable an MTP head folder (SafetensorError"], None),
    ("head-missing-vocab", f"{GEN} --spec mtp --head {{head_novocab}}", ["head_novocab/mtp_head.safetensors: missing tensors ['vocab_ids']"], None),
    ("head-for-another-model", f"{GEN} --spec mtp --head {{head_big}}", ["head_big/mtp_head.safetensors: head does not fit this model"], None),
    ("head-missing-folder", f"{GEN} --spec mtp --head {{root}}/nohead", ["nohead: not an MTP head folder"], None),
    ("mtp-analyze-bad-head", "mtp analyze {head_badjson} --model {tiny}", ["head_badjson: unreadable an MTP head folder"], None),
    # `organism score`: paths recorded in, or given beside, an audit folder
    ("organism-score-recorded-data-missing", "organism score {out:org_audit}",
     ["elsewhere/truth.json: truth file not found (looked beside the audited data file; pass --truth FILE)"], "unchanged"),
    ("organism-score-truth-missing", "organism score {out:org_audit} --truth {root}/missing.json",
     ["missing.json: truth file not found"], "unchanged"),
    ("organism-score-data-missing", "organism score {out:org_audit} --truth {truth} --data {root}/nope.jsonl",
     ["nope.jsonl: audited data file not found", "pass --data FILE"], "unchanged"),
    ("organism-score-data-beside-no-truth", "organism score {out:org_audit} --data {good}",
     ["truth.json: truth file not found"], "unchanged"),
    # audit folders given to `anatomist report`
    ("report-missing-folder", "report {root}/noaudit", ["noaudit: no such audit folder"], None),
    ("report-missing-files", "report {out:empty_dir}", ["empty_dir is not a finished audit folder: missing audit.json, rows.parquet"], "unchanged"),
    ("report-bad-json", "report {out:rep_json}", ["rep_json/audit.json: unreadable (JSONDecodeError"], "unchanged"),
    ("report-bad-parquet", "report {out:rep_pq}", ["rep_pq/rows.parquet: unreadable (ArrowInvalid"], "unchanged"),
    ("report-missing-column", "report {out:rep_col}", ["rep_col/clusters.parquet: missing column(s) label"], "unchanged"),
    ("report-examples-not-an-object", "report {out:rep_examples}", ["rep_examples/examples.json: expected a JSON object, got list"], "unchanged"),
]


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """(exit code, stderr, stdout) of `anatomist ARGV` through `anatomist.cli.main`, in-process.

    An exception escaping main() is printed as the interpreter would (a traceback) with exit 1."""
    from anatomist import cli

    cli._state["debug"] = False
    err, out = io.StringIO(), io.StringIO()
    saved = sys.argv
    sys.argv = ["anatomist", *argv]
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                cli.main()
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except Exception:  # noqa: BLE001 — exactly what the corpus must never see
                traceback.print_exc(file=err)
                code = 1
    finally:
        sys.argv = saved
    return code, err.getvalue(), out.getvalue()


def _argv(w, command: str, out: Path) -> tuple[list[str], Path]:
    args = []
    for token in command.split():
        if token.startswith("{out:"):
            out = Path(getattr(w, token[5:-1]))
            token = str(out)
        args.append(token.format(**vars(w), out=out))
    return args, out


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module", autouse=True)
def private_cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:  # nothing a failing command caches may land in ~/.cache
        mp.setenv("ANATOMIST_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.mark.parametrize("name, command, expected, after", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_line_error(w, tmp_path, name, command, expected, after):
    argv, out = _argv(w, command, tmp_path / "out")
    before = _snapshot(out) if after == "unchanged" else None
    code, err, _ = run_cli(argv)
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (code, err)
    for text in expected:
        assert text in lines[0], (text, lines[0])
    if after == "absent":
        assert not out.exists(), sorted(p.name for p in out.rglob("*"))
    elif after == "unchanged":
        assert _snapshot(out) == before
    elif after == "clean":
        problems, tmps = scan(out)
        assert not problems and not tmps, (problems, tmps)


# `anatomist dpo` with reward shaping needs an audit of the same pairs: a tiny one, built once.
DPO = "dpo --data {good} --model {tiny} --steps 2 --train-layers 1 --max-length 64 --out {out} --cache-dir {out}/cache"
DPO_CASES = [
    ("dpo-lam-without-audit", f"{DPO} --lam 0=1", ["--lam, --token-filter, --inoculate, --drop-extreme and --steer need --audit DIR"]),
    ("dpo-lam-cluster-out-of-range", f"{DPO} --audit {{audit}} --lam 99=1", ["cluster 99 is out of range: the audit in", "has"]),
    ("dpo-lam-not-a-number", f"{DPO} --audit {{audit}} --lam 0=abc", ["--lam '0=abc': expected CONCEPT=NUMBER"]),
    ("dpo-lam-unknown-label", f"{DPO} --audit {{audit}} --lam nosuchlabel=1", ["no cluster label contains 'nosuchlabel'", "clusters.parquet"]),
    ("dpo-token-filter-not-a-number", f"{DPO} --audit {{audit}} --token-filter 0:x", ["--token-filter '0:x': expected CONCEPT:NUMBER"]),
    ("dpo-token-filter-sides", f"{DPO} --audit {{audit}} --token-filter 0:1 --token-filter-sides left", ["sides must be one of", "got 'left'"]),
    ("dpo-drop-extreme", f"{DPO} --audit {{audit}} --drop-extreme 2", ["drop_extreme must be a fraction in (0, 1), got 2.0"]),
    ("dpo-audit-missing", f"{DPO} --audit {{root}}/no-audit --lam 0=1", ["no-audit: no such audit folder"]),
    ("dpo-beta-zero", f"{DPO} --beta 0", ["beta, lr and epochs must be > 0"]),
    ("dpo-loss", f"{DPO} --loss foo", ["loss_type must be one of sigmoid, ipo, got 'foo'"]),
    ("dpo-schedule", f"{DPO} --schedule foo", ["schedule must be one of", "got 'foo'"]),
    ("dpo-warmup", f"{DPO} --warmup 1.5", ["warmup_ratio < 1", "1.5"]),
    ("dpo-lam-nan", f"{DPO} --audit {{audit}} --lam 0=nan", ["--lam"]),
    ("dpo-steer-inf", f"{DPO} --audit {{audit}} --steer 0:inf", ["--steer"]),
]


@pytest.fixture(scope="module")
def wa(w, smol_tokenizer):
    """`w` plus a finished audit (tiny model, the good pairs) for the shaping flags."""
    pytest.importorskip("anatomist.train.cli")
    from anatomist.audit.run import AuditConfig, run_audit
    from anatomist.data import load_pairs
    from anatomist.models import load
    from anatomist.sae import load_sae

    lm = load(w.tiny)
    folder = Path(w.root) / "audit"
    run_audit(lm.model, lm.tokenizer, load_sae(w.sae), load_pairs(w.good), folder,
              AuditConfig(min_support=2, n_boot=20, n_examples=4, knn=3), progress=False)
    return SimpleNamespace(**vars(w), audit=str(folder))


@pytest.mark.parametrize("name, command, expected", DPO_CASES,
                         ids=[c[0] if isinstance(c, tuple) else c.id for c in DPO_CASES])
def test_bad_shaping_input_gives_one_line_error(wa, tmp_path, name, command, expected):
    test_bad_input_gives_one_line_error(wa, tmp_path, name, command, expected, "absent")


def test_corpus_size(capsys):
    n = len(CASES) + len(DPO_CASES)
    with capsys.disabled():
        print(f"\nbad-input corpus: {n} malformed inputs through anatomist.cli.main ({len(DPO_CASES)} for "
              f"`anatomist dpo`), {len(USAGE)} usage errors, 1 in a real subprocess")
    assert len(CASES) >= 30 and len({c[0] for c in CASES}) == len(CASES)


# Option values typer/click reject before anatomist runs: its own usage message (exit 2), no traceback.
USAGE = [
    ("missing-option", "capture --data {good}", "Missing option '--out'"),
    ("below-min", "capture --data {good} --out {out} --batch-size 0", "--batch-size"),
    ("not-an-int", "sae train --data {store} --k abc", "--k"),
    ("limit-below-min", "data inspect {good} --limit 0", "--limit"),
    ("unknown-command", "nosuch", "No such command 'nosuch'"),
]


@pytest.mark.parametrize("name, command, expected", USAGE, ids=[u[0] for u in USAGE])
def test_usage_errors(w, tmp_path, name, command, expected):
    argv, out = _argv(w, command, tmp_path / "out")
    code, err, _ = run_cli(argv)
    assert code == 2 and "Traceback" not in err and expected in err, err
    assert err.count("\n") == 1 and err.startswith("error: ") and "--help')" in err, err  # one line, with a hint
    assert not out.exists()


def test_debug_shows_the_traceback(w, tmp_path):
    argv, _ = _argv(w, f"--debug {CAP} {{good}} --layer 7", tmp_path / "out")
    code, err, _ = run_cli(argv)
    assert code == 1 and "Traceback" in err and "AnatomistError: layer 7 is out of range" in err


def test_real_process_prints_one_line(w, tmp_path):
    """The same contract from a real `python -m anatomist.cli` (loading a model, then failing):
    nothing else (warnings, progress bars, logging) reaches stderr."""
    argv, out = _argv(w, f"{CAP} {{good}} --layer 7", tmp_path / "out")
    proc = subprocess.run([sys.executable, "-m", "anatomist.cli", *argv], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={**__import__("os").environ, "ANATOMIST_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: layer 7 is out of range"), proc.stderr
    assert not out.exists()
