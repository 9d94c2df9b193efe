"""Train an MTP draft head on the model's own samples (trunk frozen).

Data: the model samples responses to prompts at a given temperature (plain sampling); the trunk
is run once over each sequence and its final hidden states h are kept (they never change: the
trunk is frozen), with the full-vocabulary log-normaliser per position. Each step then costs only
the head plus the draft-vocabulary slice of the LM head that forms the targets. Depth 1 runs over
every position (its states are the attention keys); deeper depths and the loss over a random
subset of chains per sequence (`chains_per_seq`), which cuts the cost of a step several-fold.

Targets (DESIGN.md, "Draft losses"): depth k of the chain starting at position i predicts
x_{i+k+1}; its target is the model's own detached next-token distribution p at position i+k,
softmax of the trunk logits in fp32. Chains count only when they start in the response (that is
where drafting happens) and all γ targets exist (the chain mask).

Checkpoints are written atomically (temp file + rename). Batches are a pure function of
(seed, step), so resuming from a checkpoint reproduces an uninterrupted run exactly.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Mapping, NamedTuple

import torch
import torch.nn.functional as F

from anatomist.errors import AnatomistError
from anatomist.fileio import atomic_path, atomic_write_text
from anatomist.spec_decode.generate import generate
from anatomist.spec_decode.head import MTPHead, save_head
from anatomist.spec_decode.heads import build_head
from anatomist.spec_decode.losses import LOSSES

log = logging.getLogger(__name__)

__all__ = ["Samples", "TrainConfig", "self_samples", "trunk_states", "target_stats", "draft_vocab_ids", "head_loss",
           "train_head"]

CKPT_NAME = "checkpoint.pt"


@dataclass(frozen=True)
class TrainConfig:
    loss: str = "e2e_tv"
    gamma: int = 3
    steps: int = 300
    batch_size: int = 8
    lr: float = 1e-3
    warmup: int = 20
    draft_vocab: int = 8192  # 0 = full vocabulary
    seed: int = 0
    ckpt_every: int = 50
    chains_per_seq: int = 32  # chains drawn per sequence and step (0 = all); depth 1 always sees all
    head: str = "mtp"  # head kind, a key of spec_decode.heads.HEADS ("mtp", "eagle3")

    def __post_init__(self):
        from anatomist.spec_decode.heads import HEADS

        if self.head not in HEADS:
            raise AnatomistError(f"head must be one of {', '.join(HEADS)}, got {self.head!r}")
        if self.loss not in LOSSES:
            raise AnatomistError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.chains_per_seq < 0:
            raise AnatomistError(f"chains_per_seq must be >= 0, got {self.chains_per_seq}")
        for name in ("gamma", "steps", "batch_size", "ckpt_every"):
            if getattr(self, name) < 1:
                raise AnatomistError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.draft_vocab < 0 or self.warmup < 0:
            raise AnatomistError(f"need lr > 0, draft_vocab >= 0, warmup >= 0 (got {self.lr}, "
                                 f"{self.draft_vocab}, {self.warmup})")


def config_key(cfg: TrainConfig) -> dict:
    """asdict(cfg) without `head` when it is the default "mtp", so checkpoints and cache keys made
    before head kinds existed stay valid."""
    d = asdict(cfg)
    if d["head"] == "mtp":
        d.pop("head")
    return d


class Samples(NamedTuple):
    sequences: list[list[int]]  # prompt + response token ids
    prompt_lens: list[int]


def self_samples(model, prompts: list[list[int]], *, temperature: float = 1.0, max_new_tokens: int = 128,
                 batch_size: int = 16, seed: int = 0, eos_token_id=None,
                 progress: Callable | None = None) -> Samples:
    """The model's own responses to prompts (plain sampling), one per prompt."""
    gen = torch.Generator().manual_seed(seed)
    seqs, plens = [], []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        out = generate(model, chunk, temperature=temperature, max_new_tokens=max_new_tokens,
                       eos_token_id=eos_token_id, generator=gen)
        for p, t in zip(chunk, out.tokens):
            seqs.append(list(p) + t)
            plens.append(len(p))
        if progress:
            progress(len(chunk))
    return Samples(seqs, plens)


@torch.no_grad()
def trunk_states(model, sequences: list[list[int]], batch_size: int = 8,
                 layers: tuple[int, ...] = ()) -> list[torch.Tensor]:
    """Final hidden states h [L_i, H] of the frozen trunk for each sequence (right padding), with
    the residual states entering `layers` packed after h ([L_i, (1+A)·H]) for heads that read them."""
    out = []
    for start in range(0, len(sequences), batch_size):
        chunk = sequences[start:start + batch_size]
        L = max(len(s) for s in chunk)
        dev = model.get_input_embeddings().weight.device
        ids = torch.zeros(len(chunk), L, dtype=torch.long, device=dev)
        att = torch.zeros(len(chunk), L, dtype=torch.long, device=dev)
        for b, s in enumerate(chunk):
            ids[b, :len(s)] = torch.tensor(s, device=dev)
            att[b, :len(s)] = 1
        o = model.model(input_ids=ids, attention_mask=att, output_hidden_states=bool(layers))
        h = torch.cat([o.last_hidden_state] + [o.hidden_states[i] for i in layers], dim=-1)
        out += [h[b, :len(s)].clone() for b, s in enumerate(chunk)]
    return out


@torch.no_grad()
def target_stats(model, states: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per position [L_i, 2]: log-normaliser lse = logsumexp(z) of the full-vocabulary trunk
    logits z, and the policy entropy H(p). With lse cached, a step forms p on the draft vocabulary
    as exp(z_V' − lse) without the full LM head (the largest cost at 49k tokens)."""
    W = model.get_output_embeddings().weight
    out = []
    for h in states:
        z = F.linear(h[..., :W.shape[1]], W).float()  # [L, V] (h: first H columns of packed states)
        lse = torch.logsumexp(z, -1)
        ent = lse - (torch.softmax(z, -1) * z).sum(-1)
        out.append(torch.stack([lse, ent], dim=-1))
    return out


def draft_vocab_ids(sequences: list[list[int]], size: int, vocab_size: int,
                    always: tuple[int, ...] = ()) -> torch.Tensor:
    """The `size` most frequent token ids in the sequences (plus `always`), sorted."""
    if size <= 0 or size >= vocab_size:
        return torch.arange(vocab_size)
    counts = torch.zeros(vocab_size, dtype=torch.long)
    for s in sequences:
        counts += torch.bincount(torch.tensor(s), minlength=vocab_size)
    counts[list(always)] = counts.max() + 1
    return torch.topk(counts.double() + torch.linspace(0, 0.5, vocab_size, dtype=torch.float64).flip(0),
                      size).indices.sort().values


def head_batch(states, stats, samples: Samples, idx: list[int], gamma: int, chains_per_seq: int,
               gen: torch.Generator):
    """Right-padded hidden [B, T, H], tokens [B, T], lse/entropy [B, T, 2], chain starts [B, C]
    and their validity [B, C]: up to C chains per sequence drawn from those the chain mask allows
    (start in the response, at the last prompt position or later; all γ targets exist)."""
    L = max(len(samples.sequences[i]) for i in idx)
    H, dev = states[idx[0]].shape[-1], states[idx[0]].device
    h = torch.zeros(len(idx), L, H, device=dev)
    st = torch.zeros(len(idx), L, 2, device=dev)
    tok = torch.zeros(len(idx), L, dtype=torch.long, device=dev)
    picks = []
    for b, i in enumerate(idx):
        s, P = samples.sequences[i], samples.prompt_lens[i]
        h[b, :len(s)], st[b, :len(s)] = states[i], stats[i]
        tok[b, :len(s)] = torch.tensor(s, device=dev)
        allowed = torch.arange(P - 1, max(len(s) - gamma, P - 1))  # need i + γ ≤ L − 1
        if chains_per_seq and len(allowed) > chains_per_seq:
            allowed = allowed[torch.randperm(len(allowed), generator=gen)[:chains_per_seq]].sort().values
        picks.append(allowed)
    C = max(len(a) for a in picks)
    chains = torch.zeros(len(idx), C, dtype=torch.long)
    valid = torch.zeros(len(idx), C, dtype=torch.bool)
    for b, a in enumerate(picks):
        chains[b, :len(a)], valid[b, :len(a)] = a, True
    return h, tok, st, chains.to(dev), valid.to(dev)


def head_loss(head: MTPHead, hidden: torch.Tensor, tokens: torch.Tensor, stats: torch.Tensor,
              chains: torch.Tensor, valid: torch.Tensor, loss: str, gamma: int
              ) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss of the head on a batch. hidden [B, T, H] (detached trunk states), tokens [B, T],
    stats [B, T, 2] (lse, H(p)) from `target_stats`, chains [B, C] start positions, valid [B, C]
    the chain mask."""
    B, T, _ = hidden.shape
    g = head.chain_states(hidden, tokens, gamma, chains)  # [B, C, γ, H]
    q_logits = head.logits(g)  # [B, C, γ, V']
    with torch.no_grad():
        rows = torch.arange(B, device=hidden.device)[:, None, None]
        tgt = (chains[..., None] + torch.arange(1, gamma + 1, device=hidden.device)).clamp(max=T - 1)  # [B, C, γ]: position i+k
        z = F.linear(hidden[rows, tgt][..., :head._lm.shape[1]], head._lm).float()  # [B, C, γ, V'] trunk logits on the draft vocab
        p = torch.exp(z - stats[rows, tgt, 0][..., None])  # restricted to V', not renormalised
        ent = stats[rows, tgt, 1][:, :, 0]  # [B, C] H(p) at the depth-1 target
    value, metrics = LOSSES[loss](p, q_logits, valid)
    n = valid.sum().clamp(min=1)
    metrics["mtp/policy_entropy"] = float((ent * valid).sum() / n)
    metrics["mtp/loss"] = float(value.detach())
    metrics["mtp/draft_vocab_mass"] = float((p[:, :, 0].sum(-1) * valid).sum() / n)
    return value, metrics


@torch.no_grad()
def head_alphas(heads: Mapping[str, MTPHead], model, samples: Samples, batch_size: int = 8) -> dict[str, list[float]]:
    """Expected acceptance per depth, α_i = Σ_v min(p_i, q_i), of each head on every chain of the
    samples: teacher-forced on the sampled tokens, against the trunk's own p (fp32), the mean over
    chains. One trunk pass serves every head, so heads compare on the same sequences (e.g. a stale
    head against a refreshed one on one policy's rollouts). The heads must be bound to `model`."""
    gamma = {h.config.gamma for h in heads.values()}
    assert len(gamma) == 1, f"heads with different γ: {gamma}"
    g = gamma.pop()
    usable = [i for i, (s, p) in enumerate(zip(samples.sequences, samples.prompt_lens)) if len(s) - p > g]
    sub = Samples([samples.sequences[i] for i in usable], [samples.prompt_lens[i] for i in usable])
    sums = {name: torch.zeros(g, dtype=torch.float64) for name in heads}
    n = 0
    # One trunk pass per set of packed layers (MTP heads read h only, EAGLE-3 heads h + aux states).
    for layers in dict.fromkeys(tuple(h.state_layers) for h in heads.values()):
        group = {name: h for name, h in heads.items() if tuple(h.state_layers) == layers}
        states = trunk_states(model, sub.sequences, layers=layers)
        stats = target_stats(model, states)
        n = 0
        for start in range(0, len(usable), batch_size):
            batch = head_batch(states, stats, sub, list(range(start, min(start + batch_size, len(usable)))), g, 0,
                               torch.Generator())  # chains_per_seq 0: every chain, the generator is not drawn from
            k = int(batch[-1].sum())
            for name, head in group.items():
                m = head_loss(head, *batch, "tv", g)[1]
                sums[name] += k * torch.tensor([m[f"mtp/alpha_{i + 1}"] for i in range(g)], dtype=torch.float64)
            n += k
    return {name: (s / n).tolist() if n else [float("nan")] * g for name, s in sums.items()}


def _lr(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(cfg.steps - cfg.warmup, 1)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))


def _save_ckpt(path: Path, step: int, head: MTPHead, opt, cfg: TrainConfig, history: list) -> None:
    with atomic_path(path) as tmp:
        torch.save({"step": step, "head": head.trainable_state(), "opt": opt.state_dict(),
                    "config": config_key(cfg), "history": history}, tmp)


def train_head(model, samples: Samples, cfg: TrainConfig, out_dir: str | os.PathLike, **kw) -> MTPHead:
    """Train (or resume) a head; writes checkpoints and finally the head into out_dir.

    kw: states, stats, base_model, eos_token_id, progress, extra, and `stop_after`, which ends the
    run after that many total steps (as if interrupted) — for tests.
    Returns the head; `head.history` holds the per-step metrics (also in metrics.jsonl).
    The trunk is frozen while the head trains and handed back as it came: a process that trains
    a head and then the model (grpo_step.py: the head, then GRPO) must find its flags unchanged.
    """
    was = [(p, p.requires_grad) for p in model.parameters()]
    try:
        return _train_head(model, samples, cfg, out_dir, **kw)
    finally:
        for p, flag in was:
            p.requires_grad_(flag)


def _train_head(model, samples: Samples, cfg: TrainConfig, out_dir: str | os.PathLike, *,
                states: list[torch.Tensor] | None = None, stats: list[torch.Tensor] | None = None,
                base_model: str = "", eos_token_id: int | None = None,
                stop_after: int | None = None, progress: bool = True, extra: dict | None = None) -> MTPHead:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for p in model.parameters():
        p.requires_grad_(False)
    V = model.get_output_embeddings().weight.shape[0]
    vocab = draft_vocab_ids(samples.sequences, cfg.draft_vocab, V,
                            always=(eos_token_id,) if eos_token_id is not None else ())
    head = build_head(cfg.head, model, vocab_ids=vocab, gamma=cfg.gamma, draft_vocab=cfg.draft_vocab,
                      base_model=base_model, loss=cfg.loss, extra=dict(extra or {}))
    H = model.config.hidden_size
    if states is None:
        states = trunk_states(model, samples.sequences, layers=tuple(head.state_layers))
    elif states[0].shape[-1] != H * (1 + len(head.state_layers)):
        raise AnatomistError(f"head {cfg.head!r} needs trunk states packed with layers {list(head.state_layers)} "
                             f"(width {H * (1 + len(head.state_layers))}), got width {states[0].shape[-1]}")
    if stats is None:
        stats = target_stats(model, states)
    head.train()
    params = [p for p in head.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    ckpt = out / CKPT_NAME
    start, history = 0, []
    if ckpt.is_file():
        state = torch.load(ckpt, weights_only=True)
        if state["config"] != config_key(cfg):
            raise AnatomistError(f"{ckpt}: checkpoint was trained with a different config; "
                                 f"use another output folder or delete it")
        head.load_state_dict(state["head"], strict=False)
        opt.load_state_dict(state["opt"])
        start, history = state["step"], state["history"]
        log.info("resuming %s at step %d", ckpt, start)
    usable = [i for i, (s, P) in enumerate(zip(samples.sequences, samples.prompt_lens)) if len(s) - P > cfg.gamma]
    if not usable:
        raise AnatomistError(f"no sample has more than gamma={cfg.gamma} response tokens to train on")
    end = cfg.steps if stop_after is None else min(stop_after, cfg.steps)

    from rich.progress import Progress

    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task(f"mtp train ({cfg.loss})", total=cfg.steps, completed=start)
        for step in range(start, end):
            g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
            pick = torch.randperm(len(usable), generator=g)[:cfg.batch_size].tolist()
            h, tok, st, chains, valid = head_batch(states, stats, samples, [usable[i] for i in pick], cfg.gamma,
                                               cfg.chains_per_seq, g)
            for group in opt.param_groups:
                group["lr"] = _lr(step, cfg)
            loss, metrics = head_loss(head, h, tok, st, chains, valid, cfg.loss, cfg.gamma)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            history.append({"step": step, **metrics})
            bar.update(task, advance=1, description=f"mtp train ({cfg.loss}) α1={metrics['mtp/alpha_1']:.2f}")
            if (step + 1) % cfg.ckpt_every == 0 or step + 1 == end:
                _save_ckpt(ckpt, step + 1, head, opt, cfg, history)
    head.eval()
    head.history = history
    if end == cfg.steps:
        last = history[-20:]
        head.config.extra.update({k: sum(h[k] for h in last) / len(last) for k in last[-1] if k != "step"})
        head.config.extra.update({"steps": cfg.steps, "train_config": asdict(cfg)})
        save_head(head, out)
        import json

        atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in history))
    return head
