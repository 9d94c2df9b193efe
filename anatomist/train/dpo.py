"""DPO on a real causal LM with a frozen, cached bottom: `train_dpo(model, tokenizer, pairs, cfg, out)`.

Loss (DESIGN.md "Reward shaping", `anatomist.shape.losses.dpo_loss`): per pair
    L = −log σ(β·Δθ − offset)   (sigmoid)   or   (Δθ − offset/β − 1/(2β))²   (ipo)
with Δθ from sequence log-probs summed over response tokens times the pair's token-filter mask
(the same mask on policy and reference), and offset = Σ_k λ_k Δc_k from `ShapedPair.offset`.

How it stays practical on 2 CPU cores (and cheap on a GPU):
- `train_layers = N` trains the top N decoder blocks and the final norm; the embedding and the
  tied LM head stay frozen. The frozen bottom (blocks [0, L − N)) is run ONCE per sequence and
  its output is cached (`anatomist.train.split`); it is identical for policy and reference, so the
  reference also runs only the top, once, before training. Each step then runs N blocks forward
  and backward from the cached states, plus the LM head on response positions only.
  This is still real DPO on the real model: the policy is the full model with its top N blocks
  updated; only parameters that receive no update are not recomputed.
- Cost (SmolLM2-135M): the precompute is one full forward per sequence (≈ 213 MFLOP per token
  through 30 blocks, + 56 MFLOP per response token for the LM head over 49k tokens); a training
  step per token costs 3 × N blocks (N = 4: 85 MFLOP) + LM head forward and backward per response
  token (112 MFLOP). Prompt and padding positions never reach the LM head.
- Chosen for the organism train split (~1,240 pairs, ~150 tokens per sequence of which ~96 are
  response): train_layers = 4 of 30, max_length = 256, max_response_tokens = 128, 4 pairs ×
  grad_accum 2 = 8 pairs per step, one epoch (155 steps), lr 2e-5 cosine, 10% warmup, β = 0.1.
  That is ≈ 150 TFLOP ≈ 18–36 min on two uncontended cores (this machine's fp32 matmul runs at
  65–77 GFLOP/s per core quiet; 35 per core-second was measured under load: 128 HH pairs took
  400 CPU-s). For a safe margin use max_response_tokens = 64 and train_layers = 2 (≈ 100 TFLOP).
  On one H100 the same epoch (random weights of SmolLM2's shape) took 16 s (N = 4) and 50 s
  (all 30 blocks). A run shorter than an epoch precomputes only the pairs it visits.
- `benchmarks/dpo_speed.py` (4 HH pairs ≤ 160 tokens, N = 4, 1 thread, median of 7 interleaved
  rounds on the contended machine): anatomist 6.5 s vs TRL DPOTrainer 32.4 s per step (0.20×);
  shaped ÷ plain = 1.00.

Preventative steering (`steer=(layer, vector)`): the vector is added to the policy's residual
after block `layer` on response tokens only (`anatomist.shape.steer.add_to_residual`); never on
the reference (precomputed without it). It must act during training on states that are recomputed,
so `layer` ≥ L − N − 1: a trained block, or the cached boundary itself (the vector is then added
to the cached h on response tokens). Steering lower would change states that are cached, and
raises. E.g. an audit at layer 15 of 30 needs train_layers ≥ 14.

Per-concept leakage (`concept_deltas={name: [Δc per pair]}`): `dpo/leak/<name>`, the correlation
of the implicit reward margin with the concept's Δc over recent pairs (`anatomist.train.metrics`).

Checkpoints (`checkpoint.pt`, atomic, every `ckpt_every` steps): trainable parameters, AdamW and
scheduler state, torch RNG, step, config and metric history. Batches are a pure function of
(seed, step), so a killed run resumed from its checkpoint ends with exactly the parameters of an
uninterrupted one. Output: metrics.jsonl, summary.json, policy/ (full model, safetensors,
`anatomist.models.load(out/"policy")` reads it) and, with LoRA, adapter/.

Data parallel (same global batch, gradients summed over ranks, rank 0 writes): `torchrun
--nproc-per-node N -m anatomist.train.distributed <anatomist dpo flags>` (anatomist.train.distributed).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from anatomist.errors import AnatomistError
from anatomist.fileio import atomic_path, atomic_write_text
from anatomist.parallel import DataParallel, lead_first
from anatomist.models.fingerprint import model_fingerprint
from anatomist.progress import progress_bar
from anatomist.shape.losses import LOSS_TYPES, DPOOutput, dpo_loss
from anatomist.shape.pairs import ShapedPair
from anatomist.shape.recipe import Shaped
from anatomist.shape.steer import Steer, add_to_residual
from anatomist.train.batches import (
    Batch,
    Seq,
    collate,
    encode_pairs,
    step_microbatches,
    tokens_key,
)
from anatomist.train.metrics import step_metrics, write_metrics
from anatomist.train.split import (
    SplitLM,
    StateCache,
    precompute,
    to_device,
)

log = logging.getLogger(__name__)

CKPT_NAME = "checkpoint.pt"
SCHEDULES = ("cosine", "linear", "constant")


@dataclass(frozen=True)
class DPOConfig:
    beta: float = 0.1
    loss_type: str = "sigmoid"        # sigmoid | ipo
    lr: float = 2e-5
    epochs: float = 1.0
    steps: int | None = None          # overrides epochs
    batch_size: int = 4               # pairs per micro-batch
    grad_accum: int = 2               # micro-batches per optimizer step
    schedule: str = "cosine"          # cosine | linear | constant, after linear warmup
    warmup_ratio: float = 0.1
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    train_layers: int | None = 4      # top blocks trained (None = all)
    lora_r: int = 0                   # > 0: LoRA adapters on the trained blocks instead of full weights
    lora_alpha: float = 16.0
    max_length: int = 256
    max_response_tokens: int | None = 128
    ckpt_every: int = 25
    seed: int = 0
    precompute_batch: int = 16
    leak_window: int = 64

    def __post_init__(self):
        if self.loss_type not in LOSS_TYPES:
            raise AnatomistError(f"loss_type must be one of {', '.join(LOSS_TYPES)}, got {self.loss_type!r}")
        if self.schedule not in SCHEDULES:
            raise AnatomistError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        for name in ("batch_size", "grad_accum", "ckpt_every", "max_length", "precompute_batch", "leak_window"):
            if getattr(self, name) < 1:
                raise AnatomistError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.beta <= 0 or self.lr <= 0 or self.epochs <= 0:
            raise AnatomistError(f"beta, lr and epochs must be > 0 (got {self.beta}, {self.lr}, {self.epochs})")
        if self.steps is not None and self.steps < 1:
            raise AnatomistError(f"steps must be >= 1, got {self.steps}")
        if self.train_layers is not None and self.train_layers < 1:
            raise AnatomistError(f"train_layers must be >= 1 (or None for all), got {self.train_layers}")
        if self.lora_r < 0 or not 0 <= self.warmup_ratio < 1:
            raise AnatomistError(f"need lora_r >= 0 and 0 <= warmup_ratio < 1 (got {self.lora_r}, {self.warmup_ratio})")


class DPOResult(NamedTuple):
    model: torch.nn.Module  # the trained policy (LoRA merged)
    history: list[dict]
    out_dir: Path
    stopped_at: int | None = None  # the step a monitor alarm stopped the run at (None: it was not stopped)


# ----------------------------------------------------------------------------- pure functions

def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the peak lr at optimizer step `step` (0-based): linear warmup, then decay to 0."""
    if step < warmup:
        return (step + 1) / warmup
    t = min((step - warmup) / max(total - warmup, 1), 1.0)
    return {"cosine": 0.5 * (1 + math.cos(math.pi * t)), "linear": 1 - t, "constant": 1.0}[schedule]


def sequence_sums(token_logps: torch.Tensor, keep: torch.Tensor, rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Σ_t keep_t · logp_t per row [n_rows] from flat response-token values [N]. A one-hot matmul
    rather than index_add: index_add uses atomics on CUDA, which would make resumed runs differ."""
    onehot = rows[None, :] == torch.arange(n_rows, device=rows.device)[:, None]        # [n_rows, N]
    return (onehot.to(token_logps.dtype) * keep.to(token_logps.dtype)) @ token_logps


def batch_dpo(split: SplitLM, cache: StateCache, batch: Batch, offsets: torch.Tensor, cfg: DPOConfig,
              device, steer: Steer | None = None, top=None) -> DPOOutput:
    """Per-pair DPO outputs for one micro-batch of B pairs (rows: B chosen, then B rejected).
    top(h, attention_mask) → final hidden: default `split.top`; a functional variant
    (`split.top_with`) makes the losses a function of given parameter values (forward-mode AD)."""
    top = top or split.top
    batch = to_device(batch, device)
    h = cache.batch_hidden(batch, split, device)                              # [2B, T, D]
    if steer is None:
        final = top(h, batch.attention_mask)
    elif steer.layer % len(split.blocks) == split.boundary - 1:  # the cached boundary itself: add to h_k
        vec = steer.vector.to(device=device, dtype=h.dtype)
        final = top(h + batch.response[..., None].to(h.dtype) * vec, batch.attention_mask)
    else:  # preventative steering: policy forward only, response tokens only
        with add_to_residual(split.model, steer.layer, steer.vector, positions=batch.response):
            final = top(h, batch.attention_mask)
    n = len(batch.seq_index)
    policy = sequence_sums(split.response_logps(final, batch), batch.keep, batch.pred_rows, n)   # [2B]
    ref = sequence_sums(cache.batch_ref(batch).to(device), batch.keep, batch.pred_rows, n)       # [2B]
    pc, pr = policy.chunk(2)
    rc, rr = ref.chunk(2)
    return dpo_loss(pc, pr, rc, rr, beta=cfg.beta, offset=offsets.to(device), loss_type=cfg.loss_type)


def train_step(split: SplitLM, cache: StateCache, seqs: Sequence[Seq], micro: list[list[int]], offsets: torch.Tensor,
               cfg: DPOConfig, params: list[torch.Tensor], opt, sched, *, pad_id: int, device,
               steer: Steer | None = None, parallel: DataParallel | None = None
               ) -> tuple[list[tuple[list[int], DPOOutput]], float, float]:
    """One optimizer step over `micro` (lists of pair indices): gradient = mean over all their pairs.
    With `parallel`, this rank does its share of each micro-batch; then gradients are summed over ranks."""
    n_pairs = sum(len(m) for m in micro)
    outs = []
    for idx in (micro if parallel is None else parallel.share(micro)):
        o = batch_dpo(split, cache, collate(seqs, idx, pad_id), offsets[idx], cfg, device, steer)
        (o.loss.sum() / n_pairs).backward()
        outs.append((idx, o))
    if parallel is not None:
        outs = parallel.sync(params, micro, outs)
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
    lr = sched.get_last_lr()[0]
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    return outs, lr, grad_norm


# ----------------------------------------------------------------------------- setup helpers

def _boundary(model, cfg: DPOConfig) -> int:
    n = len(SplitLM(model, 0).blocks)
    if cfg.train_layers is not None and cfg.train_layers > n:
        raise AnatomistError(f"train_layers={cfg.train_layers} but the model has {n} blocks")
    return n - (cfg.train_layers or n)


def make_trainable(model, split: SplitLM, cfg: DPOConfig):
    """Freeze everything, then unfreeze the top blocks + final norm (or add LoRA to the top blocks)."""
    for p in model.parameters():
        p.requires_grad_(False)
    top = list(range(split.boundary, len(split.blocks)))
    if cfg.lora_r:
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(cfg.seed)  # LoRA's A init
        linear = sorted({name.rsplit(".", 1)[-1] for i in top for name, m in split.blocks[i].named_modules()
                         if isinstance(m, torch.nn.Linear)})
        lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0, target_modules=linear,
                          layers_to_transform=top)
        return get_peft_model(model, lcfg)
    for i in top:
        split.blocks[i].requires_grad_(True)
    norm = getattr(split.owner, "norm", None)
    if norm is not None:
        norm.requires_grad_(True)
    return model


def _check_steer(steer: Steer | None, split: SplitLM) -> None:
    if steer is None:
        return
    n = len(split.blocks)
    if not -n <= steer.layer < n:
        raise AnatomistError(f"steering layer {steer.layer} is out of range: the model has {n} blocks")
    if steer.layer % n < split.boundary - 1:
        raise AnatomistError(f"steering at layer {steer.layer} must happen on the cached boundary or above it (the "
                             f"output of block {split.boundary - 1} or later): use train_layers >= {n - 1 - steer.layer % n}")


class Prepared(NamedTuple):
    seqs: list[Seq]
    split: SplitLM
    cache: StateCache
    key: str
    pad_id: int


def prepare(model, tokenizer, pairs: Sequence[ShapedPair], cfg: DPOConfig, *, cache_dir=None, device="cpu",
            steer: Steer | None = None, steps: int | None = None, progress: bool = True) -> Prepared:
    """Tokenize, then run the frozen bottom and the reference once (cached on disk by settings hash)
    for the pairs that `steps` optimizer steps visit (default all pairs: a run shorter than an
    epoch computes only what it uses)."""
    seqs = encode_pairs(tokenizer, pairs, max_length=cfg.max_length, max_response_tokens=cfg.max_response_tokens)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    split = SplitLM(model, _boundary(model, cfg))
    _check_steer(steer, split)
    visited = range(len(pairs)) if steps is None else visited_pairs(pair_lengths(seqs), cfg, steps)
    needed = [r for i in visited for r in (2 * i, 2 * i + 1)]
    key = _settings_key(model, [seqs[r] for r in needed], split.boundary)
    cache = precompute(split, seqs, Path(cache_dir or _default_cache()) / key, pad_id=pad_id, needed=needed,
                       batch_size=cfg.precompute_batch, device=device, progress=progress)
    return Prepared(seqs, split, cache, key, pad_id)


def _settings_key(model, seqs: Sequence[Seq], boundary: int) -> str:
    import hashlib

    return hashlib.sha256(f"{model_fingerprint(model)}|{boundary}|{tokens_key(seqs)}".encode()).hexdigest()[:20]


def pair_lengths(seqs: Sequence[Seq]) -> list[int]:
    return [len(seqs[2 * i].ids) + len(seqs[2 * i + 1].ids) for i in range(len(seqs) // 2)]


def visited_pairs(lengths: Sequence[int], cfg: DPOConfig, steps: int) -> list[int]:
    """Pair indices that optimizer steps [0, steps) train on."""
    return sorted({i for s in range(steps) for m in step_microbatches(lengths, cfg.batch_size, cfg.grad_accum,
                                                                       cfg.seed, s) for i in m})


def _default_cache() -> Path:
    from anatomist.models.loading import cache_root

    return cache_root() / "dpo"


def shaping_key(pairs) -> str:
    """Hash of what shaping adds beyond the tokens (offsets, token masks), so a checkpoint of a run
    shaped one way is never resumed as another (the tokens key already covers inoculation prompts)."""
    import hashlib

    h = hashlib.sha256()
    for p in pairs:
        h.update(repr((float(p.offset), p.chosen_token_mask, p.rejected_token_mask)).encode())
    return h.hexdigest()[:20]


def _total_steps(n_pairs: int, cfg: DPOConfig) -> int:
    if cfg.steps is not None:
        return cfg.steps
    per_epoch = -(-n_pairs // cfg.batch_size)
    return max(1, math.ceil(cfg.epochs * per_epoch / cfg.grad_accum))


def _trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def _save_ckpt(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


# ----------------------------------------------------------------------------- the loop

def train_dpo(model, tokenizer, pairs: Sequence[ShapedPair] | Shaped, cfg: DPOConfig, out_dir: str | os.PathLike, *,
              steer: Steer | tuple | None = None, concept_deltas: Mapping[str, Sequence[float]] | None = None,
              cache_dir: str | os.PathLike | None = None, stop_after: int | None = None,
              save_model: bool = True, progress: bool = True, parallel: DataParallel | None = None,
              monitor=None) -> DPOResult:
    """Train (or resume) DPO on `pairs`; writes checkpoints, metrics and the final policy into out_dir.

    `model` is modified in place (its top blocks are trained). `pairs` may be a `Shaped`
    (`anatomist.shape.recipe.apply`): its steering and concept deltas are then used, and must not
    be passed again. `stop_after` ends the run after that many optimizer steps without a final
    checkpoint, as a kill would (for tests). Under torchrun (an initialized process group) it runs
    data-parallel: `anatomist.train.distributed`.

    `monitor` (`anatomist.monitor.ConceptMonitor`): a point before training and every
    `monitor.every` steps (and at the last), written to out_dir/monitor.jsonl on the lead process;
    with `monitor.stop_on_alarm`, the run stops at the first checkpoint after an alarm (resumable:
    `result.stopped_at` says where)."""
    from accelerate import Accelerator

    if isinstance(pairs, Shaped):
        if steer is not None or concept_deltas is not None:
            raise AnatomistError("steer / concept_deltas come with the Shaped pairs: do not pass them as well")
        pairs, steer, concept_deltas = pairs.pairs, pairs.steer, pairs.concept_deltas
    if not pairs:
        raise AnatomistError("no preference pairs to train on")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = Accelerator().device
    parallel = parallel or DataParallel.current()
    lead = parallel is None or parallel.lead  # the one process that writes files
    progress = progress and lead
    model.to(device).eval()  # eval: no dropout, so policy == reference at step 0 exactly
    steer = Steer(*steer) if steer is not None else None
    deltas = {k: torch.tensor([float(x) for x in v]) for k, v in (concept_deltas or {}).items()}
    for name, d in deltas.items():
        if len(d) != len(pairs):
            raise AnatomistError(f"concept {name!r}: {len(d)} deltas for {len(pairs)} pairs")

    # 1. Tokenize; run the frozen bottom and the reference once (cached on disk by settings hash).
    total = _total_steps(len(pairs), cfg)
    with lead_first(parallel):  # other ranks then read rank 0's cache
        seqs, split, cache, key, pad_id = prepare(model, tokenizer, pairs, cfg, cache_dir=cache_dir, device=device,
                                                  steer=steer, steps=total, progress=progress)

    # 2. Policy parameters, optimizer and schedule; resume from a checkpoint when there is one.
    policy = make_trainable(model, split, cfg)
    params = [p for p in policy.parameters() if p.requires_grad]
    warmup = int(cfg.warmup_ratio * total)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, total, warmup, cfg.schedule))
    run_id = {"config": asdict(cfg), "data": key, "shaping": shaping_key(pairs), "steer": None if steer is None else
              [steer.layer, float(steer.vector.double().sum()), float(steer.vector.norm())]}
    ckpt, metrics_path = out / CKPT_NAME, out / "metrics.jsonl"
    start, history = 0, []
    if ckpt.is_file():
        state = torch.load(ckpt, weights_only=True, map_location="cpu")
        if json.loads(state["run"]) != run_id:
            raise AnatomistError(f"{ckpt}: checkpoint belongs to a run with other settings or data; "
                                 "use another --out folder or delete it")
        named = dict(policy.named_parameters())
        with torch.no_grad():
            for n, t in state["trainable"].items():
                named[n].copy_(t)
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        torch.set_rng_state(state["rng"])
        start, history = state["step"], state["history"]
        log.info("resuming %s at step %d of %d", ckpt, start, total)
    if lead:
        write_metrics(metrics_path, history)
    monitor = monitor if lead else None
    if monitor is not None:
        monitor.start(out, start)
        if monitor.stop_on_alarm and parallel is not None:
            raise AnatomistError("--stop-on-alarm is not supported under torchrun (only rank 0 monitors)")
        if monitor.due(start, total):
            monitor.measure(policy, tokenizer, start)
    stopped_at = None
    lengths = pair_lengths(seqs)
    offsets = torch.tensor([float(p.offset) for p in pairs])
    window = deque(maxlen=cfg.leak_window)  # (pair index, margin) of recent pairs
    end = total if stop_after is None else min(stop_after, total)

    # 3. The loop: one optimizer step = grad_accum micro-batches; loss = mean over the step's pairs.
    with progress_bar("dpo", total=total, completed=start, enabled=progress) as bar:
        for step in range(start, end):
            t0 = time.perf_counter()
            micro = step_microbatches(lengths, cfg.batch_size, cfg.grad_accum, cfg.seed, step)
            outs, lr, grad_norm = train_step(split, cache, seqs, micro, offsets, cfg, params, opt, sched,
                                             pad_id=pad_id, device=device, steer=steer, parallel=parallel)
            row = step_metrics(outs, step, lr, grad_norm, time.perf_counter() - t0, window, deltas)
            history.append(row)
            bar.advance(1)
            if not lead:
                continue
            with open(metrics_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
            if monitor is not None and monitor.due(step + 1, total):
                monitor.measure(policy, tokenizer, step + 1)  # its own generator: the torch RNG is untouched
            if (step + 1) % cfg.ckpt_every == 0 or step + 1 == total:
                _save_ckpt(ckpt, {"step": step + 1, "trainable": _trainable_state(policy), "opt": opt.state_dict(),
                                  "sched": sched.state_dict(), "rng": torch.get_rng_state(),
                                  "run": json.dumps(run_id), "history": history})
                if monitor is not None and monitor.stop_on_alarm and monitor.alarm_fired and step + 1 < total:
                    log.warning("monitor: an alarm fired; stopped at the checkpoint of step %d (rerun to resume)",
                                step + 1)
                    stopped_at = end = step + 1
                    break

    # 4. Save the policy so evaluation can load it like any model.
    if cfg.lora_r:
        if end == total and save_model and lead:
            policy.save_pretrained(out / "adapter", safe_serialization=True)
        model = policy.merge_and_unload() if end == total else model
    if end == total and lead:
        _finish(model, tokenizer, history, cfg, out, total, save_model)
    if monitor is not None:
        monitor.finish()
    if parallel is not None:
        parallel.barrier()  # the others return once rank 0's files exist
    return DPOResult(model, history, out, stopped_at)


def _finish(model, tokenizer, history: list[dict], cfg: DPOConfig, out: Path, total: int, save_model: bool) -> None:
    last = history[-max(1, min(20, len(history))):]
    keys = sorted({k for h in last for k in h if k.startswith("dpo/")})
    mean = {k: sum(h[k] for h in last if k in h) / sum(k in h for h in last) for k in keys}
    summary = {"steps": total, "config": asdict(cfg), "final (mean of the last <= 20 steps)": mean}
    if save_model:
        import shutil

        tmp = out / ".policy.tmp"  # one fixed name: a rerun after a kill here clears what it left
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        shutil.rmtree(out / "policy", ignore_errors=True)
        os.replace(tmp, out / "policy")
        summary["policy"] = str(out / "policy")
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
