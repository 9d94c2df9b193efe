"""DPO metrics per optimizer step (keys `dpo/...`), including per-concept leakage.

    dpo/loss, dpo/reward_margin (mean β·Δθ), dpo/accuracy (share of pairs with β·Δθ > 0),
    dpo/chosen_reward, dpo/rejected_reward (means of β·(logπ − logπ_ref)), dpo/lr, dpo/grad_norm
    (before clipping), dpo/step_seconds, and dpo/leak/<concept>: the Pearson correlation, over the
    last `leak_window` pairs seen, between the implicit reward margin β·Δθ and that concept's
    Δc = c(y⁺) − c(y⁻). Near 0: the learned reward does not track the concept; > 0: training
    teaches the policy to prefer it (what shaping with λ < 0 should prevent); < 0: to avoid it.
    It is undefined (absent) while every margin in the window is equal, e.g. at step 1.
"""

from __future__ import annotations

import json
from collections import deque
from pathlib import Path

import torch

from anatomist.fileio import atomic_write_text
from anatomist.shape.losses import DPOOutput


def leakage(margins: torch.Tensor, deltas: torch.Tensor) -> float | None:
    """Pearson r between reward margins [n] and concept deltas Δc [n]; None if either is constant."""
    m, d = margins.double() - margins.double().mean(), deltas.double() - deltas.double().mean()
    denom = (m.square().sum() * d.square().sum()).sqrt()
    return None if len(m) < 3 or denom <= 1e-12 else float((m * d).sum() / denom)


def step_metrics(outs: list[tuple[list[int], DPOOutput]], step: int, lr: float, grad_norm: float, seconds: float,
                 window: deque, deltas: dict[str, torch.Tensor]) -> dict:
    loss = torch.cat([o.loss.detach() for _, o in outs]).cpu()
    cr = torch.cat([o.chosen_reward for _, o in outs]).cpu()
    rr = torch.cat([o.rejected_reward for _, o in outs]).cpu()
    margin = cr - rr
    row = {"step": step + 1, "dpo/loss": float(loss.mean()), "dpo/reward_margin": float(margin.mean()),
           "dpo/accuracy": float((margin > 0).float().mean()), "dpo/chosen_reward": float(cr.mean()),
           "dpo/rejected_reward": float(rr.mean()), "dpo/lr": lr, "dpo/grad_norm": grad_norm,
           "dpo/step_seconds": seconds}
    window.extend(zip([i for idx, _ in outs for i in idx], margin.tolist()))
    if deltas and len(window) >= 3:
        idx = torch.tensor([i for i, _ in window])
        m = torch.tensor([x for _, x in window])
        for name, d in deltas.items():
            r = leakage(m, d[idx])
            if r is not None:
                row[f"dpo/leak/{name}"] = r
    return row


def write_metrics(path: Path, history: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(h) + "\n" for h in history))
