"""Export a trained MTP head as a serving-engine draft: the `speculators` "mtp" format.

Why this format. Our head is DeepSeek-V3-style MTP: RMSNorm the trunk state and the next
token's embedding, project the concatenation with one linear layer, one decoder layer, a final
norm, and the trunk's own (shared) embedding and LM head. vLLM's `speculators` library (0.9.0,
`speculators.models.mtp`) defines exactly this as its "mtp" speculator: `MTPDraftModel` with one
`mtp_layers.0` = the verifier's decoder-layer class plus `hidden_layernorm`, `token_layernorm`,
`input_proj` (2H → H, input order **[embedding; hidden]**) and `final_layernorm`; `embed_tokens`
and `lm_head` are not stored — they are taken from the verifier. vLLM reads speculators-format
folders natively (`speculators_model_type` in config.json). EAGLE-1/HASS drafts lack the two
input norms and EAGLE-3 fuses three trunk layers, so neither fits this head.

Layout written (`export_speculators(head, trunk, out, verifier=...)`):

    out/config.json        speculators MTPSpeculatorConfig: speculators_model_type "mtp",
                           architectures ["MTPDraftModel"], num_nextn_predict_layers 1,
                           transformer_layer_config (the trunk's HF config), speculators_config
                           {algorithm "mtp", proposal_methods [greedy, speculative_tokens γ],
                           verifier {name_or_path, architectures}}; extra key "anatomist" (provenance)
    out/model.safetensors  mtp_layers.0.{hidden_layernorm, token_layernorm, input_proj,
                           final_layernorm, input_layernorm, post_attention_layernorm,
                           self_attn.*, mlp.*}.weight
    out/README.md          the serving commands below

Mapping from `MTPHead`: norm_h → hidden_layernorm, norm_e → token_layernorm, fuse → input_proj
with its two column halves swapped (ours reads [hidden; embedding]), layer.* → mtp_layers.0.*,
norm → final_layernorm. A reduced draft vocabulary cannot be expressed (speculators refuses vocab
reduction for MTP): the engine drafts over the full vocabulary with the shared LM head. That stays
lossless under rejection sampling; acceptance can differ slightly from what was measured here.

Serving (a GPU machine). Both engines draft greedily by default (one-hot q); the flags below sample
drafts from q and verify them with probabilistic rejection sampling, the mode this head's TV loss
trains for (acceptance = 1 − TV(p, q), which holds up as the policy's entropy rises):

    # vLLM: a speculators checkpoint (the method is read from its config.json)
    vllm serve VERIFIER --speculative-config \\
        '{"model": "OUT", "num_speculative_tokens": 3, "draft_sample_method": "probabilistic"}'
    # SGLang: NEXTN (= chain EAGLE with top-k 1, which its rejection sampling requires)
    python -m sglang.launch_server --model-path VERIFIER --speculative-algorithm NEXTN \\
        --speculative-draft-model-path OUT --speculative-num-steps 3 --speculative-eagle-topk 1 \\
        --speculative-num-draft-tokens 4 --speculative-use-rejection-sampling

Caveat (checked against the sources, Nov 2026): the speculators reader parses this config for any
HF model type, but its `MTPDraftModel` builds layers only for Qwen3-family types, vLLM maps
speculators "mtp" checkpoints only onto MiMo / Qwen3-Next MTP models, and SGLang's NEXTN draft
classes exist per architecture (DeepSeek-V3, Qwen3-Next, MiMo, GLM-4 MoE, …). So a head on a
Qwen3 trunk loads into speculators' own model as is (tested: same draft logits); serving it needs
the engine's MTP path for that architecture. A head on a Llama trunk (the default SmolLM2) is
written in the same format but needs engine support for a Llama MTP layer before it serves.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch

from anatomist.errors import AnatomistError
from anatomist.fileio import atomic_save_safetensors, atomic_write_text
from anatomist.spec_decode.head import MTPConfig, MTPHead, read_config_and_weights

log = logging.getLogger(__name__)

__all__ = ["export_speculators", "load_speculators", "speculators_state", "SPECULATORS_VERSION"]

SPECULATORS_VERSION = "0.9.0"  # the speculators release whose format this follows
PREFIX = "mtp_layers.0."
WEIGHTS = "model.safetensors"
_RENAME = {"norm_h.weight": "hidden_layernorm.weight", "norm_e.weight": "token_layernorm.weight",
           "fuse.weight": "input_proj.weight", "norm.weight": "final_layernorm.weight"}


def speculators_state(head: MTPHead) -> dict[str, torch.Tensor]:
    """Head parameters under speculators MTP names (input_proj columns reordered to [emb; hidden])."""
    H = head.fuse.weight.shape[0]
    out = {}
    for k, v in head.trainable_state().items():
        if k == "vocab_ids":
            continue
        if k.startswith("layer."):
            name = k[len("layer."):]
        elif k in _RENAME:
            name = _RENAME[k]
        else:
            raise AnatomistError(f"head tensor {k!r} has no place in the speculators MTP format")
        if k == "fuse.weight":  # ours: W [h; e]; speculators: W' [e; h]
            v = torch.cat([v[:, H:], v[:, :H]], dim=1)
        out[PREFIX + name] = v.detach().contiguous().cpu()
    return out


def _config(head: MTPHead, trunk, verifier: str) -> dict:
    tcfg = trunk.config.to_dict()
    for k in ("_name_or_path", "architectures", "auto_map", "quantization_config"):
        tcfg.pop(k, None)
    archs = list(getattr(trunk.config, "architectures", None) or [type(trunk).__name__])
    return {
        "architectures": ["MTPDraftModel"],
        "speculators_model_type": "mtp",
        "speculators_version": SPECULATORS_VERSION,
        "num_nextn_predict_layers": 1,
        "tie_word_embeddings": False,
        "dtype": str(head.fuse.weight.dtype).removeprefix("torch."),
        "transformer_layer_config": tcfg,
        "speculators_config": {
            "algorithm": "mtp",
            "default_proposal_method": "greedy",
            "proposal_methods": [{"proposal_type": "greedy", "speculative_tokens": head.config.gamma,
                                  "accept_tolerance": 0.0, "verifier_accept_k": 1}],
            "verifier": {"name_or_path": verifier, "architectures": archs},
        },
        "anatomist": {"loss": head.config.loss, "base_model": head.config.base_model,
                      "trained_draft_vocab": int(head.vocab_ids.numel()), "extra": head.config.extra},
    }


def export_speculators(head: MTPHead, trunk, out_dir: str | os.PathLike, *, verifier: str,
                       dtype: torch.dtype | None = None) -> Path:
    """Write config.json + model.safetensors + README.md (each atomically); see the module docstring."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not head.full_vocab:
        log.warning("head was trained on a %d-token draft vocabulary; the export drafts over the full "
                    "vocabulary (the format has none) — still lossless, acceptance may differ",
                    head.vocab_ids.numel())
    state = speculators_state(head)
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}
    atomic_save_safetensors(out / WEIGHTS, state, {"format": "pt"})
    cfg = _config(head, trunk, verifier)
    if dtype is not None:
        cfg["dtype"] = str(dtype).removeprefix("torch.")
    atomic_write_text(out / "config.json", json.dumps(cfg, indent=2, default=str))
    import textwrap

    doc = textwrap.dedent(__doc__.split("Serving (", 1)[1].split("\n\n", 1)[1].split("\nCaveat", 1)[0])
    atomic_write_text(out / "README.md", f"# MTP draft head (speculators 'mtp' format)\n\nVerifier: `{verifier}`, "
                      f"γ = {head.config.gamma}, trained with `{head.config.loss}` by anatomist.\n\n"
                      f"```bash\n{doc.replace('VERIFIER', verifier).replace('OUT', str(out)).strip()}\n```\n\n"
                      f"Caveat: {' '.join(__doc__.split('Caveat', 1)[1].split())}\n")
    return out


def load_speculators(folder: str | os.PathLike, trunk) -> MTPHead:
    """Our own reader of the format: validate config and tensor names/shapes, rebuild an `MTPHead`."""
    folder = Path(folder)
    cfg_path, w_path = folder / "config.json", folder / WEIGHTS
    cfg, state = read_config_and_weights(folder, "config.json", WEIGHTS, "a speculators")
    if not isinstance(cfg, dict) or cfg.get("speculators_model_type") != "mtp":
        raise AnatomistError(f"{cfg_path}: field \"speculators_model_type\" is "
                             f"{cfg.get('speculators_model_type') if isinstance(cfg, dict) else None!r}, "
                             f"expected 'mtp'")
    tl = cfg.get("transformer_layer_config", {})
    for key in ("hidden_size", "vocab_size", "num_attention_heads", "num_key_value_heads"):
        if tl.get(key) != getattr(trunk.config, key):
            raise AnatomistError(f"{cfg_path}: field \"transformer_layer_config.{key}\" = {tl.get(key)} does not "
                                 f"match the model ({getattr(trunk.config, key)})")
    try:
        gamma = int(cfg["speculators_config"]["proposal_methods"][0]["speculative_tokens"])
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise AnatomistError(f"{cfg_path}: field \"speculators_config.proposal_methods[0].speculative_tokens\" "
                             f"is missing or not an integer") from e
    meta = cfg.get("anatomist", {})
    head = MTPHead(trunk, MTPConfig(gamma=gamma, base_model=meta.get("base_model", ""), loss=meta.get("loss", ""),
                                    extra=meta.get("extra", {})))
    expected = speculators_state(head)
    if set(state) != set(expected):
        raise AnatomistError(f"{w_path}: tensor names differ from the format: missing "
                             f"{sorted(set(expected) - set(state))[:3]}, unexpected {sorted(set(state) - set(expected))[:3]}")
    H = head.fuse.weight.shape[0]
    ours = {}
    inverse = {v: k for k, v in _RENAME.items()}
    for name, v in state.items():
        if v.shape != expected[name].shape:
            raise AnatomistError(f"{w_path}: tensor {name} has shape {tuple(v.shape)}, expected "
                                 f"{tuple(expected[name].shape)}")
        short = name[len(PREFIX):]
        k = inverse.get(short, "layer." + short)
        if k == "fuse.weight":
            v = torch.cat([v[:, H:], v[:, :H]], dim=1)
        ours[k] = v.to(head.fuse.weight.dtype)
    head.load_state_dict(ours, strict=False)
    head.bind(trunk)
    return head.eval()
