"""GRPO whose rollouts run through the speculative generator (MTP draft + rejection sampling).

One step, top to bottom (`train_grpo`):

1. P problems (seeded by step) → chat prompts, each repeated G times;
2. rollouts: `anatomist.spec_decode.generate.generate` with the drafter (MTP+RS) or with drafter=None
   (plain sampling) — the same function either way, so both arms share every line but the draft.
   Rejection sampling is lossless, so both arms sample the same policy; the rollout log-probs are
   the ones the verifier's target forward computed, never the draft's, and of the distribution
   actually sampled: log softmax(z/T). The update scores that same tempered policy
   (`response_logprobs(..., temperature=T)`), so the first epoch's PPO ratio is 1 at any T;
3. rewards (`anatomist.tasks.arithmetic.score`) → group-normalised advantages (`group_advantages`);
4. clipped policy-gradient loss (`grpo_loss`): PPO ratio against the rollout log-probs, clip ε,
   optional KL to the reference at the same T (k3 estimator), per-sequence token mean, mean over
   sequences;
5. AdamW step on the trainable parameters (all, or the top N blocks + final norm), then the draft
   head is re-bound to the trunk (its embedding / LM head views must follow the new weights).

The draft head is trained before RL (e2e-TV, `anatomist mtp train`) and by default never updated
online; `refresh_head_every = N` fine-tunes it on the latest rollouts every N steps, to measure
how much acceptance the policy's drift costs. Checkpoints (trainable weights, optimiser, head,
history) are written atomically after every `ckpt_every` steps; the problems and the sampling
randomness of step s are pure functions of (seed, s), so a resumed run repeats an uninterrupted
one exactly. Metrics per step go to `metrics.jsonl`; `plot.html` shows acceptance, entropy and
reward over the steps.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from anatomist.errors import AnatomistError
from anatomist.fileio import atomic_path, atomic_write_text
from anatomist.models.chat import apply_chat_template
from anatomist.models.layers import decoder_layers
from anatomist.progress import progress_bar
from anatomist.spec_decode.generate import GenerateOutput
from anatomist.spec_decode.generate import generate as spec_generate
from anatomist.tasks.arithmetic import Problem, make_problems, score

log = logging.getLogger(__name__)

__all__ = ["GRPOConfig", "group_advantages", "grpo_loss", "response_logprobs", "train_grpo", "render_plot"]

CKPT_NAME = "grpo_checkpoint.pt"


@dataclass(frozen=True)
class GRPOConfig:
    steps: int = 20
    prompts_per_step: int = 4  # P
    group_size: int = 4  # G samples per prompt
    max_new_tokens: int = 64
    temperature: float = 1.0
    gamma: int = 3  # draft tokens per round (MTP arm)
    lr: float = 1e-5
    clip_eps: float = 0.2
    kl_coef: float = 0.0  # β of the k3 KL to the reference (0 = no reference model kept)
    epochs: int = 1  # optimiser passes over each rollout batch (1 = on-policy, ratio ≡ 1)
    micro_batch: int = 8  # sequences per forward/backward
    train_layers: int = 0  # 0 = every parameter; N = the top N decoder blocks + final norm
    max_grad_norm: float = 1.0
    format_weight: float = 0.5
    kinds: tuple[str, ...] = ("plain", "add", "sub", "convert")
    max_operand: int = 20
    refresh_head_every: int = 0  # 0 = never update the draft head online
    head_refresh_steps: int = 20
    head_lr: float = 3e-4
    seed: int = 0
    ckpt_every: int = 1

    def __post_init__(self):
        for name in ("steps", "prompts_per_step", "group_size", "max_new_tokens", "epochs", "micro_batch",
                     "ckpt_every", "gamma"):
            if getattr(self, name) < 1:
                raise AnatomistError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.group_size < 2:
            raise AnatomistError(f"group_size must be >= 2 (advantages compare samples), got {self.group_size}")
        if not 0 <= self.clip_eps < 1 or self.kl_coef < 0 or self.lr <= 0 or self.temperature <= 0:
            raise AnatomistError(f"need 0 <= clip_eps < 1, kl_coef >= 0, lr > 0, temperature > 0 "
                                 f"(got {self.clip_eps}, {self.kl_coef}, {self.lr}, {self.temperature})")
        if self.train_layers < 0 or self.refresh_head_every < 0:
            raise AnatomistError("train_layers and refresh_head_every must be >= 0")


# -- pure math ---------------------------------------------------------------------------------

def group_advantages(rewards: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """GRPO advantages: Â_{p,g} = (r_{p,g} − mean_g r_p) / (std_g r_p + eps).

    rewards [P, G] → [P, G]. std is the unbiased sample std; a group whose rewards are all equal
    gets advantage 0 (it carries no preference, so it contributes no gradient).
    """
    mean = rewards.mean(-1, keepdim=True)
    std = rewards.std(-1, keepdim=True)
    return (rewards - mean) / (std + eps)


def grpo_loss(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, mask: torch.Tensor,
              clip_eps: float, ref_logp: torch.Tensor | None = None, kl_coef: float = 0.0
              ) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped policy-gradient loss with optional k3 KL (DeepSeekMath Eq. 3).

    logp, old_logp, ref_logp: [N, T] per-token log-probs of the sampled tokens under the current,
    rollout (behaviour) and reference policies; adv [N]; mask [N, T] response tokens.
    per token: ℓ_t = −min(ρ_t Â, clip(ρ_t, 1−ε, 1+ε) Â) + β·k3_t, ρ_t = exp(logp − old_logp),
    k3_t = exp(ref − logp) − (ref − logp) − 1 (an unbiased, non-negative estimate of KL(π‖π_ref)).
    L = mean over sequences of (Σ_t m_t ℓ_t / Σ_t m_t).
    """
    m = mask.float()
    ratio = torch.exp(logp - old_logp)  # [N, T]
    a = adv[:, None]
    surr = torch.minimum(ratio * a, ratio.clamp(1 - clip_eps, 1 + clip_eps) * a)
    per_tok = -surr
    kl = torch.zeros_like(logp)
    if ref_logp is not None and kl_coef > 0:
        d = ref_logp - logp
        kl = torch.exp(d) - d - 1
        per_tok = per_tok + kl_coef * kl
    n_tok = m.sum(-1).clamp(min=1)  # [N]
    loss = ((per_tok * m).sum(-1) / n_tok).mean()
    with torch.no_grad():
        clipped = ((ratio - 1).abs() > clip_eps).float()
        metrics = {"grpo/loss": float(loss.detach()), "grpo/kl": float(((kl * m).sum(-1) / n_tok).mean()),
                   "grpo/clip_frac": float((clipped * m).sum() / m.sum().clamp(min=1)),
                   "grpo/ratio_max": float((ratio * m).max()) if m.any() else 1.0}
    return loss, metrics


def response_logprobs(model, seqs: list[list[int]], prompt_lens: list[int], temperature: float = 1.0
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token log π_T(y_t | y_<t) of the response tokens, π_T = softmax(z/T) the distribution
    the rollouts sampled, in one right-padded forward.

    → logp [N, R] (differentiable), entropy H(π_T) [N, R] (detached, nats), mask [N, R].
    Only response positions go through the LM head (the prompt's logits are never needed).
    """
    dev = model.get_input_embeddings().weight.device
    N, L = len(seqs), max(len(s) for s in seqs)
    R = max(len(s) - p for s, p in zip(seqs, prompt_lens))
    ids = torch.zeros(N, L, dtype=torch.long, device=dev)
    att = torch.zeros(N, L, dtype=torch.long, device=dev)
    pos = torch.zeros(N, R, dtype=torch.long, device=dev)  # position whose logits predict y_t
    mask = torch.zeros(N, R, dtype=torch.bool, device=dev)
    for b, (s, p) in enumerate(zip(seqs, prompt_lens)):
        ids[b, :len(s)] = torch.tensor(s, device=dev)
        att[b, :len(s)] = 1
        r = len(s) - p
        pos[b, :r] = torch.arange(p - 1, len(s) - 1, device=dev)
        mask[b, :r] = True
    h = model.model(input_ids=ids, attention_mask=att).last_hidden_state  # [N, L, H]
    h = h.gather(1, pos[..., None].expand(-1, -1, h.shape[-1]))  # [N, R, H]
    logits = model.get_output_embeddings()(h).float()  # [N, R, V]
    lsm = F.log_softmax(logits / temperature, -1)
    tgt = ids.gather(1, (pos + 1).clamp(max=L - 1))  # [N, R] the tokens y_t
    logp = lsm.gather(-1, tgt[..., None])[..., 0]
    with torch.no_grad():
        ent = -(lsm.exp() * lsm).sum(-1)
    return logp * mask, ent * mask, mask


# -- the loop ----------------------------------------------------------------------------------

@dataclass
class GRPOResult:
    history: list[dict] = field(default_factory=list)
    out_dir: Path | None = None
    stopped_at: int | None = None  # the step a monitor alarm stopped the run at


def _trainable(model, n_top: int) -> list[tuple[str, torch.nn.Parameter]]:
    for p in model.parameters():
        p.requires_grad_(n_top == 0)
    if n_top:
        blocks = decoder_layers(model)
        if n_top > len(blocks):
            raise AnatomistError(f"train_layers={n_top} but the model has {len(blocks)} blocks")
        for mod in [*blocks[-n_top:], model.model.norm]:
            for p in mod.parameters():
                p.requires_grad_(True)
    seen, out = set(), []
    for name, p in model.named_parameters():  # tied weights appear once
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            out.append((name, p))
    return out


def _save(path: Path, step: int, params, opt, cfg: GRPOConfig, history: list, head) -> None:
    state = {"step": step, "params": {n: p.detach().cpu() for n, p in params}, "opt": opt.state_dict(),
             "config": json.loads(json.dumps(asdict(cfg))), "history": history,
             "head": {k: v.cpu() for k, v in head.trainable_state().items()} if head is not None else None}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _refresh_head(head, model, seqs: list[list[int]], plens: list[int], cfg: GRPOConfig, step: int) -> dict:
    """Fine-tune the draft head on the current policy's own rollouts (e2e-TV, trunk frozen)."""
    from anatomist.spec_decode.train import (
        Samples,
        head_batch,
        head_loss,
        target_stats,
        trunk_states,
    )

    samples = Samples(seqs, plens)
    usable = [i for i, (s, p) in enumerate(zip(seqs, plens)) if len(s) - p > head.config.gamma]
    if not usable:
        return {}
    with torch.no_grad():
        states = trunk_states(model, seqs)
        stats = target_stats(model, states)
    head.train()
    params = [p for p in head.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.head_lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(cfg.seed * 7_000_003 + step)
    metrics = {}
    for _ in range(cfg.head_refresh_steps):
        pick = torch.randperm(len(usable), generator=g)[:8].tolist()
        batch = head_batch(states, stats, samples, [usable[i] for i in pick], head.config.gamma, 32, g)
        loss, metrics = head_loss(head, *batch, "e2e_tv", head.config.gamma)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
    head.eval()
    return {f"head_refresh/{k.split('/')[-1]}": v for k, v in metrics.items()}


def train_grpo(model, tokenizer, cfg: GRPOConfig, out_dir: str | os.PathLike, *, drafter=None,
               reward_fn: Callable[[Problem, str], dict[str, float]] | None = None,
               stop_after: int | None = None, progress: bool = True,
               on_rollout: Callable[[int, list[Problem], list[list[int]], list[str], GenerateOutput, torch.Tensor],
                                    None] | None = None,
               monitor=None) -> GRPOResult:
    """Run (or resume) GRPO; see the module docstring. `drafter=None` gives plain-sampling rollouts.

    reward_fn(problem, text) → {"reward": r, ...} (default: correctness + format, `rewards.score`).
    `stop_after` ends after that many total steps as if killed (tests). `on_rollout(step,
    problems, prompts, texts, generate_output, rewards [P·G])` sees every rollout batch before the
    update (benchmarks); prompts are the token ids each rollout continues.
    `monitor` (`anatomist.monitor.ConceptMonitor`): a point before training and every
    `monitor.every` steps into out_dir/monitor.jsonl; with `stop_on_alarm` the run stops at the
    first checkpoint after an alarm (`result.stopped_at`; rerun to resume).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    reward_fn = reward_fn or (lambda prob, text: score(prob, text, cfg.format_weight))
    head = getattr(drafter, "head", None)
    ref = None
    if cfg.kl_coef > 0:  # the reference is the policy as given, before any checkpoint is applied
        ref = copy.deepcopy(model).eval()
        for p in ref.parameters():
            p.requires_grad_(False)
    params = _trainable(model, cfg.train_layers)
    opt = torch.optim.AdamW([p for _, p in params], lr=cfg.lr, weight_decay=0.0)
    start, history = 0, []
    ckpt = out / CKPT_NAME
    if ckpt.is_file():
        state = torch.load(ckpt, weights_only=True)
        if state["config"] != json.loads(json.dumps(asdict(cfg))):
            raise AnatomistError(f"{ckpt}: checkpoint was written with a different config; "
                                 f"use another output folder or delete it")
        with torch.no_grad():
            for n, p in params:
                p.copy_(state["params"][n])
        opt.load_state_dict(state["opt"])
        if head is not None and state["head"] is not None:
            head.load_state_dict(state["head"], strict=False)
        start, history = state["step"], state["history"]
        log.info("resuming %s at step %d", ckpt, start)
    if head is not None:
        head.bind(model)
    eos = tokenizer.eos_token_id
    end = cfg.steps if stop_after is None else min(stop_after, cfg.steps)
    model.eval()  # no dropout: the update forward must score exactly what the rollout sampled
    stopped_at = None
    if monitor is not None:
        monitor.start(out, start)
        if monitor.due(start, cfg.steps):
            monitor.measure(model, tokenizer, start)

    with progress_bar("grpo", total=cfg.steps, completed=start, enabled=progress) as bar:
        for step in range(start, end):
            t_step = time.perf_counter()
            problems = make_problems(cfg.prompts_per_step, seed=cfg.seed * 1_000_003 + step, kinds=cfg.kinds,
                                     max_operand=cfg.max_operand)
            prompts = [apply_chat_template(tokenizer, [{"role": "user", "content": p.question}]) for p in problems]
            prompts = [p for p in prompts for _ in range(cfg.group_size)]  # [P·G], groups contiguous

            t0 = time.perf_counter()
            gen = torch.Generator(device=model.get_input_embeddings().weight.device)
            gen.manual_seed(cfg.seed * 1_000_003 + step)
            with torch.no_grad():
                ro = spec_generate(model, prompts, drafter=drafter, gamma=cfg.gamma, temperature=cfg.temperature,
                                   max_new_tokens=cfg.max_new_tokens, eos_token_id=eos, generator=gen)
            rollout_s = time.perf_counter() - t0

            texts = [tokenizer.decode(t, skip_special_tokens=True) for t in ro.tokens]
            scored = [reward_fn(problems[i // cfg.group_size], text) for i, text in enumerate(texts)]
            rewards = torch.tensor([s["reward"] for s in scored], dtype=torch.float32)  # [P·G]
            adv = group_advantages(rewards.view(-1, cfg.group_size)).view(-1)  # [P·G]
            if on_rollout is not None:
                on_rollout(step, problems, prompts, texts, ro, rewards)

            t0 = time.perf_counter()
            seqs = [p + t for p, t in zip(prompts, ro.tokens)]
            plens = [len(p) for p in prompts]
            upd: dict[str, float] = {}
            ent_sum, tok_sum = 0.0, 0
            for _epoch in range(cfg.epochs):
                opt.zero_grad(set_to_none=True)
                for i in range(0, len(seqs), cfg.micro_batch):
                    sl = slice(i, i + cfg.micro_batch)
                    logp, ent, mask = response_logprobs(model, seqs[sl], plens[sl], cfg.temperature)
                    old = torch.nn.utils.rnn.pad_sequence(ro.logprobs[sl], batch_first=True).to(logp)
                    ref_logp = None
                    if ref is not None:
                        with torch.no_grad():
                            ref_logp = response_logprobs(ref, seqs[sl], plens[sl], cfg.temperature)[0]
                    loss, m = grpo_loss(logp, old, adv[sl].to(logp), mask, cfg.clip_eps, ref_logp, cfg.kl_coef)
                    (loss * (mask.shape[0] / len(seqs))).backward()  # mean over all P·G sequences
                    for k, v in m.items():
                        upd[k] = upd.get(k, 0.0) + v * mask.shape[0] / len(seqs) / cfg.epochs
                    if _epoch == 0:
                        ent_sum += float(ent.sum())
                        tok_sum += int(mask.sum())
                gnorm = torch.nn.utils.clip_grad_norm_([p for _, p in params], cfg.max_grad_norm)
                opt.step()
            if head is not None:
                head.bind(model)
            update_s = time.perf_counter() - t0

            rec = {"step": step, "grpo/rollout_s": rollout_s, "grpo/update_s": update_s,
                   "grpo/reward": float(rewards.mean()), "grpo/reward_std": float(rewards.std()),
                   "grpo/correct": sum(s.get("correct", 0.0) for s in scored) / len(scored),
                   "grpo/format": sum(s.get("format", 0.0) for s in scored) / len(scored),
                   "grpo/entropy": ent_sum / max(tok_sum, 1), "grpo/grad_norm": float(gnorm),
                   "grpo/response_tokens": tok_sum, "grpo/rollout_tokens_per_s": tok_sum / max(rollout_s, 1e-9),
                   "grpo/rollout_logprob": float(torch.cat(ro.logprobs).mean()), **upd}
            if drafter is not None:
                rec.update(ro.stats.as_metrics())
            if head is not None and cfg.refresh_head_every and (step + 1) % cfg.refresh_head_every == 0:
                t0 = time.perf_counter()
                rec.update(_refresh_head(head, model, seqs, plens, cfg, step))
                rec["head_refresh/s"] = time.perf_counter() - t0
            rec["grpo/step_s"] = time.perf_counter() - t_step
            history.append(rec)
            bar.advance(1)
            bar.update(description=f"grpo r={rec['grpo/reward']:.2f}")
            if monitor is not None and monitor.due(step + 1, cfg.steps):
                monitor.measure(model, tokenizer, step + 1)  # its own generator: the rollouts' seeds are untouched
            if (step + 1) % cfg.ckpt_every == 0 or step + 1 == end:
                _save(ckpt, step + 1, params, opt, cfg, history, head)
                atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in history))
                if monitor is not None and monitor.stop_on_alarm and monitor.alarm_fired and step + 1 < end:
                    log.warning("monitor: an alarm fired; stopped at the checkpoint of step %d (rerun to resume)",
                                step + 1)
                    stopped_at = step + 1
                    break
    if history:  # also after a kill between the last checkpoint and its metrics write (nothing left to run)
        atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in history))
        atomic_write_text(out / "plot.html", render_plot(history))
    if monitor is not None:
        monitor.finish()
    return GRPOResult(history=history, out_dir=out, stopped_at=stopped_at)


def render_plot(history: list[dict]) -> str:
    """Self-contained HTML (anatomist/html.py: plotly inlined, no network): acceptance, policy
    entropy and reward per step, one plot each."""
    from anatomist.html import esc, finite, page, plot, tag

    steps = [h["step"] for h in history]
    column = lambda key: [h.get(key) for h in history]  # noqa: E731

    def line(name: str, ys: list, **style) -> dict:
        return {"type": "scatter", "mode": "lines+markers", "name": name, "x": steps, "y": finite(ys), **style}

    def axes(y_title: str, **y) -> dict:
        return {"xaxis": {"title": {"text": "GRPO step"}}, "yaxis": {"title": {"text": y_title}, **y}}

    alphas = sorted({k for h in history for k in h if k.startswith("spec/alpha_")})
    acceptance = [line(k.split("/")[1], column(k)) for k in alphas]
    if alphas:
        per_round = [h.get("spec/mean_accept_len", float("nan")) / (len(alphas) + 1) for h in history]
        acceptance.append(line("mean accept len/(γ+1)", per_round, mode="lines", line={"dash": "dash"}))
    rewards = [line(k.split("/")[1], column(k)) for k in ("grpo/reward", "grpo/correct", "grpo/format")]
    plots = [plot("acceptance", acceptance, axes("acceptance", range=[0, 1.02]), height=300),
             plot("entropy", [line("entropy", column("grpo/entropy"))], axes("nats"), height=300),
             plot("reward", rewards, axes("reward"), height=300)]
    titles = ("draft acceptance (per position α_i, mean accept length / (γ+1))",
              "policy entropy H(π_T) of the sampled distribution on response tokens (nats)", "reward")
    body = tag("h1", "GRPO with speculative rollouts") + "".join(tag("h2", esc(t)) + p for t, p in zip(titles, plots))
    return page("GRPO with speculative rollouts", body, plots=plots)
