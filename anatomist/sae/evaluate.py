"""SAE quality: FVU, L0 and dead latents on activations; CE loss recovered in the model.

- FVU = Σ‖x − x̂‖² / Σ‖x − x̄‖² over all evaluated tokens (x̄ their mean), in raw units.
- L0 = mean number of active latents per token; dead_frac = share of latents active on none
  of the evaluated tokens (so it needs enough tokens: ≫ d_sae / k).
- CE loss recovered = (CE_zero − CE_sae) / (CE_zero − CE_clean), where CE_sae splices the SAE
  reconstruction into the residual after block L and CE_zero splices zeros (SAELens'
  convention). Splicing skips the SAE's outlier tokens (pos 0, the attention sink, and norms
  above cfg.max_norm), which keep their activation in both ablations. CE is the mean
  next-token loss over all real (non-padding) tokens of the sequences.

Outlier tokens are excluded from FVU / L0 / dead too, as in training.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from anatomist.capture import CaptureItem, collate
from anatomist.models.chat import encode_response
from anatomist.models.layers import check_layer, decoder_layers
from anatomist.errors import AnatomistError
from anatomist.progress import progress_bar
from anatomist.sae.data import ActivationSource
from anatomist.sae.model import SAE


@torch.no_grad()
def activation_metrics(sae: SAE, data, *, batch_size: int = 8192, max_tokens: int | None = None) -> dict:
    """FVU, L0 and dead fraction of `sae` on `data` (store, store folder, or [N, d_in] tensor)."""
    source = ActivationSource(data)
    if source.d_in != sae.d_in:
        raise AnatomistError(f"activations have width {source.d_in}, the SAE expects {sae.d_in}")
    n, sq_err, sum_x, sum_sq, l0 = 0, 0.0, torch.zeros(sae.d_in, dtype=torch.float64), 0.0, 0.0
    fired = torch.zeros(sae.d_sae, dtype=torch.bool)
    for i in range(len(source)):
        acts = source.load_kept(i, sae.cfg.exclude_first_token, sae.cfg.max_norm)      # [N, D]
        for x in acts.split(batch_size):
            if max_tokens is not None and n >= max_tokens:
                break
            x = x[:max_tokens - n] if max_tokens is not None else x
            f = sae.encode(x)                                                         # [b, F]
            x_hat = sae.decode(f)
            sq_err += (x - x_hat).double().pow(2).sum().item()
            sum_x += x.double().sum(0)
            sum_sq += x.double().pow(2).sum().item()
            active = f > 0
            l0 += active.sum().item()
            fired |= active.any(0)
            n += x.shape[0]
    if n == 0:
        raise AnatomistError("no tokens to evaluate on (all were outliers?)")
    total_var = sum_sq - (sum_x.pow(2).sum().item() / n)
    return {"fvu": sq_err / total_var, "l0": l0 / n, "dead_frac": 1.0 - fired.float().mean().item(),
            "n_tokens": n}


def _splice_hook(sae: SAE, mode: str, attention_mask: torch.Tensor):
    """Forward hook on block L: replace the residual on non-outlier real tokens (mode sae|zero)."""

    def hook(_module, _args, output):
        h = output[0] if isinstance(output, tuple) else output                       # [B, T, D]
        pos = torch.arange(h.shape[1]).expand(h.shape[:2])                            # right-padded rows
        keep = attention_mask.bool() & ~sae.is_outlier(h, pos)                         # [B, T]
        new = sae(h).to(h.dtype) if mode == "sae" else torch.zeros_like(h)
        h = torch.where(keep[..., None], new, h)
        return (h, *output[1:]) if isinstance(output, tuple) else h

    return hook


def _ce(logits: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor) -> tuple[float, int]:
    """Summed next-token CE over real targets, and their count. logits [B, T, V]."""
    target_mask = mask[:, 1:].bool()
    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), input_ids[:, 1:].flatten(), reduction="none")
    loss = loss.view(target_mask.shape)[target_mask]
    return loss.sum().item(), int(target_mask.sum())


@torch.no_grad()
def ce_recovered(sae: SAE, model, tokenizer, items: Sequence[CaptureItem], *, layer: int | None = None,
                 batch_size: int = 8, max_length: int = 256, progress: bool = True) -> dict:
    """CE loss clean / with the SAE spliced in / with zeros spliced in, and the share recovered."""
    layer = sae.cfg.layer if layer is None else layer
    if layer is None:
        raise AnatomistError("the SAE config names no layer; pass layer=")
    block = decoder_layers(model)[check_layer(model, layer)]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    sums = {"clean": 0.0, "sae": 0.0, "zero": 0.0}
    n_tok = 0
    with progress_bar("CE loss recovered", total=len(items), enabled=progress) as bar:
        for b in range(0, len(items), batch_size):
            batch = items[b:b + batch_size]
            ids = [encode_response(tokenizer, it.messages, it.response, max_length=max_length).input_ids
                   for it in batch]
            input_ids, mask = collate(ids, pad)
            for mode in sums:
                handle = None if mode == "clean" else block.register_forward_hook(
                    _splice_hook(sae, mode, mask))
                try:
                    logits = model(input_ids=input_ids, attention_mask=mask, use_cache=False).logits
                finally:
                    if handle is not None:
                        handle.remove()
                total, count = _ce(logits, input_ids, mask)
                sums[mode] += total
            n_tok += count
            bar.advance(len(batch))
    ce = {k: v / n_tok for k, v in sums.items()}
    gap = ce["zero"] - ce["clean"]
    return {"ce_clean": ce["clean"], "ce_sae": ce["sae"], "ce_zero": ce["zero"],
            "ce_recovered": (ce["zero"] - ce["sae"]) / gap if gap != 0 else float("nan"),
            "ce_tokens": n_tok}


def evaluate_sae(sae: SAE, data=None, *, model=None, tokenizer=None, items: Sequence[CaptureItem] | None = None,
                 batch_size: int = 8, max_length: int = 256, max_tokens: int | None = None,
                 progress: bool = True) -> dict:
    """Activation metrics on `data` (if given) and CE loss recovered on `items` (if a model is given).

    Returns a dict with fvu, l0, dead_frac, n_tokens and/or ce_clean, ce_sae, ce_zero,
    ce_recovered, ce_tokens.
    """
    if data is None and model is None:
        raise AnatomistError("evaluate_sae needs activations (data) and/or a model with items")
    out = {}
    sae = sae.eval()
    if data is not None:
        out.update(activation_metrics(sae, data, max_tokens=max_tokens))
    if model is not None:
        if tokenizer is None or not items:
            raise AnatomistError("CE loss recovered needs a tokenizer and items (held-out sequences)")
        out.update(ce_recovered(sae, model, tokenizer, items, batch_size=batch_size, max_length=max_length,
                                progress=progress))
    return out
