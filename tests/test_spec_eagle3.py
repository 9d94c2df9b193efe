"""EAGLE-3 draft head: speculators' own Eagle3DraftModel, built from our export, gives our draft
logits at every depth; d2t/t2d map the reduced vocabulary; other heads are refused."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from anatomist.errors import AnatomistError
from anatomist.spec_decode.eagle3 import Eagle3Config, Eagle3Head, pack_states
from anatomist.spec_decode.export_eagle3 import eagle3_state, export_eagle3
from anatomist.spec_decode.head import MTPConfig, MTPHead
from tests.conftest import tiny_llama


def _random_eagle(trunk, vocab_ids, seed=3):
    head = Eagle3Head(trunk, Eagle3Config(gamma=3, aux_layers=[0, 1, 2]), vocab_ids=vocab_ids)
    torch.manual_seed(seed)
    with torch.no_grad():  # random weights, so a wrong mapping cannot pass by the init's symmetry
        for p in head.parameters():
            p.copy_(torch.randn_like(p) * 0.3 + (1.0 if p.dim() == 1 else 0.0))
    return head.eval()


def test_d2t_t2d_hand_values():
    trunk = tiny_llama(vocab_size=16)
    head = Eagle3Head(trunk, Eagle3Config(aux_layers=[0]), vocab_ids=torch.tensor([3, 0, 7]))
    st = eagle3_state(head)
    assert st["d2t"].tolist() == [3, -1, 5]  # draft d → target d + d2t[d] = 3, 0, 7
    assert st["t2d"].nonzero().flatten().tolist() == [0, 3, 7]
    assert st["lm_head.weight"].shape == (3, 32) and st["fc.weight"].shape == (32, 32)
    assert st["layers.0.self_attn.q_proj.weight"].shape[1] == 64  # reads [emb; hidden]


def test_refuses_non_eagle_head(tmp_path):
    trunk = tiny_llama()
    with pytest.raises(AnatomistError, match="--head eagle3"):
        export_eagle3(MTPHead(trunk, MTPConfig()), trunk, tmp_path, verifier="x")
    with pytest.raises(ValueError, match="aux_layers"):
        Eagle3Head(trunk, Eagle3Config(aux_layers=[4]))  # layer L is post-norm: vLLM never collects it


@pytest.mark.parametrize("depths", [1, 2, 3])
def test_speculators_eagle3_reader_reproduces_logits(tmp_path, one_thread, depths):
    lib = Path(__file__).resolve().parents[1] / ".venv-speculators"
    if lib.is_dir() and str(lib) not in sys.path:
        sys.path.append(str(lib))
    pytest.importorskip("speculators")
    from speculators.models.eagle3.core import Eagle3DraftModel

    trunk = tiny_llama()
    trunk.config._attn_implementation = "eager"
    trunk.save_pretrained(tmp_path / "verifier")
    vocab = torch.randperm(128, generator=torch.Generator().manual_seed(1))[:40]
    head = _random_eagle(trunk, vocab)
    out = export_eagle3(head, trunk, tmp_path / "draft", verifier=str(tmp_path / "verifier"))
    spec = Eagle3DraftModel.from_pretrained(str(out), attn_implementation="eager").eval()
    from speculators.models.attention import create_float_mask

    spec.config.transformer_layer_config._attn_implementation = "eager"  # CPU: dense masks, not flex
    spec._attn_impl, spec._create_mask_fn = "eager", create_float_mask
    with torch.no_grad():
        spec.embed_tokens.weight.copy_(trunk.get_input_embeddings().weight)
    assert spec.d2t.tolist() == (vocab - torch.arange(40)).tolist()
    ids = torch.randint(0, 128, (1, 10), generator=torch.Generator().manual_seed(2))
    T = ids.shape[1]
    with torch.no_grad():
        hs = trunk.model(input_ids=ids, output_hidden_states=True).hidden_states
        packed = pack_states(hs, head.config.aux_layers)  # [1, T, 4H]
        aux = packed[..., 32:]
        ours = head.forward_train(packed, ids, depths)  # [1, T, γ, V']
        captured = []
        orig = spec.lm_head.forward
        spec.lm_head.forward = lambda x: captured.append(orig(x)) or captured[-1]
        # speculators pairs aux state i with input_ids[i]; ours with x_{i+1}: shift the ids
        shifted = torch.cat([ids[:, 1:], ids.new_zeros(1, 1)], dim=1)
        spec(hidden_states=aux, input_ids=shifted, document_ids=torch.zeros_like(ids), ttt_steps=depths)
    for k in range(depths):  # their step k at position i predicts x_{i+k+1}, valid for i < T−k
        theirs = captured[k][0, : T - k - 1]
        assert torch.allclose(theirs, ours[0, : T - k - 1, k], atol=1e-4), (k, (theirs - ours[0, :T - k - 1, k]).abs().max())
