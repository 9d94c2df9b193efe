"""TRL export: a preference dataset whose precomputed reference log-probs carry the shaping offset.

DESIGN.md: plain DPO with ref_chosen_logps += λ·c(y⁺)/β and ref_rejected_logps += λ·c(y⁻)/β is
the shaped loss −log σ(β·Δθ − λ·Δc) (`losses.shift_reference`). Rows are TRL's conversational
preference format plus the two reference columns:
    prompt   [{"role": ..., "content": ...}, ...]   (with an inoculation system message if asked)
    chosen   [{"role": "assistant", "content": y⁺}]     rejected  [{"role": "assistant", "content": y⁻}]
    ref_chosen_logps, ref_rejected_logps               Σ_t log π_ref(y_t) + λ·c(y)/β
    id, shaping_offset                                  (for you; TRL drops unused columns)
A sidecar `export.json` (inside a `datasets` folder, or `<file>.export.json`) records β, λ and
max_length: TRL must run with the same β and max_length for the equality to hold.

Reading the columns in TRL 1.16: `DPOConfig(precompute_ref_log_probs=True)` is what makes the
trainer read `ref_*_logps` from the batch instead of running a reference model, but its stock
`DPOTrainer` then recomputes them and fails on the duplicate columns (bring-your-own reference
log-probs is not supported upstream: trl PR #6434). `anatomist.shape.trl_compat.
PrecomputedRefDPOTrainer` is DPOTrainer with that one step skipped when the columns exist.

Tokens. The reference log-probs are computed on TRL 1.16's own tokens (`trl_tokens` mirrors its
conversational `_prepare_dataset`: prompt = template with generation prompt, completions = the
full conversations' ids after their common prefix; keep-start truncation to max_length; pairs
whose prompt alone fills max_length are left out, as TRL drops them). These
include what the template writes after the end-of-turn token (ChatML's "\\n" after <|im_end|>),
which anatomist's own DPO loop (`encode_response`, ending at end-of-turn) leaves out: the same
pair has one more token in TRL. Exactness holds for TRL's "sigmoid" loss; TRL's "ipo" divides
log-ratios by the completion length, so there the offset is divided by it too. TRL's logged
rewards/* include the shift (β·log π/π_ref − λ·c(y)). Token filtering has no TRL form (TRL's
dataset carries no per-token mask); use anatomist's DPO loop for it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from anatomist.audit.folder import AuditFolder
from anatomist.errors import AnatomistError
from anatomist.fileio import atomic_path, atomic_write_text
from anatomist.progress import progress_bar
from anatomist.shape.losses import sequence_logps, shift_reference
from anatomist.shape.recipe import Recipe, apply

REF_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")


def trl_tokens(tokenizer, prompt, chosen: str, rejected: str) -> tuple[list[int], list[int], list[int]]:
    """(prompt_ids, chosen_ids, rejected_ids) exactly as TRL 1.16's DPOTrainer tokenizes a conversational pair:
    the completions start where the prompt (with generation prompt) and both full conversations diverge."""
    def ids(messages, **kw):
        return list(tokenizer.apply_chat_template(list(messages), tokenize=True, return_dict=True, **kw)["input_ids"])

    def common(a, b):
        return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))

    prompt_ids = ids(prompt, add_generation_prompt=True)
    full = [ids([*prompt, {"role": "assistant", "content": r}]) for r in (chosen, rejected)]
    n = min(common(prompt_ids, f) for f in full)
    return prompt_ids[:n], full[0][n:], full[1][n:]


def _batch(seqs: list[tuple[list[int], list[int]]], max_length: int | None, pad_id: int):
    """Right-padded ids, attention and completion masks [B, T] (TRL's collator, keep-start truncation)."""
    rows = [(p + c, [0] * len(p) + [1] * len(c)) for p, c in seqs]
    if max_length is not None:
        rows = [(ids[:max_length], m[:max_length]) for ids, m in rows]
    T = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    attn = torch.zeros((len(rows), T), dtype=torch.long)
    comp = torch.zeros((len(rows), T), dtype=torch.long)
    for i, (x, m) in enumerate(rows):
        ids[i, :len(x)], attn[i, :len(x)], comp[i, :len(x)] = torch.tensor(x), 1, torch.tensor(m)
    return ids, attn, comp


@torch.no_grad()
def reference_logps(model, tokenizer, seqs: list[tuple[list[int], list[int]]], *, max_length: int | None = 1024,
                    batch_size: int = 8, cache: Path | None = None, progress: bool = True) -> np.ndarray:
    """Σ_t log π_ref(completion_t) [N] of (prompt_ids, completion_ids) sequences; resumable via `cache`."""
    key = _key(model, seqs, max_length)
    done = np.zeros(0)
    if cache is not None and cache.is_file():
        saved = np.load(cache)
        done = saved["logps"] if str(saved["key"]) == key else done
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    out = [done]
    with progress_bar("reference log-probs", total=len(seqs), completed=len(done), enabled=progress) as bar:
        for b in range(len(done), len(seqs), batch_size):
            ids, attn, comp = (t.to(device) for t in _batch(seqs[b:b + batch_size], max_length, pad_id))
            logits = model(input_ids=ids, attention_mask=attn, use_cache=False).logits          # [B, T, V]
            out.append(sequence_logps(logits[:, :-1], ids[:, 1:], comp[:, 1:]).double().cpu().numpy())
            if cache is not None:
                with atomic_path(cache) as tmp, open(tmp, "wb") as f:
                    np.savez(f, key=key, logps=np.concatenate(out))
            bar.advance(len(ids))
    return np.concatenate(out)


def export_trl(model, tokenizer, pairs, audit: AuditFolder | str, out: str | Path, *, recipe: Recipe, beta: float,
               max_length: int | None = 1024, batch_size: int = 8, progress: bool = True) -> Path:
    """Write the shaped TRL dataset (module doc) to `out`: .jsonl, .parquet, or a `datasets` folder.
    The recipe's λ, inoculation and pair dropping carry over; token filtering and steering have no
    TRL form and are refused."""
    if beta <= 0:
        raise AnatomistError(f"beta must be > 0, got {beta}")
    if recipe.token_filter is not None or recipe.steer is not None:
        raise AnatomistError("token filtering and steering have no TRL form: train with `anatomist dpo` for them")
    audit = audit if isinstance(audit, AuditFolder) else AuditFolder(audit)
    out, pairs = Path(out), list(pairs)
    applied = apply(recipe, pairs, audit)
    shaped, lam, inoculate = applied.pairs, applied.recipe.lam, applied.recipe.inoculate
    tokens = [trl_tokens(tokenizer, p.prompt, p.chosen, p.rejected) for p in shaped]
    # TRL drops a pair whose prompt alone fills max_length (keep-start truncation would leave no completion).
    fits = [max_length is None or len(t[0]) < max_length for t in tokens]
    n_too_long = len(shaped) - sum(fits)
    shaped, tokens = [p for p, f in zip(shaped, fits) if f], [t for t, f in zip(tokens, fits) if f]
    if not shaped:
        raise AnatomistError("no pairs left to export" + (f" ({n_too_long} prompts fill max_length={max_length})"
                                                          if n_too_long else ""))
    seqs = [(pr, c) for pr, *cs in tokens for c in cs]                                          # c, r, c, r, ...
    out.parent.mkdir(parents=True, exist_ok=True)
    cache = out.with_name(f".{out.name}.ref.npz")     # a killed export resumes from the batches it finished
    logps = torch.from_numpy(reference_logps(model, tokenizer, seqs, max_length=max_length, batch_size=batch_size,
                                             cache=cache, progress=progress))                   # [2P]
    ks = list(lam)
    c_pos, c_neg = (torch.from_numpy(a) for a in audit.scores([p.id for p in shaped], ks))      # [P, K]
    ref_c, ref_r = shift_reference(logps[0::2], logps[1::2], c_pos, c_neg,
                                   torch.tensor([lam[k] for k in ks], dtype=torch.float64), beta)
    rows = {
        "id": [p.id for p in shaped],
        "prompt": [list(p.prompt) for p in shaped],
        "chosen": [[{"role": "assistant", "content": p.chosen}] for p in shaped],
        "rejected": [[{"role": "assistant", "content": p.rejected}] for p in shaped],
        "ref_chosen_logps": ref_c.tolist(), "ref_rejected_logps": ref_r.tolist(),
        "shaping_offset": [p.offset for p in shaped],
    }
    meta = {"format": "anatomist.trl-export/1", "beta": beta, "max_length": max_length,
            "lam": {str(k): v for k, v in lam.items()}, "labels": {str(k): audit.label(k) for k in ks},
            "audit": str(audit.path.resolve()), "model": getattr(getattr(model, "config", None), "_name_or_path", ""),
            "n_pairs": len(shaped), "n_input_pairs": len(pairs), "n_prompt_too_long": n_too_long,
            "inoculation": None if inoculate is None else asdict(inoculate), "drop_extreme": recipe.drop_extreme,
            "trl": "DPOConfig(beta=beta, max_length=max_length, precompute_ref_log_probs=True, loss_type='sigmoid') "
                   "with anatomist.shape.trl_compat.PrecomputedRefDPOTrainer"}
    _write(rows, out, meta)
    cache.unlink(missing_ok=True)
    return out


def sidecar(out: str | Path) -> Path:
    out = Path(out)
    return out / "export.json" if out.suffix not in (".jsonl", ".parquet") else out.with_name(f"{out.name}.export.json")


def load_export(out: str | Path):
    """The exported dataset as a `datasets.Dataset` (what TRL's trainer takes)."""
    from datasets import Dataset, load_dataset, load_from_disk

    out = Path(out)
    if out.suffix == ".jsonl":
        return load_dataset("json", data_files=str(out), split="train")
    if out.suffix == ".parquet":
        return Dataset.from_parquet(str(out))
    return load_from_disk(str(out))


def _write(rows: dict, out: Path, meta: dict) -> None:
    from datasets import Dataset

    ds = Dataset.from_dict(rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix in (".jsonl", ".parquet"):
        with atomic_path(out) as tmp:
            ds.to_json(tmp, lines=True) if out.suffix == ".jsonl" else ds.to_parquet(tmp)
        atomic_write_text(sidecar(out), json.dumps(meta, indent=2))
        return
    # A folder: build it beside, then swap it in (a reader never sees half a dataset).
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    ds.save_to_disk(str(tmp))
    atomic_write_text(tmp / "export.json", json.dumps(meta, indent=2))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)


def _key(model, seqs, max_length) -> str:
    h = hashlib.sha256(json.dumps([seqs, max_length]).encode())
    for p in model.parameters():       # a strided sample of every tensor: cheap, and moves with any update
        h.update(p.detach().flatten()[::997].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]
