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
    with pytest.raises(AnatomistError, match="aux_layers"):
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


# ---- the EAGLE-3 head as a drafter and a trainee: same code paths as the MTP head ----------------

def _eagle_for(m, seed=1, draft_vocab=0):
    torch.manual_seed(seed)
    vocab = torch.arange(draft_vocab) if draft_vocab else None
    h = Eagle3Head(m, Eagle3Config(gamma=3, aux_layers=[0, 1]), vocab_ids=vocab)
    with torch.no_grad():  # a random (untrained) head, still a valid drafter
        for p in h.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return h.eval()


def test_eagle3_drafting_cache_matches_training_forward(one_thread):
    """Drafting (packed states from generate's trunk pass, the head's own cache) gives the
    teacher-forced depth-1 and depth-2 logits of forward_train."""
    from anatomist.spec_decode.drafters import MTPDrafter
    from anatomist.spec_decode.generate import generate
    from tests.test_spec_generate import tiny

    m = tiny(vocab=16, scale=5.0)
    head = _eagle_for(m)
    prompt = [1, 2, 3, 4, 5, 6]
    out = generate(m, [prompt], drafter=MTPDrafter(head), gamma=2, temperature=0.0, max_new_tokens=12)
    seq = torch.tensor([prompt + out.tokens[0]])
    with torch.no_grad():
        packed = pack_states(m.model(seq, output_hidden_states=True).hidden_states, [0, 1])
        ql = head.forward_train(packed, seq, gamma=2)
        d = MTPDrafter(head)
        d.reset(1)
        t = len(prompt) + 3
        d.observe(packed[:, :t], seq[:, 1:t + 1], torch.ones(1, t, dtype=torch.bool))
        assert torch.allclose(head.logits(d.g_last), ql[0, t - 1, 0], atol=1e-4)
        pos, mask = d.kv.append(torch.ones(1, 1, dtype=torch.bool), packed.dtype)
        g2 = head.step(d.g_last[:, None], seq[:, t + 1:t + 2], pos, mask, d.kv.cache)
        assert torch.allclose(head.logits(g2[:, 0]), ql[0, t - 1, 1], atol=1e-4)


@pytest.mark.parametrize("mode,sampling", [("rs", dict(temperature=1.0)), ("rs", dict(temperature=1.3, top_k=2))])
def test_eagle3_speculative_equals_plain(mode, sampling, one_thread):
    """Lossless with a reduced draft vocabulary (3 of 4 tokens: q = 0 on token 3, which the
    verifier can still emit through the residual): the pooled χ² test of test_spec_generate.
    Seed 5: a random head that is accepted often enough (α ≈ 0.5) to hit every verifier branch."""
    from anatomist.spec_decode.drafters import MTPDrafter
    from tests.test_spec_generate import ALPHA, assert_verifier_exercised, lossless_pvalue, tiny

    m = tiny(vocab=4, scale=40.0)
    p, stats = lossless_pvalue(m, MTPDrafter(_eagle_for(m, seed=5, draft_vocab=3)), mode, **sampling)
    assert_verifier_exercised(stats)
    assert p > ALPHA, p


def test_eagle3_trains_saves_and_loads(tmp_path, one_thread):
    """The TV loss lowers on a tiny run; the saved folder loads back as an Eagle3Head with the
    same draft logits; the mtp format refuses it in one line."""
    from anatomist.spec_decode.export_eagle3 import EXPORT_FORMATS
    from anatomist.spec_decode.heads import load_any_head
    from anatomist.spec_decode.train import TrainConfig, self_samples, train_head

    from tests.test_spec_generate import tiny

    m = tiny(vocab=48, scale=5.0)  # sharp p, so there is something to learn
    samples = self_samples(m, [[1, 2, 3, 4], [5, 6, 7], [8, 9, 10, 11, 12], [13, 14]], temperature=1.0,
                           max_new_tokens=12, batch_size=2, seed=0)
    seqs = samples.sequences
    cfg = TrainConfig(loss="tv", gamma=2, steps=40, batch_size=4, lr=3e-3, warmup=2, draft_vocab=0, head="eagle3")
    head = train_head(m, samples, cfg, tmp_path / "h", progress=False)
    assert head.config.aux_layers == [0, 1]  # EAGLE-3's default ids, clamped for a 2-layer trunk
    first = sum(h["mtp/loss"] for h in head.history[:5]) / 5
    last = sum(h["mtp/loss"] for h in head.history[-5:]) / 5
    a_first, a_last = head.history[0]["mtp/alpha_1"], sum(h["mtp/alpha_1"] for h in head.history[-5:]) / 5
    assert last < 0.9 * first and a_last > a_first + 0.02, (first, last, a_first, a_last)
    back = load_any_head(tmp_path / "h", m)
    assert isinstance(back, Eagle3Head) and back.state_layers == head.state_layers
    ids = torch.tensor([seqs[0]])
    with torch.no_grad():
        packed = pack_states(m.model(ids, output_hidden_states=True).hidden_states, back.state_layers)
        assert torch.allclose(back.forward_train(packed, ids, 2), head.forward_train(packed, ids, 2), atol=1e-6)
    with pytest.raises(AnatomistError, match="--format eagle3"):
        EXPORT_FORMATS["mtp"](back, m, tmp_path / "x", verifier="v")
    out = EXPORT_FORMATS["eagle3"](back, m, tmp_path / "e3", verifier="v", dtype=torch.bfloat16)
    from safetensors.torch import load_file

    st = load_file(str(out / "model.safetensors"))
    readme = (out / "README.md").read_text()
    assert '"draft_sample_method": "probabilistic"' in readme and "--speculative-use-rejection-sampling" in readme
    assert "--speculative-num-draft-tokens 3 " in readme and " \\\n" in readme  # γ = 2, lines continue
    assert st["fc.weight"].dtype == torch.bfloat16 and st["t2d"].dtype == torch.bool and st["d2t"].dtype == torch.long


def test_export_cli_refuses_unknown_format(tmp_path):
    from typer.testing import CliRunner

    from anatomist.spec_decode.cli import app

    res = CliRunner().invoke(app, ["export", str(tmp_path), "--out", str(tmp_path / "o"), "--format", "eagle1"])
    assert res.exit_code != 0 and "--format must be one of mtp, eagle3" in str(res.exception)
