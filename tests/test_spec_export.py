"""Export of MTP heads in the speculators "mtp" format: names, config, exact round trip, and (where
the `speculators` package is installed) its own reader and model agree with our head."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from anatomist.errors import AnatomistError
from anatomist.spec_decode.export import export_speculators, load_speculators
from anatomist.spec_decode.head import MTPConfig, MTPHead
from tests.conftest import tiny_llama

# Tensor names of speculators 0.9.0 `MTPDraftModel` for one layer (written from the format, not
# from our mapping): the decoder layer's own weights plus the four MTP additions.
SPEC_NAMES_LLAMA = {f"mtp_layers.0.{n}.weight" for n in (
    "hidden_layernorm", "token_layernorm", "input_proj", "final_layernorm", "input_layernorm",
    "post_attention_layernorm", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")}


def _random_head(trunk, gamma=3, seed=0, vocab_ids=None):
    head = MTPHead(trunk, MTPConfig(gamma=gamma, loss="e2e_tv", base_model="tiny"), vocab_ids=vocab_ids)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # break the symmetric [I I]/2 init so a wrong column order shows
        for p in head.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return head.eval()


def test_export_names_config_and_exact_round_trip(tmp_path, one_thread):
    trunk = tiny_llama(seed=3)
    head = _random_head(trunk)
    out = export_speculators(head, trunk, tmp_path / "draft", verifier="org/tiny-llama")
    from safetensors.torch import load_file

    state = load_file(str(out / "model.safetensors"))
    assert set(state) == SPEC_NAMES_LLAMA
    H = trunk.config.hidden_size
    # speculators' input_proj reads [embedding; hidden]; ours reads [hidden; embedding].
    assert torch.equal(state["mtp_layers.0.input_proj.weight"][:, :H], head.fuse.weight[:, H:])
    assert torch.equal(state["mtp_layers.0.hidden_layernorm.weight"], head.norm_h.weight)
    assert torch.equal(state["mtp_layers.0.token_layernorm.weight"], head.norm_e.weight)
    assert torch.equal(state["mtp_layers.0.final_layernorm.weight"], head.norm.weight)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["speculators_model_type"] == "mtp" and cfg["architectures"] == ["MTPDraftModel"]
    assert cfg["num_nextn_predict_layers"] == 1
    sc = cfg["speculators_config"]
    assert sc["algorithm"] == "mtp" and sc["default_proposal_method"] == "greedy"
    assert sc["proposal_methods"][0] == {"proposal_type": "greedy", "speculative_tokens": 3,
                                         "accept_tolerance": 0.0, "verifier_accept_k": 1}
    assert sc["verifier"] == {"name_or_path": "org/tiny-llama", "architectures": ["LlamaForCausalLM"]}
    tl = cfg["transformer_layer_config"]
    assert tl["model_type"] == "llama" and tl["hidden_size"] == H and tl["vocab_size"] == 128
    readme = (out / "README.md").read_text()
    assert "--speculative-algorithm NEXTN" in readme and "--speculative-use-rejection-sampling" in readme
    assert '"draft_sample_method": "probabilistic"' in readme and "OUT" not in readme

    back = load_speculators(out, trunk)
    hidden = torch.randn(2, 7, H)
    tokens = torch.randint(0, 128, (2, 7))
    with torch.no_grad():
        assert torch.equal(back.forward_train(hidden, tokens, 3), head.forward_train(hidden, tokens, 3))


def test_reduced_vocab_head_exports_full_vocab(tmp_path, one_thread):
    trunk = tiny_llama(seed=1)
    head = _random_head(trunk, vocab_ids=torch.arange(0, 128, 2))
    out = export_speculators(head, trunk, tmp_path, verifier="x")
    back = load_speculators(out, trunk)
    assert back.full_vocab and json.loads((out / "config.json").read_text())["anatomist"]["trained_draft_vocab"] == 64
    h, t = torch.randn(1, 5, 32), torch.randint(0, 128, (1, 5))
    with torch.no_grad():  # same head states; only the vocabulary of q differs
        assert torch.equal(back.chain_states(h, t, 3), head.chain_states(h, t, 3))


def test_reader_rejects_mismatch(tmp_path, one_thread):
    out = export_speculators(_random_head(tiny_llama()), tiny_llama(), tmp_path, verifier="x")
    with pytest.raises(AnatomistError, match="hidden_size"):
        load_speculators(out, tiny_llama(hidden_size=48))
    cfg = json.loads((out / "config.json").read_text())
    cfg["speculators_model_type"] = "eagle3"
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(AnatomistError, match="speculators_model_type"):
        load_speculators(out, tiny_llama())
    (out / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(AnatomistError, match="unreadable"):
        load_speculators(out, tiny_llama())


def test_speculators_own_reader_and_model(tmp_path, one_thread):
    """With the real `speculators` package (not a project dependency; `make test` puts it in
    .venv-speculators): its config reader parses our export, and on a Qwen3 trunk (the family its
    MTPDraftModel builds) its model loads our weights and gives our depth-1 draft logits."""
    lib = Path(__file__).resolve().parents[1] / ".venv-speculators"
    if lib.is_dir() and str(lib) not in sys.path:
        sys.path.append(str(lib))  # appended: .venv's own packages keep precedence
    pytest.importorskip("speculators")
    from speculators.models.mtp.config import MTPSpeculatorConfig
    from speculators.models.mtp.core import MTPDraftModel
    from transformers import Qwen3Config, Qwen3ForCausalLM

    llama = tiny_llama()
    out = export_speculators(_random_head(llama), llama, tmp_path / "llama", verifier="org/tiny")
    cfg = MTPSpeculatorConfig.from_pretrained(str(out))
    assert cfg.num_speculative_steps == 3 and cfg.transformer_layer_config.model_type == "llama"

    torch.manual_seed(0)
    qcfg = Qwen3Config(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=8, tie_word_embeddings=False,
                       attn_implementation="eager")
    trunk = Qwen3ForCausalLM(qcfg).eval()
    trunk.save_pretrained(tmp_path / "verifier")
    head = _random_head(trunk, seed=5)
    out = export_speculators(head, trunk, tmp_path / "qwen3", verifier=str(tmp_path / "verifier"))
    spec = MTPDraftModel.from_pretrained(str(out)).eval()
    ids = torch.randint(0, 128, (1, 9))
    with torch.no_grad():
        h = trunk.model(input_ids=ids).last_hidden_state  # [1, 9, H]
        theirs = spec(input_ids=ids, hidden_states=h)[0][0]  # step 0: logits [1, 9 − γ − 1, V]
        ours = head.forward_train(h, ids, 1)[:, :, 0]  # depth 1 at every position [1, 9, V]
    n = theirs.shape[1]
    assert torch.allclose(theirs, ours[:, :n], atol=1e-4), (theirs - ours[:, :n]).abs().max()


def test_mtp_export_cli_help():
    from typer.testing import CliRunner

    from anatomist.spec_decode.cli import app

    res = CliRunner().invoke(app, ["export", "--help"])
    assert res.exit_code == 0 and "speculators" in res.output and "--verifier" in res.output
