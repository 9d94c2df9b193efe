"""MTP head: gradients reach the head only, save → load, resumable training."""

import pytest
import torch

from anatomist.errors import AnatomistError
from anatomist.spec_decode.head import MTPConfig, MTPHead, load_head, save_head
from anatomist.spec_decode.train import Samples, TrainConfig, head_loss, self_samples, train_head, trunk_states

pytestmark = pytest.mark.usefixtures("one_thread")



def tiny(vocab=48, seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def model_and_samples():
    m = tiny()
    prompts = [[1, 2, 3, 4], [5, 6, 7], [8, 9, 10, 11, 12], [13, 14]]
    s = self_samples(m, prompts, temperature=1.0, max_new_tokens=12, batch_size=2, seed=0)
    return m, s


@pytest.mark.parametrize("loss", ["ce", "kl", "tv", "e2e_tv"])
def test_gradient_reaches_head_only(model_and_samples, loss):
    m, s = model_and_samples
    for p in m.parameters():
        p.requires_grad_(True)  # even a trainable trunk must get nothing
    head = MTPHead(m, MTPConfig(gamma=3, draft_vocab=20), vocab_ids=torch.arange(0, 40, 2))
    from anatomist.spec_decode.train import head_batch, target_stats

    states = trunk_states(m, s.sequences)
    batch = head_batch(states, target_stats(m, states), s, [0, 1, 2], 3, 4, torch.Generator().manual_seed(0))
    value, metrics = head_loss(head, *batch, loss, 3)
    value.backward()
    assert all(p.grad is None for p in m.parameters())
    assert all(p.grad is not None for p in head.parameters())
    assert {"mtp/alpha_1", "mtp/tv_3", "mtp/ce_2", "mtp/policy_entropy"} <= set(metrics)
    for p in m.parameters():
        p.requires_grad_(False)


def test_save_load_roundtrip(tmp_path, model_and_samples):
    m, _ = model_and_samples
    head = MTPHead(m, MTPConfig(gamma=2, draft_vocab=10, loss="tv"), vocab_ids=torch.arange(10, 20))
    with torch.no_grad():
        for p in head.parameters():
            p.add_(torch.randn_like(p))
    save_head(head, tmp_path / "h")
    back = load_head(tmp_path / "h", m)
    assert back.config == head.config
    sa, sb = head.trainable_state(), back.trainable_state()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not any(k.startswith(("_embed", "_lm")) for k in sa)  # the trunk's weights are not saved
    h, tok = torch.randn(1, 5, 32), torch.randint(0, 48, (1, 5))
    assert torch.equal(head.forward_train(h, tok, 2), back.forward_train(h, tok, 2))
    with pytest.raises(AnatomistError):
        load_head(tmp_path / "missing", m)


def test_resume_gives_identical_weights(tmp_path, model_and_samples):
    m, s = model_and_samples
    cfg = TrainConfig(loss="e2e_tv", gamma=2, steps=6, batch_size=2, lr=1e-2, warmup=2, draft_vocab=30,
                      ckpt_every=2)
    states = trunk_states(m, s.sequences)
    full = train_head(m, s, cfg, tmp_path / "a", states=states, progress=False)
    train_head(m, s, cfg, tmp_path / "b", states=states, progress=False, stop_after=3)  # "interrupted"
    assert not (tmp_path / "b" / "config.json").exists() and (tmp_path / "b" / "checkpoint.pt").exists()
    resumed = train_head(m, s, cfg, tmp_path / "b", states=states, progress=False)
    a, b = full.trainable_state(), resumed.trainable_state()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h["mtp/loss"] for h in full.history] == [h["mtp/loss"] for h in resumed.history]
    loaded = load_head(tmp_path / "b", m)
    assert torch.equal(loaded.vocab_ids, full.vocab_ids)
    with pytest.raises(AnatomistError, match="different config"):
        train_head(m, s, TrainConfig(loss="tv", gamma=2, steps=6), tmp_path / "b", states=states, progress=False)


def test_training_raises_acceptance(model_and_samples, tmp_path):
    """A few dozen steps of TV training move α₁ up on the model's own samples."""
    m, s = model_and_samples
    cfg = TrainConfig(loss="tv", gamma=2, steps=40, batch_size=4, lr=3e-3, warmup=2, draft_vocab=0, ckpt_every=40)
    head = train_head(m, s, cfg, tmp_path / "t", progress=False)
    first, last = head.history[0]["mtp/alpha_1"], sum(h["mtp/alpha_1"] for h in head.history[-5:]) / 5
    assert last > first + 0.02, (first, last)


def test_train_config_validates():
    with pytest.raises(AnatomistError):
        TrainConfig(loss="mse")
    with pytest.raises(AnatomistError):
        TrainConfig(gamma=0)


def test_samples_shape(model_and_samples):
    _, s = model_and_samples
    assert isinstance(s, Samples) and len(s.sequences) == 4
    assert all(len(q) - p == 12 for q, p in zip(s.sequences, s.prompt_lens))


def test_chain_subset_equals_full_and_lse_targets(model_and_samples):
    """Drafting a subset of chains gives the same states as all chains; p from the cached lse
    equals the softmax of the full LM head restricted to the draft vocabulary."""
    from anatomist.spec_decode.train import head_batch, target_stats

    m, s = model_and_samples
    head = MTPHead(m, MTPConfig(gamma=3, draft_vocab=20), vocab_ids=torch.arange(0, 40, 2)).eval()
    states = trunk_states(m, s.sequences)
    stats = target_stats(m, states)
    h, tok, st, chains, valid = head_batch(states, stats, s, [0, 2], 3, 5, torch.Generator().manual_seed(1))
    assert valid.sum() == 10 and chains.shape == (2, 5)
    with torch.no_grad():
        full = head.chain_states(h, tok, 3)  # [B, T, γ, H]
        sub = head.chain_states(h, tok, 3, chains)  # [B, C, γ, H]
        assert torch.allclose(sub, full[torch.arange(2)[:, None], chains], atol=1e-5)
        z = m.lm_head(h[0, 5]).float()
        assert torch.allclose(torch.exp(m.lm_head(h[0, 5]).float()[head.vocab_ids] - st[0, 5, 0]),
                              torch.softmax(z, -1)[head.vocab_ids], atol=1e-6)
        p = torch.softmax(z, -1)
        assert float(st[0, 5, 1]) == pytest.approx(float(-(p * p.log()).sum()), abs=1e-5)


def test_cached_head_trains_under_a_callers_no_grad(tmp_path, monkeypatch, model_and_samples):
    """Benchmarks and the GRPO CLI sample under no_grad; the head they ask for must still train."""
    from anatomist.spec_decode.pipeline import cached_head

    monkeypatch.setenv("ANATOMIST_CACHE", str(tmp_path))
    m, s = model_and_samples
    cfg = TrainConfig(loss="e2e_tv", gamma=2, steps=3, batch_size=2, draft_vocab=0)
    with torch.no_grad():
        head, folder = cached_head(m, s, cfg, model_name="tiny", eos_token_id=None)
        again, same = cached_head(m, s, cfg, model_name="tiny", eos_token_id=None)  # loaded, not retrained
    assert same == folder and len(head.history) == 3 and not hasattr(again, "history")
    assert all(torch.equal(a, b) for a, b in zip(head.trainable_state().values(), again.trainable_state().values()))


def test_training_a_head_hands_the_trunk_back_trainable(tmp_path):
    """The trunk is frozen only while the head trains: a process that trains the model next (GRPO
    after its head, grpo_step.py) gets back the flags it had, frozen ones too."""
    m = tiny(seed=3)
    m.model.layers[0].requires_grad_(False)                       # the caller's own choice stays
    before = {n: p.requires_grad for n, p in m.named_parameters()}
    s = self_samples(m, [[1, 2, 3], [4, 5, 6, 7]], temperature=1.0, max_new_tokens=6, batch_size=2, seed=0)
    train_head(m, s, TrainConfig(loss="tv", gamma=2, steps=2, batch_size=2, draft_vocab=8), tmp_path / "h",
               progress=False)
    assert {n: p.requires_grad for n, p in m.named_parameters()} == before
    assert not all(before.values()) and any(before.values())
