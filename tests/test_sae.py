"""Unit tests for anatomist.sae: shapes, hand-checked activations, I/O, aux-k, resume."""

from __future__ import annotations

import json

import pytest
import torch

from anatomist.errors import AnatomistError
from anatomist.sae import ARCHITECTURES, SAE, SAEConfig, TrainConfig, load_sae, sae_config, save_sae, train_sae
from anatomist.sae.arch import batchtopk_select, topk_sparse
from anatomist.sae.data import ActivationSource, batches, geometric_median, norm_scale_for
from anatomist.sae.train import aux_k_loss, fvu, parse_width

ARCHS = list(ARCHITECTURES)


def random_sae(arch: str, d_in=6, d_sae=10, k=3, norm_scale=1.0, seed=0) -> SAE:
    g = torch.Generator().manual_seed(seed)
    sae = SAE(SAEConfig(d_in=d_in, d_sae=d_sae, architecture=arch, k=k, norm_scale=norm_scale, layer=2))
    sae.init_weights(g, b_dec=torch.randn(d_in, generator=g), threshold=0.2)
    with torch.no_grad():
        sae.b_enc.copy_(torch.randn(d_sae, generator=g) * 0.1)
        sae.W_enc.add_(torch.randn(d_in, d_sae, generator=g) * 0.3)
    return sae


def sparse_data(n=4000, d=16, n_feats=48, per_token=3, seed=0) -> torch.Tensor:
    """Tokens that are sums of a few of `n_feats` random unit directions, times positive scales."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(n_feats, d, generator=g)
    dirs /= dirs.norm(dim=-1, keepdim=True)
    idx = torch.randint(0, n_feats, (n, per_token), generator=g)
    scale = torch.rand(n, per_token, generator=g) + 0.5
    return (scale[..., None] * dirs[idx]).sum(1) * 3.0 + 1.0                         # [n, d]


@pytest.mark.parametrize("arch", ARCHS)
def test_encode_decode_shapes(arch):
    sae = random_sae(arch)
    x = torch.randn(2, 5, 6)
    f = sae.encode(x)
    assert f.shape == (2, 5, 10) and (f >= 0).all()
    assert sae.decode(f).shape == (2, 5, 6)
    assert sae(x).shape == (2, 5, 6)
    if arch == "topk":
        assert ((f > 0).sum(-1) <= 3).all()


def test_topk_hand_checked():
    # W_enc = I (3 latents = 3 input dims), biases 0: pre = x; k = 2 keeps the 2 largest, then ReLU.
    sae = SAE(SAEConfig(d_in=3, d_sae=3, architecture="topk", k=2))
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(3))
        sae.W_dec.copy_(torch.eye(3) * 2)
    x = torch.tensor([[3.0, -1.0, 2.0], [-5.0, 0.5, -2.0]])
    f = sae.encode(x)
    assert torch.equal(f, torch.tensor([[3.0, 0.0, 2.0], [0.0, 0.5, 0.0]]))  # row 2: 2nd largest is -2 → 0
    assert torch.equal(sae.decode(f), 2 * f)
    # the sparse training form agrees
    lat = topk_sparse(x, 2)
    dense = torch.zeros(2, 3)
    dense[lat.rows, lat.indices] = lat.values
    assert torch.equal(dense, f)


def test_norm_scale_is_applied_in_encode_and_undone_in_decode():
    sae = random_sae("topk", norm_scale=4.0)
    x = torch.randn(7, 6)
    pre = (x * 4.0 - sae.b_dec) @ sae.W_enc + sae.b_enc
    vals, idx = pre.topk(3, dim=-1)
    expected = torch.zeros(7, 10).scatter_(-1, idx, vals.relu())
    torch.testing.assert_close(sae.encode(x), expected)
    torch.testing.assert_close(sae.decode(expected), (expected @ sae.W_dec + sae.b_dec) / 4.0)


def test_batchtopk_keeps_b_times_k_in_the_batch():
    g = torch.Generator().manual_seed(0)
    pre = torch.randn(8, 50, generator=g) + 1.0
    sel = batchtopk_select(pre, k=3)
    assert sel.rows.numel() == 24
    kept = torch.zeros(8, 50)
    kept[sel.rows, sel.cols] = pre[sel.rows, sel.cols]
    # exactly the 24 largest entries of the whole batch
    assert torch.equal(kept[kept > 0].sort().values, pre.flatten().topk(24).values.sort().values)


@pytest.mark.parametrize("arch", ARCHS)
def test_save_load_equal(tmp_path, arch):
    sae = random_sae(arch, norm_scale=0.25)
    save_sae(sae, tmp_path / "s")
    back = load_sae(tmp_path / "s")
    assert back.cfg == sae.cfg
    for name, value in sae.state_dict().items():
        assert torch.equal(back.state_dict()[name], value), name
    raw = json.loads((tmp_path / "s" / "cfg.json").read_text())
    assert raw["architecture"] == ARCHITECTURES[arch].saelens_name
    assert raw["normalize_activations"] == "none"


def test_load_rejects_non_sae_folder(tmp_path):
    with pytest.raises(AnatomistError, match="not an SAE folder"):
        load_sae(tmp_path)


def test_geometric_median_resists_outliers():
    x = torch.cat([torch.zeros(99, 3), torch.full((1, 3), 1000.0)])
    assert geometric_median(x).abs().max() < 1e-2
    assert x.mean(0).abs().max() > 9


def test_norm_scale_is_a_power_of_two_near_sqrt_d_over_norm():
    x = torch.randn(1000, 64) * 30
    s = norm_scale_for(x)
    assert float(torch.log2(torch.tensor(s))).is_integer()
    assert 0.5 < (x * s).pow(2).sum(-1).mean().item() / 64 < 2.0


def test_parse_width():
    assert parse_width("8x", 576) == 4608 and parse_width(1000, 576) == 1000
    with pytest.raises(AnatomistError):
        parse_width("wide", 576)


def test_batches_are_deterministic_and_resume_mid_stream():
    src = ActivationSource(torch.randn(1000, 4))
    kw = dict(batch_size=64, buffer_tokens=300, seed=3, exclude_first=True, max_norm=None)
    full = [x for _, (_, x) in zip(range(40), batches(src, **kw))]   # 40 steps span 2+ epochs
    resumed = [x for _, (_, x) in zip(range(25), batches(src, start_step=15, **kw))]
    for a, b in zip(full[15:], resumed):
        assert torch.equal(a, b)


def test_outliers_excluded_from_store(tmp_path):
    from anatomist.capture import ShardWriter, ActivationStore

    w = ShardWriter(tmp_path / "st", {"model": "m", "layer": 0, "d_model": 4}, shard_rows=10)
    g = torch.Generator().manual_seed(0)
    for s in range(6):
        acts = torch.randn(5, 4, generator=g)
        acts[0] *= 1000  # the attention sink
        w.add(s, str(s), "text", acts=acts, pos=torch.arange(5), token=torch.zeros(5, dtype=torch.long),
              response=torch.ones(5, dtype=torch.bool))
    w.close(6)
    src = ActivationSource(ActivationStore(tmp_path / "st"))
    assert sum(src.kept_counts(True, None)) == 24
    assert sum(src.kept_counts(False, None)) == 30


def test_aux_loss_zero_without_dead_latents():
    pre, err = torch.randn(4, 10), torch.randn(4, 6)
    W = torch.randn(10, 6)
    assert aux_k_loss(pre, err, torch.zeros(10, dtype=torch.bool), W, 4).item() == 0.0
    dead = torch.zeros(10, dtype=torch.bool)
    dead[[1, 2]] = True
    # two dead latents, aux_k=4: both used, scale 2/4
    rec = pre[:, [1, 2]].relu() @ W[[1, 2]]
    expected = 0.5 * (rec - err).pow(2).sum(-1).mean()
    torch.testing.assert_close(aux_k_loss(pre, err, dead, W, 4), expected)


def _dead_latent_setup():
    """4 features e_0..e_3; latents 1-3 are e_1-e_3 with a bias that always beats latent 0,
    whose encoder (0.1·e_0) never wins the top-1: latent 0 is dead by construction."""
    g = torch.Generator().manual_seed(0)
    j = torch.randint(0, 4, (4096,), generator=g)
    x = torch.eye(4)[j] * (1 + 0.5 * torch.rand(4096, 1, generator=g))             # [N, 4]
    sae = SAE(SAEConfig(d_in=4, d_sae=4, architecture="topk", k=1, max_norm=None))
    with torch.no_grad():
        sae.W_enc.copy_(torch.diag(torch.tensor([0.1, 1.0, 1.0, 1.0])))
        sae.b_enc.copy_(torch.tensor([0.0, 1.0, 1.0, 1.0]))
        d0 = torch.tensor([0.5, 0.5, 0.5, 0.5])
        sae.W_dec.copy_(torch.cat([d0[None], torch.eye(4)[1:]]))
    return x, sae


@pytest.mark.parametrize("aux_k", [0, 2])
def test_aux_k_revives_dead_latent(tmp_path, aux_k):
    x, sae = _dead_latent_setup()
    assert (sae.encode(x)[:, 0] == 0).all()
    tc = TrainConfig(tokens=40 * 128, batch_size=128, lr=0.01, warmup_steps=1, decay_frac=0.0, aux_k=aux_k,
                     aux_coeff=1.0, dead_tokens=128, log_every=5, init_tokens=100)
    out = train_sae(x, sae.cfg, tmp_path / "run", train=tc, init=sae, progress=False)
    fires = int((out.encode(x)[:, 0] > 0).sum())
    if aux_k:
        assert fires > 500      # revived: fires on a good part of its e_0 tokens
    else:
        assert fires == 0       # no gradient ever reaches it without aux-k


class _Kill(Exception):
    pass


def test_resume_after_kill_gives_identical_weights(tmp_path):
    x = sparse_data()
    cfg = sae_config(16, width="4x", k=4, architecture="batchtopk")
    tc = TrainConfig(tokens=24 * 200, batch_size=200, lr=3e-3, warmup_steps=2, dead_tokens=400, aux_k=8,
                     checkpoint_every=3, log_every=2, buffer_tokens=1500, init_tokens=1000)
    ref = train_sae(x, cfg, tmp_path / "ref", train=tc, progress=False)

    def kill(step, _metrics):
        if step == 8:
            raise _Kill

    with pytest.raises(_Kill):
        train_sae(x, cfg, tmp_path / "run", train=tc, progress=False, on_step=kill)
    assert (tmp_path / "run" / "checkpoint.pt").is_file()
    resumed = train_sae(x, cfg, tmp_path / "run", train=tc, progress=False)
    for name, value in ref.state_dict().items():
        assert torch.equal(resumed.state_dict()[name], value), name
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
    h_ref = json.loads((tmp_path / "ref" / "training.json").read_text())["history"]
    h_run = json.loads((tmp_path / "run" / "training.json").read_text())["history"]
    assert [h["fvu"] for h in h_ref] == [h["fvu"] for h in h_run]


@pytest.mark.parametrize("arch", ARCHS)
def test_training_reduces_fvu_and_keeps_decoder_unit_norm(tmp_path, arch):
    x = sparse_data()
    cfg = sae_config(16, width="4x", k=4, architecture=arch)
    tc = TrainConfig(tokens=60 * 200, batch_size=200, lr=3e-3, warmup_steps=2, dead_tokens=2000, aux_k=8,
                     log_every=5, init_tokens=1000, l1_coeff=0.05, l0_coeff=0.05, threshold_init=0.5)
    sae = train_sae(x, cfg, tmp_path / arch, train=tc, progress=False)
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(64))
    with torch.no_grad():
        assert fvu(x, sae(x)).item() < 0.32
    summary = json.loads((tmp_path / arch / "training.json").read_text())
    assert summary["complete"] and {"fvu", "l0", "dead_frac"} <= set(summary["final"])
    if arch == "batchtopk":   # the calibrated inference threshold gives about k active latents too
        l0 = (sae.encode(x) > 0).sum(-1).float().mean().item()
        assert 3.5 <= l0 <= 4.5


def test_finished_run_returns_saved_sae_without_training(tmp_path):
    x = sparse_data(n=1000)
    cfg = sae_config(16, width=32, k=2, architecture="topk")
    tc = TrainConfig(tokens=1000, batch_size=100, init_tokens=200)
    a = train_sae(x, cfg, tmp_path / "r", train=tc, progress=False)
    mtime = (tmp_path / "r" / "sae_weights.safetensors").stat().st_mtime_ns
    b = train_sae(x, cfg, tmp_path / "r", train=tc, progress=False)
    assert (tmp_path / "r" / "sae_weights.safetensors").stat().st_mtime_ns == mtime
    assert torch.equal(a.W_enc, b.W_enc)


def test_wrong_width_data_is_a_user_error(tmp_path):
    with pytest.raises(AnatomistError, match="d_in"):
        train_sae(torch.randn(100, 8), sae_config(16, width=32, k=2), tmp_path / "r", progress=False)


# --- evaluation -------------------------------------------------------------------------------

class _CharTokenizer:
    """Enough of a HF tokenizer for encode_response: a chat template and char-level ids."""

    chat_template = "plain"
    eos_token, eos_token_id, pad_token_id = "\x03", 3, 0
    name_or_path = "chars"

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        text = "".join(f"<{m['role']}>{m['content']}\x03" for m in messages)
        return text + ("<assistant>" if add_generation_prompt else "")

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) % 120 + 4 for c in text]}


def _identity_sae(d: int, layer: int) -> SAE:
    """relu([x, −x]) decoded by [I; −I] reconstructs x exactly."""
    sae = SAE(SAEConfig(d_in=d, d_sae=2 * d, architecture="relu", k=1, layer=layer))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye], 0))
    return sae


def test_ce_recovered_is_one_for_a_perfect_sae_and_activation_metrics():
    from conftest import tiny_llama

    from anatomist.capture import CaptureItem
    from anatomist.sae import evaluate_sae

    model = tiny_llama(layers=3)
    items = [CaptureItem(str(i), "text", ({"role": "user", "content": "hi there " * (i + 1)},), "fine " * (i + 2))
             for i in range(3)]
    sae = _identity_sae(32, layer=1)
    res = evaluate_sae(sae, torch.randn(500, 32), model=model, tokenizer=_CharTokenizer(), items=items,
                       batch_size=2, progress=False)
    assert res["fvu"] < 1e-10 and res["dead_frac"] == 0.0 and res["n_tokens"] == 500
    assert abs(res["ce_sae"] - res["ce_clean"]) < 1e-5
    assert abs(res["ce_recovered"] - 1.0) < 1e-4
    # a useless SAE (zero decoder) recovers what zero ablation does, up to b_dec = 0
    with torch.no_grad():
        sae.W_dec.zero_()
    res = evaluate_sae(sae, model=model, tokenizer=_CharTokenizer(), items=items, progress=False)
    assert abs(res["ce_recovered"]) < 1e-4


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_sparse_training_path_matches_dense_autograd(arch):
    """The sparse forward/backward (gather + sparse matmul) equals plain autograd on dense tensors."""
    from anatomist.sae.train import forward_loss

    sae = random_sae(arch, d_in=6, d_sae=20, k=3)
    x = torch.randn(32, 6, generator=torch.Generator().manual_seed(5)) * 2
    dead = torch.zeros(20, dtype=torch.bool)
    dead[[0, 3, 7, 11, 19]] = True
    tc = TrainConfig(aux_k=4, aux_coeff=0.5)
    loss, *_ = forward_loss(sae, x, dead, tc)
    loss.backward()
    fast = {n: p.grad.clone() for n, p in sae.named_parameters()}
    sae.zero_grad()
    pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc                                    # [B, F]
    sel = sae.arch.select(pre.detach(), 3)
    mask = torch.zeros(32, 20)
    mask[sel.rows, sel.cols] = 1.0
    x_hat = (pre.relu() * mask) @ sae.W_dec + sae.b_dec
    err = x - x_hat
    ref = err.pow(2).sum(-1).mean() + 0.5 * aux_k_loss(pre, err.detach(), dead, sae.W_dec, 4)
    ref.backward()
    torch.testing.assert_close(loss, ref)
    for n, p in sae.named_parameters():
        torch.testing.assert_close(fast[n], p.grad, rtol=1e-4, atol=1e-5, msg=n)


# --- CLI --------------------------------------------------------------------------------------

def _tiny_store(folder, n_seq=40, T=30, d=16):
    from anatomist.capture import ShardWriter

    x = sparse_data(n=n_seq * T, d=d)
    w = ShardWriter(folder, {"model": "tiny", "layer": 1, "d_model": d}, shard_rows=300)
    for s in range(n_seq):
        acts = x[s * T:(s + 1) * T].clone()
        acts[0] *= 500.0  # attention sink
        w.add(s, str(s), "text", acts=acts, pos=torch.arange(T), token=torch.zeros(T, dtype=torch.long),
              response=torch.ones(T, dtype=torch.bool))
    w.close(n_seq)
    return folder


def test_cli_train_resume_and_eval_on_a_store(tmp_path):
    from typer.testing import CliRunner

    from anatomist.sae.cli import app, parse_count

    assert parse_count("2M") == 2_000_000 and parse_count("500k") == 500_000 and parse_count("1e4") == 10_000
    store = _tiny_store(tmp_path / "acts")
    args = ["train", "--data", str(store), "--out", str(tmp_path / "sae"), "--tokens", "6K", "--width", "4x",
            "--k", "4", "--batch-size", "200", "--aux-k", "8", "--lr", "3e-3"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "SAELens format" in res.output
    sae = load_sae(tmp_path / "sae")
    assert sae.cfg.layer == 1 and sae.cfg.model == "tiny" and sae.cfg.exclude_first_token
    res = CliRunner().invoke(app, args)          # finished: returns at once, same weights
    assert res.exit_code == 0 and torch.equal(load_sae(tmp_path / "sae").W_enc, sae.W_enc)
    res = CliRunner().invoke(app, ["eval", str(tmp_path / "sae"), "--data", str(store), "--ce-sequences", "0",
                                   "--json"])
    assert res.exit_code == 0, res.output
    metrics = json.loads(res.output)
    assert metrics["n_tokens"] == 40 * 29 and metrics["fvu"] < 0.9 and metrics["l0"] > 0


def test_cli_rejects_bad_token_count():
    from anatomist.sae.cli import parse_count

    with pytest.raises(AnatomistError, match="count"):
        parse_count("lots")


# --- the real default model (slow) ------------------------------------------------------------

@pytest.mark.slow
def test_real_model_capture_train_evaluate(tmp_path, smol, shared_data):
    from anatomist.capture import capture, items_from_pairs
    from anatomist.data import load_pairs
    from anatomist.sae import evaluate_sae

    pairs = list(load_pairs(shared_data / "hh-rlhf-harmless-base-test-dev.jsonl.gz", on_bad_row="skip"))
    train_items, held = items_from_pairs(pairs[:24]), items_from_pairs(pairs[-3:])
    store = capture(smol.model, smol.tokenizer, train_items, tmp_path / "acts", 15, max_length=128, progress=False)
    cfg = sae_config(576, width="2x", k=16, architecture="batchtopk", model="smollm2-135m-instruct", layer=15)
    tc = TrainConfig(tokens=40_000, batch_size=1024, lr=2e-3, dead_tokens=10_000, init_tokens=2000)
    sae = train_sae(store, cfg, tmp_path / "sae", train=tc, progress=False)
    assert sae.cfg.max_norm is not None and sae.cfg.norm_scale < 1   # residual norms here are ~170
    res = evaluate_sae(load_sae(tmp_path / "sae"), store, model=smol.model, tokenizer=smol.tokenizer, items=held,
                       max_length=128, progress=False)
    assert res["fvu"] < 0.5 and 8 < res["l0"] < 32
    assert res["ce_zero"] > res["ce_sae"] > res["ce_clean"] - 0.05
    assert res["ce_recovered"] > 0.3


# --- default recipe plumbing (no model) -------------------------------------------------------

def test_recipe_items_train_and_heldout_are_disjoint(shared_data):
    from anatomist.sae.default import DEFAULT_RECIPE, recipe_items

    train = recipe_items(DEFAULT_RECIPE, "train", shared_data)
    held = recipe_items(DEFAULT_RECIPE, "heldout", shared_data)
    assert len(train) == 2 * sum(DEFAULT_RECIPE.train_pairs)
    assert {it.id for it in train}.isdisjoint({it.id for it in held})
    assert {it.side for it in held} == {"chosen", "rejected"} and len(held) > 300


def test_default_sae_returns_cached_path_without_loading_a_model(tmp_path, monkeypatch):
    from anatomist.sae.default import DEFAULT_RECIPE, default_sae

    monkeypatch.setenv("ANATOMIST_CACHE", str(tmp_path))
    out = tmp_path / "sae" / "some-model" / DEFAULT_RECIPE.key("some-model")
    save_sae(random_sae("batchtopk"), out)
    (out / "training.json").write_text("{}")
    assert default_sae("some-model") == out      # would fail loading "some-model" if it tried to train
