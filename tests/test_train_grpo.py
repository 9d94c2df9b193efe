"""GRPO: hand-computed advantages / loss, verifier log-probs == plain forward, resume equality, rewards."""

from __future__ import annotations

import json
import math
from fractions import Fraction

import pytest
import torch

from anatomist.errors import AnatomistError
from anatomist.spec_decode.drafters import MTPDrafter
from anatomist.spec_decode.generate import generate
from anatomist.spec_decode.head import MTPConfig, MTPHead
from anatomist.train.grpo import (
    GRPOConfig,
    group_advantages,
    grpo_loss,
    response_logprobs,
    train_grpo,
)
from anatomist.tasks.arithmetic import KINDS, extract_answer, make_problems, score
from tests.conftest import REPO, tiny_llama


class CharTokenizer:
    """Character-level stand-in for a chat tokenizer (tiny random models have no real one)."""

    chat_template = "user/assistant"
    eos_token_id = 1
    eos_token = "\x01"

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        return "U:" + messages[-1]["content"][:24] + "\nA:"

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [2 + ord(c) % 100 for c in text]}

    def decode(self, ids, skip_special_tokens=True):
        return "".join(chr(33 + i % 90) for i in ids if i != self.eos_token_id)


def vowel_reward(problem, text):
    """Dense, token-dependent reward so groups differ and updates are non-zero."""
    return {"reward": sum(c in "aeiouAEIOU" for c in text) / max(len(text), 1)}


# -- advantages and loss, by hand -------------------------------------------------------------

def test_group_advantages_hand_computed():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [2.0, 2.0, 2.0, 2.0], [3.0, 0.0, 0.0, 0.0]])
    a = group_advantages(r, eps=0.0 + 1e-4)
    s1 = math.sqrt(4 * 0.25 / 3)  # unbiased std of {1, 0, 0, 1}
    assert torch.allclose(a[0], torch.tensor([0.5, -0.5, -0.5, 0.5]) / (s1 + 1e-4))
    assert torch.equal(a[1], torch.zeros(4))  # all-equal group: no preference, no gradient
    s3 = math.sqrt((2.25**2 + 3 * 0.75**2) / 3)  # mean 0.75
    assert torch.allclose(a[2], torch.tensor([2.25, -0.75, -0.75, -0.75]) / (s3 + 1e-4))
    assert torch.allclose(a.sum(-1), torch.zeros(3), atol=1e-6)


def test_grpo_loss_clipping_hand_computed():
    old = torch.zeros(2, 2)
    logp = torch.log(torch.tensor([[1.5, 0.5], [1.5, 0.5]])).requires_grad_(True)  # ratios 1.5 and 0.5
    adv = torch.tensor([1.0, -1.0])
    mask = torch.ones(2, 2, dtype=torch.bool)
    loss, m = grpo_loss(logp, old, adv, mask, clip_eps=0.2)
    # A=+1: min(1.5, 1.2) = 1.2 and min(0.5, 0.8) = 0.5 → −0.85; A=−1: min(−1.5, −1.2) = −1.5 and
    # min(−0.5, −0.8) = −0.8 → +1.15; mean over the two sequences = 0.15.
    assert float(loss.detach()) == pytest.approx((-0.85 + 1.15) / 2, abs=1e-6)
    assert m["grpo/clip_frac"] == pytest.approx(1.0)
    loss.backward()
    # Clipped branches carry no gradient; unclipped ones −A·ρ / (tokens · sequences).
    expect = torch.tensor([[0.0, -0.5 / 4], [1.5 / 4, 0.0]])
    assert torch.allclose(logp.grad, expect, atol=1e-6)


def test_grpo_loss_mask_and_k3_kl_hand_computed():
    logp = torch.zeros(2, 3)
    old = torch.zeros(2, 3)
    ref = torch.full((2, 3), math.log(2.0))
    mask = torch.tensor([[True, True, True], [True, False, False]])
    adv = torch.tensor([2.0, 0.0])
    loss, m = grpo_loss(logp, old, adv, mask, clip_eps=0.2, ref_logp=ref, kl_coef=0.1)
    k3 = 2.0 - math.log(2.0) - 1.0  # e^d − d − 1 with d = log 2
    # seq 0: −2 + 0.1·k3 per token; seq 1: 0 + 0.1·k3; masked tokens do not count.
    assert float(loss) == pytest.approx(((-2 + 0.1 * k3) + 0.1 * k3) / 2, abs=1e-6)
    assert m["grpo/kl"] == pytest.approx(k3, abs=1e-6)
    # On-policy (ratio ≡ 1): the loss gradient is the plain policy gradient −Â/|o|.
    lp = torch.zeros(1, 4, requires_grad=True)
    grpo_loss(lp, lp.detach(), torch.tensor([0.7]), torch.ones(1, 4, dtype=torch.bool), 0.2)[0].backward()
    assert torch.allclose(lp.grad, torch.full((1, 4), -0.7 / 4))


# -- log-probs: the verifier's target forward == a plain forward --------------------------------

@pytest.mark.parametrize("use_drafter", [False, True])
def test_rollout_logprobs_equal_plain_forward(one_thread, use_drafter):
    model = tiny_llama(seed=1)
    prompts = [[5, 9, 3], [7, 2, 8, 4, 6, 1 + 10], [11]]  # ragged: left padding leaves holes
    drafter = MTPDrafter(MTPHead(model, MTPConfig(gamma=3)).eval()) if use_drafter else None
    out = generate(model, prompts, drafter=drafter, gamma=3, temperature=1.0, max_new_tokens=12,
                   generator=torch.Generator().manual_seed(0))
    if use_drafter:
        assert out.stats.rounds > 0 and sum(out.stats.reached) > 0
    seqs = [p + t for p, t in zip(prompts, out.tokens)]
    with torch.no_grad():
        logp, ent, mask = response_logprobs(model, seqs, [len(p) for p in prompts])
    for b, lp in enumerate(out.logprobs):
        assert int(mask[b].sum()) == len(lp)
        assert torch.allclose(logp[b, :len(lp)], lp, atol=2e-5), (b, logp[b, :len(lp)] - lp)
    assert (ent[mask] > 0).all()


@pytest.mark.parametrize("use_drafter", [False, True])
def test_rollout_logprobs_are_the_tempered_distribution_and_the_first_ratio_is_one(tmp_path, one_thread, monkeypatch,
                                                                                     use_drafter):
    """At T = 0.7 rollouts sample softmax(z/T), so that is the policy the gradient and the PPO ratio
    are about: the recorded log-prob of every sampled token is log_softmax(z/T) of a plain full
    forward, and the update's first epoch scores the same distribution (ratio 1 up to float
    summation order). The second epoch, after a step, sees ratios ≠ 1: the spy is not vacuous."""
    import sys

    grpo_mod = sys.modules["anatomist.train.grpo"]
    T = 0.7
    model, tok = tiny_llama(seed=2), CharTokenizer()
    drafter = MTPDrafter(MTPHead(model, MTPConfig(gamma=3)).eval()) if use_drafter else None
    checked, ratios = [], []

    def on_rollout(step, problems, prompts, texts, out, rewards):
        for p, toks, lp in zip(prompts, out.tokens, out.logprobs):  # weights as sampled: before the update
            seq = torch.tensor([p + toks])
            with torch.no_grad():
                z = model(seq).logits[0, len(p) - 1:-1]  # [R, V] the logits each token was sampled from
            ref = torch.log_softmax(z / T, -1).gather(-1, seq[0, len(p):, None])[:, 0]
            assert torch.allclose(lp, ref, atol=2e-5), (lp - ref).abs().max()
            checked.append(len(toks))

    real_loss = grpo_mod.grpo_loss

    def spy(logp, old_logp, adv, mask, *a, **k):
        ratios.append(torch.exp(logp.detach() - old_logp)[mask])
        return real_loss(logp, old_logp, adv, mask, *a, **k)

    monkeypatch.setattr(grpo_mod, "grpo_loss", spy)
    cfg = _cfg(steps=1, epochs=2, temperature=T, gamma=3)
    train_grpo(model, tok, cfg, tmp_path, drafter=drafter, reward_fn=vowel_reward, on_rollout=on_rollout,
               progress=False)
    assert len(checked) == cfg.prompts_per_step * cfg.group_size and sum(checked) > 0
    per_epoch = len(ratios) // cfg.epochs
    first, second = torch.cat(ratios[:per_epoch]), torch.cat(ratios[per_epoch:])
    assert torch.allclose(first, torch.ones_like(first), atol=1e-4), (first - 1).abs().max()
    assert (second - 1).abs().max() > 1e-3


# -- the loop ----------------------------------------------------------------------------------

def _cfg(**kw):
    base = dict(steps=3, prompts_per_step=2, group_size=3, max_new_tokens=6, lr=1e-2, micro_batch=4, seed=3)
    return GRPOConfig(**{**base, **kw})


def test_resume_after_kill_equals_uninterrupted(tmp_path, one_thread):
    tok, cfg = CharTokenizer(), _cfg()
    m_full = tiny_llama(seed=2)
    init = {k: v.clone() for k, v in m_full.state_dict().items()}
    full = train_grpo(m_full, tok, cfg, tmp_path / "a", reward_fn=vowel_reward, progress=False)
    m_part = tiny_llama(seed=2)
    train_grpo(m_part, tok, cfg, tmp_path / "b", reward_fn=vowel_reward, progress=False, stop_after=2)
    m_res = tiny_llama(seed=2)  # a fresh process: initial weights, then the checkpoint
    resumed = train_grpo(m_res, tok, cfg, tmp_path / "b", reward_fn=vowel_reward, progress=False)
    changed = any(not torch.equal(init[k], v) for k, v in m_full.state_dict().items())
    assert changed, "GRPO steps did not move the weights: the resume check would be vacuous"
    for k, v in m_full.state_dict().items():
        assert torch.equal(v, m_res.state_dict()[k]), k
    assert [h["grpo/reward"] for h in full.history] == [h["grpo/reward"] for h in resumed.history]
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [0, 1, 2]


def test_resume_refuses_other_config(tmp_path, one_thread):
    tok = CharTokenizer()
    train_grpo(tiny_llama(), tok, _cfg(steps=1), tmp_path, reward_fn=vowel_reward, progress=False)
    with pytest.raises(AnatomistError, match="different config"):
        train_grpo(tiny_llama(), tok, _cfg(steps=1, lr=1e-3), tmp_path, reward_fn=vowel_reward, progress=False)


def test_mtp_rollout_steps_with_kl_top_layers_and_head_refresh(tmp_path, one_thread):
    model, tok = tiny_llama(seed=4), CharTokenizer()
    head = MTPHead(model, MTPConfig(gamma=2)).eval()
    head_before = {k: v.clone() for k, v in head.trainable_state().items()}
    frozen_before = model.model.layers[0].mlp.up_proj.weight.clone()
    cfg = _cfg(steps=2, gamma=2, kl_coef=0.05, train_layers=1, refresh_head_every=1, head_refresh_steps=2,
               max_new_tokens=8)
    res = train_grpo(model, tok, cfg, tmp_path, drafter=MTPDrafter(head), reward_fn=vowel_reward, progress=False)
    h = res.history[-1]
    for k in ("grpo/rollout_s", "grpo/update_s", "grpo/reward", "grpo/entropy", "spec/alpha_1", "spec/alpha_2",
              "spec/mean_accept_len", "grpo/kl", "head_refresh/loss"):
        assert k in h, k
    assert 1.0 <= h["spec/mean_accept_len"] <= 3.0
    assert torch.equal(model.model.layers[0].mlp.up_proj.weight, frozen_before)  # only the top block trains
    assert any(not torch.equal(head_before[k], v) for k, v in head.trainable_state().items())
    assert (tmp_path / "plot.html").stat().st_size > 10_000


def test_head_refresh_raises_acceptance_on_the_policys_rollouts(one_thread):
    """The refresh (`refresh_head_every`) fits the head to the current policy: its α on the
    rollouts it was refreshed on goes up, measured with the trunk's own target distribution.
    `head_alphas` (batched, several heads) equals one `head_loss` batch over every chain."""
    from anatomist.spec_decode.train import Samples, head_batch, head_alphas, head_loss, target_stats, trunk_states
    from anatomist.train.grpo import _refresh_head

    model = tiny_llama(seed=4)
    with torch.no_grad():
        model.lm_head.weight.mul_(6.0)  # sharper next-token distributions than a random init gives
    head = MTPHead(model, MTPConfig(gamma=2)).eval()
    fixed = MTPHead(model, MTPConfig(gamma=2)).eval()
    fixed.load_state_dict(head.state_dict())
    prompts = torch.randint(2, 100, (8, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model.generate(prompts, attention_mask=torch.ones_like(prompts), max_new_tokens=24, do_sample=True,
                             pad_token_id=0)
    seqs, plens = out.tolist(), [6] * 8
    seqs[3], plens[3] = seqs[3][:8], 6  # too short for one chain: left out, not an error

    with torch.no_grad():
        states = trunk_states(model, seqs[:3] + seqs[4:])
        one = head_batch(states, target_stats(model, states), Samples(seqs[:3] + seqs[4:], plens[:3] + plens[4:]),
                     list(range(7)), 2, 0, torch.Generator())  # every chain of every usable rollout
        ref = head_loss(head, *one, "e2e_tv", 2)[1]
    before = head_alphas({"head": head, "fixed": fixed}, model, Samples(seqs, plens), batch_size=3)
    assert before["head"] == pytest.approx([ref["mtp/alpha_1"], ref["mtp/alpha_2"]], abs=1e-6)
    assert before["fixed"] == before["head"]

    metrics = _refresh_head(head, model, seqs, plens, GRPOConfig(head_refresh_steps=20, head_lr=3e-3), step=0)
    after = head_alphas({"head": head, "fixed": fixed}, model, Samples(seqs, plens))
    assert metrics["head_refresh/loss"] > 0 and not head.training
    assert after["fixed"] == pytest.approx(before["fixed"])  # the other head is untouched
    assert all(a > b + 0.03 for a, b in zip(after["head"], before["head"])), (before, after)


def test_config_validation():
    with pytest.raises(AnatomistError, match="group_size"):
        GRPOConfig(group_size=1)
    with pytest.raises(AnatomistError, match="clip_eps"):
        GRPOConfig(clip_eps=1.5)


# -- rewards -------------------------------------------------------------------------------------

def test_problems_are_seeded_and_answers_exact():
    a, b = make_problems(40, seed=7), make_problems(40, seed=7)
    assert a == b and a != make_problems(40, seed=8)
    assert {p.kind for p in a} == {"plain", "add", "sub", "convert"}
    units = {"centimeters": 100, "minutes": 60, "grams": 1000, "seconds": 60, "hours": 24, "cents": 100,
             "days": 7, "inches": 12}
    import re

    for p in make_problems(60, seed=1, kinds=tuple(KINDS), max_operand=30):
        n = [int(x) for x in re.findall(r"\d+", p.question.splitlines()[0])]
        if p.kind in ("plain", "add"):
            expect = n[0] + n[1]
        elif p.kind == "sub":
            expect = n[0] - n[1]
        elif p.kind == "mul":
            expect = n[0] * n[1]
        else:
            expect = n[0] * units[p.question.split("How many ")[1].split()[0]]
        assert p.answer == expect, p
        assert p.answer >= 0
    with pytest.raises(AnatomistError):
        make_problems(2, kinds=("calculus",))


@pytest.mark.parametrize("text, value, formatted", [
    ("7 + 5 = 12.\nAnswer: 12", 12, True),
    ("**Answer:** 1,200", 1200, True),
    ("So the answer is: 42.", 42, False),
    ("There are 3 boxes, so 3 × 4 = 12 apples", 12, False),
    ("Answer: 12\nActually, Answer: 13", 13, True),
    ("I cannot tell.", None, False),
    ("Answer: -3.5", Fraction(-7, 2), True),
])
def test_extract_answer(text, value, formatted):
    v, f = extract_answer(text)
    assert v == value and f == formatted


def test_score_components():
    p = make_problems(1, seed=0)[0]
    assert score(p, f"Answer: {p.answer}") == {"reward": 1.5, "correct": 1.0, "format": 1.0}
    assert score(p, f"it is {p.answer}") == {"reward": 1.0, "correct": 1.0, "format": 0.0}
    assert score(p, f"Answer: {p.answer + 1}", format_weight=0.25) == {"reward": 0.25, "correct": 0.0, "format": 1.0}


def test_grpo_cli_help_and_errors():
    import typer
    from typer.testing import CliRunner

    from anatomist.train.grpo_cli import grpo

    app = typer.Typer()
    app.command()(grpo)
    res = CliRunner().invoke(app, ["--help"])
    assert res.exit_code == 0 and "Example: anatomist grpo" in res.output and "--refresh-head-every" in res.output
    res = CliRunner().invoke(app, ["--out", "x", "--spec", "eagle"])
    assert isinstance(res.exception, AnatomistError) and "--spec" in str(res.exception)


# -- the draft head's data: the task's own problems --------------------------------------------

class RecordingTokenizer(CharTokenizer):
    def __init__(self):
        self.seen = []

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        self.seen.append(messages[-1]["content"])
        return super().apply_chat_template(messages, tokenize, add_generation_prompt)


def test_head_data_is_the_tasks_problems_cached_apart_from_chat(tmp_path, monkeypatch, one_thread):
    from anatomist.spec_decode.pipeline import cached_samples, spec_cache
    from anatomist.spec_decode.prompts import PROMPT_SETS, TASK_SEED

    tok = RecordingTokenizer()
    prompts = PROMPT_SETS["grpo"](tok, 8)
    problems = make_problems(8, seed=TASK_SEED)
    assert tok.seen == [p.question for p in problems]  # asked exactly as train_grpo asks them
    assert {p.kind for p in problems} == {"plain", "add", "sub", "convert"}  # GRPOConfig's default kinds
    assert problems != make_problems(8, seed=0)  # not step 0's problems

    monkeypatch.setenv("ANATOMIST_CACHE", str(tmp_path))
    model = tiny_llama(vocab_size=128)
    kw = dict(model_name="tiny", n_prompts=3, max_new_tokens=4, batch_size=3)
    s = cached_samples(model, tok, prompt_set="grpo", **kw)
    assert [seq[:p] for seq, p in zip(s.sequences, s.prompt_lens)] == prompts[:3]
    again = cached_samples(model, tok, prompt_set="grpo", **kw)  # from the cache, not resampled
    assert again.sequences == s.sequences and len(list((spec_cache() / "samples").iterdir())) == 1
    chat = cached_samples(model, tok, prompt_set="chat", **kw)
    assert len(list((spec_cache() / "samples").iterdir())) == 2 and chat.sequences != s.sequences
    with pytest.raises(AnatomistError, match="prompt set must be one of chat, grpo, got 'math'"):
        cached_samples(model, tok, prompt_set="math", **kw)


def test_spec_caches_are_keyed_by_the_weights_not_the_name(tmp_path, monkeypatch, one_thread):
    """A changed model under the same name (say a checkpoint saved over the base's folder) must
    not reuse the base's self-samples, trunk states or heads: each cache misses on its own."""
    from anatomist.spec_decode.pipeline import cached_head, cached_samples, cached_states, spec_cache
    from anatomist.spec_decode.train import TrainConfig

    monkeypatch.setenv("ANATOMIST_CACHE", str(tmp_path))
    tok, model = CharTokenizer(), tiny_llama(vocab_size=128, seed=5)
    kw = dict(model_name="tiny", n_prompts=3, max_new_tokens=8, prompt_set="grpo")
    cfg = TrainConfig(loss="e2e_tv", gamma=2, steps=2, batch_size=2, draft_vocab=0)

    def entries():
        return [len(list((spec_cache() / d).iterdir())) for d in ("samples", "states", "heads")]

    def fill(m, samples):
        cached_samples(m, tok, **kw)
        cached_states(m, samples, model_name="tiny")
        cached_head(m, samples, cfg, model_name="tiny", eos_token_id=None)

    samples = cached_samples(model, tok, **kw)
    fill(model, samples)
    fill(model, samples)
    assert entries() == [1, 1, 1]                       # same weights: every step is read back
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1e-3 * torch.randn_like(p))
    fill(model, samples)   # the same samples, so states and heads miss because of the weights alone
    assert entries() == [2, 2, 2]


def test_default_grpo_head_is_one_cached_e2e_tv_head_of_the_task_data(tmp_path, monkeypatch, one_thread, capsys):
    """`e2e_tv_head` (what `anatomist grpo` drafts with) trains once on the prompt set's self-samples
    and then loads; the benchmarks' `benchmark_heads` finds the same cached head for the same recipe."""
    import sys

    from anatomist.spec_decode.pipeline import cached_samples, e2e_tv_head
    from anatomist.spec_decode.train import head_alphas

    sys.path.insert(0, str(REPO / "benchmarks"))  # benchmarks are scripts; their helpers sit beside them
    from spec_heads import benchmark_heads

    monkeypatch.setenv("ANATOMIST_CACHE", str(tmp_path))

    class LM:
        model, tokenizer = tiny_llama(vocab_size=128), CharTokenizer()

    kw = dict(model_name="tiny", prompt_set="grpo", n_prompts=4, steps=2, max_new_tokens=12)
    head, folder = e2e_tv_head(LM, **kw)
    assert head.config.loss == "e2e_tv" and folder.parent.name == "heads" and "grpo samples" in capsys.readouterr().out
    again, same = e2e_tv_head(LM, **kw)
    assert same == folder and len(list(folder.parent.iterdir())) == 1     # loaded, not trained again
    shared = benchmark_heads(LM, ["e2e_tv"], model_name="tiny", prompt_set="grpo", n_prompts=4, steps=2,
                             max_new_tokens=12)["e2e_tv"]
    assert len(list(folder.parent.iterdir())) == 1
    samples = cached_samples(LM.model, LM.tokenizer, model_name="tiny", n_prompts=4, max_new_tokens=12,
                             prompt_set="grpo")
    a = head_alphas({"a": head, "b": again, "c": shared}, LM.model, samples)
    assert a["a"] == a["b"] == a["c"]
