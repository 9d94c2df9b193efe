"""Save / load SAEs in the SAELens on-disk format (`cfg.json` + `sae_weights.safetensors`).

Weights on disk work on raw activations, as SAELens expects (`normalize_activations: "none"`):
the input scale s is folded in (W_enc·s, W_dec/s, b_dec/s; SAELens'
`fold_activation_norm_scaling_factor`). s is a power of two, so folding and unfolding are exact
and save → load gives bit-identical weights. anatomist's own `SAEConfig` rides along in
`metadata.anatomist` (SAELens keeps unknown metadata keys), which restores the unit-norm
decoder, the architecture name (BatchTopK is saved as SAELens does: a "jumprelu" with a
constant threshold) and the outlier rule.

Foreign SAELens SAEs load as: "topk" → topk, "jumprelu" → jumprelu, "standard" → relu, with
`apply_b_dec_to_input=False` and `rescale_acts_by_decoder_norm=True` folded into the weights.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file

from anatomist.errors import AnatomistError
from anatomist.fileio import atomic_save_safetensors, atomic_write_text
from anatomist.sae.arch import ARCHITECTURES
from anatomist.sae.config import SAEConfig
from anatomist.sae.model import SAE

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
FROM_SAELENS = {"topk": "topk", "jumprelu": "jumprelu", "standard": "relu"}
HOOK_RE = re.compile(r"blocks\.(\d+)\.hook_resid_post$")


def hook_name(layer: int | None) -> str:
    return f"blocks.{layer}.hook_resid_post" if layer is not None else ""


def saelens_cfg(cfg: SAEConfig) -> dict:
    """The SAELens inference config dict of an anatomist SAE (weights folded to raw units)."""
    arch = ARCHITECTURES[cfg.architecture]
    out = {"architecture": arch.saelens_name, "d_in": cfg.d_in, "d_sae": cfg.d_sae,
           "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": True,
           "normalize_activations": "none", "reshape_activations": "none",
           "metadata": {"model_name": cfg.model, "hook_name": cfg.hook_name or hook_name(cfg.layer),
                        "hook_head_index": None, "prepend_bos": True,
                        "anatomist": cfg.to_dict()}}
    if arch.saelens_name == "topk":
        out.update(k=cfg.k, rescale_acts_by_decoder_norm=False)
    return out


@torch.no_grad()
def save_sae(sae: SAE, path: str | Path) -> Path:
    """Write `cfg.json` and `sae_weights.safetensors` into folder `path` (each file atomically)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    s = sae.cfg.norm_scale
    tensors = {"W_enc": sae.W_enc * s, "b_enc": sae.b_enc.clone(), "W_dec": sae.W_dec / s,
               "b_dec": sae.b_dec / s}
    if sae.threshold is not None:
        tensors["threshold"] = sae.threshold.detach().clone()
    tensors = {k: v.detach().float().contiguous() for k, v in tensors.items()}
    atomic_save_safetensors(path / WEIGHTS_FILE, tensors)
    atomic_write_text(path / CFG_FILE, json.dumps(saelens_cfg(sae.cfg), indent=2))
    return path


def _foreign_cfg(raw: dict, path: Path) -> SAEConfig:
    arch = raw.get("architecture", "standard")
    if arch not in FROM_SAELENS:
        raise AnatomistError(f"{path / CFG_FILE}: SAELens architecture {arch!r} is not supported "
                             f"(supported: {', '.join(FROM_SAELENS)})")
    norm = raw.get("normalize_activations", "none")
    if norm not in ("none", None):
        raise AnatomistError(f"{path / CFG_FILE}: normalize_activations={norm!r} is not supported; "
                             "fold the scaling into the weights first (SAELens: "
                             "fold_activation_norm_scaling_factor)")
    missing = [k for k in ("d_in", "d_sae") if k not in raw]
    if missing:
        raise AnatomistError(f'{path / CFG_FILE}: missing field "{missing[0]}"')
    meta = raw.get("metadata") or {}
    hook = meta.get("hook_name") or raw.get("hook_name") or ""
    m = HOOK_RE.search(hook)
    d_sae = int(raw["d_sae"])
    return SAEConfig(d_in=int(raw["d_in"]), d_sae=d_sae, architecture=FROM_SAELENS[arch],
                     k=int(raw.get("k", min(32, d_sae))), model=meta.get("model_name") or "",
                     layer=int(m.group(1)) if m else None, hook_name=hook)


@torch.no_grad()
def load_sae(path: str | Path) -> SAE:
    """Load an SAE saved by `save_sae` or by SAELens (`SAE.save_model`) from folder `path`."""
    path = Path(path)
    if not (path / CFG_FILE).is_file() or not (path / WEIGHTS_FILE).is_file():
        raise AnatomistError(f"{path}: not an SAE folder (needs {CFG_FILE} and {WEIGHTS_FILE})")
    try:
        raw = json.loads((path / CFG_FILE).read_text())
        w = load_file(str(path / WEIGHTS_FILE))
    except Exception as e:
        raise AnatomistError(f"{path}: unreadable SAE files ({type(e).__name__}: {e})") from e
    if not isinstance(raw, dict):
        raise AnatomistError(f"{path / CFG_FILE}: expected a JSON object, got {type(raw).__name__}")
    ours = (raw.get("metadata") or {}).get("anatomist")
    try:
        cfg = SAEConfig.from_dict(ours) if ours else _foreign_cfg(raw, path)
    except (AnatomistError, TypeError, ValueError) as e:  # out-of-range or mistyped config values
        msg = str(e)
        raise AnatomistError(msg if msg.startswith(str(path)) else f"{path / CFG_FILE}: {msg}") from e
    missing = {"W_enc", "b_enc", "W_dec", "b_dec"} - set(w)
    if missing:
        raise AnatomistError(f"{path / WEIGHTS_FILE}: missing tensors {sorted(missing)}")
    bad = next((k for k, v in w.items() if not v.is_floating_point()), None)
    if bad:
        raise AnatomistError(f"{path / WEIGHTS_FILE}: {bad} has dtype {str(w[bad].dtype).removeprefix('torch.')}, "
                             "expected a floating-point dtype")
    W_enc, b_enc, W_dec, b_dec = (w[k].float() for k in ("W_enc", "b_enc", "W_dec", "b_dec"))
    if tuple(W_enc.shape) != (cfg.d_in, cfg.d_sae) or tuple(W_dec.shape) != (cfg.d_sae, cfg.d_in):
        raise AnatomistError(f"{path / WEIGHTS_FILE}: W_enc {tuple(W_enc.shape)} / W_dec "
                             f"{tuple(W_dec.shape)} do not match d_in={cfg.d_in}, d_sae={cfg.d_sae}")
    for name, shape in (("b_enc", (cfg.d_sae,)), ("b_dec", (cfg.d_in,)), ("threshold", (cfg.d_sae,))):
        if name in w and tuple(w[name].shape) != shape and not (name == "threshold" and w[name].numel() == 1):
            raise AnatomistError(f"{path / WEIGHTS_FILE}: {name} has shape {tuple(w[name].shape)}, expected {shape}")
    if not ours:
        if not raw.get("apply_b_dec_to_input", True):
            b_enc = b_enc + b_dec @ W_enc          # x W + b = (x − b_dec) W + (b + b_dec W)
        if raw.get("rescale_acts_by_decoder_norm"):
            n = W_dec.norm(dim=-1).clamp_min(1e-12)                                  # [F]
            W_enc, b_enc, W_dec = W_enc * n, b_enc * n, W_dec / n[:, None]
    s = cfg.norm_scale
    sae = SAE(cfg)
    sae.W_enc.copy_(W_enc / s)
    sae.b_enc.copy_(b_enc)
    sae.W_dec.copy_(W_dec * s)
    sae.b_dec.copy_(b_dec * s)
    if sae.threshold is not None:
        if "threshold" not in w:
            raise AnatomistError(f"{path / WEIGHTS_FILE}: {cfg.architecture} SAE without a threshold tensor")
        sae.threshold.copy_(w["threshold"].float())
    return sae.eval()
