"""Export an `Eagle3Head` in the speculators "eagle3" format (served by vLLM and SGLang for Llama).

Layout: config.json (Eagle3SpeculatorConfig: transformer_layer_config = the trunk's config with one
layer, draft_vocab_size V', norm_before_residual false, eagle_aux_hidden_state_layer_ids, and
speculators_config {algorithm "eagle3", proposal_methods [greedy, speculative_tokens γ], verifier})
and model.safetensors: fc, layers.0.{hidden_norm, input_layernorm, post_attention_layernorm,
self_attn.*, mlp.*}, norm, lm_head [V', H], d2t [V'] (target id − draft id), t2d [V] (bool).
embed_tokens is not stored: the reader takes it from the verifier. The mapping is one-to-one, so
the export is exact; heads of another structure are refused (`export_eagle3`). A README.md with
the serving commands below is written beside them.

Serving (a GPU machine). Engines draft greedily by default (one-hot q); a TV-trained head is meant
to be sampled from, with the drafts verified by rejection sampling against q:

    # vLLM reads speculators "eagle3" folders natively (method taken from config.json)
    vllm serve VERIFIER --speculative-config \\
        '{"model": "OUT", "num_speculative_tokens": GAMMA, "draft_sample_method": "probabilistic"}'
    # SGLang: chain EAGLE-3 (top-k 1, which its rejection sampling requires)
    python -m sglang.launch_server --model-path VERIFIER --speculative-algorithm EAGLE3 \\
        --speculative-draft-model-path OUT --speculative-num-steps GAMMA --speculative-eagle-topk 1 \\
        --speculative-num-draft-tokens GAMMA1 --speculative-use-rejection-sampling
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from anatomist.errors import AnatomistError
from anatomist.fileio import atomic_save_safetensors, atomic_write_text

__all__ = ["eagle3_state", "export_eagle3", "EXPORT_FORMATS"]

SPECULATORS_VERSION = "0.9.0"


def eagle3_state(head) -> dict[str, torch.Tensor]:
    """Head parameters under speculators Eagle3DraftModel names, plus d2t / t2d from vocab_ids."""
    out = {}
    for k, v in head.trainable_state().items():
        if k == "vocab_ids":
            continue
        name = "layers.0." + k[len("layer."):] if k.startswith("layer.") else (
            "layers.0.hidden_norm.weight" if k == "hidden_norm.weight" else
            "lm_head.weight" if k == "lm_head" else k)
        out[name] = v.detach().contiguous().cpu()
    ids = head.vocab_ids.cpu()
    out["d2t"] = ids - torch.arange(ids.numel())  # target id = draft id + d2t[draft id]
    t2d = torch.zeros(head.vocab_size, dtype=torch.bool)
    t2d[ids] = True
    out["t2d"] = t2d
    return out


def export_eagle3(head, trunk, out_dir: str | os.PathLike, *, verifier: str, dtype: torch.dtype | None = None) -> Path:
    """Write config.json + model.safetensors (atomically); refuse a head the format cannot hold."""
    from anatomist.spec_decode.eagle3 import Eagle3Head

    if not isinstance(head, Eagle3Head):
        raise AnatomistError(f"--format eagle3 needs a head trained with --head eagle3; this is a "
                             f"{type(head).__name__} (its input norms and shared LM head have no EAGLE-3 equivalent)")
    if len(set(head.vocab_ids.tolist())) != head.vocab_ids.numel():
        raise AnatomistError("draft vocabulary has repeated ids; d2t/t2d cannot express it")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tcfg = trunk.config.to_dict()
    for k in ("_name_or_path", "architectures", "auto_map", "quantization_config"):
        tcfg.pop(k, None)
    tcfg["num_hidden_layers"] = 1
    archs = list(getattr(trunk.config, "architectures", None) or [type(trunk).__name__])
    cfg = {
        "architectures": ["Eagle3Speculator"], "speculators_model_type": "eagle3",
        "speculators_version": SPECULATORS_VERSION, "tie_word_embeddings": False,
        "transformer_layer_config": tcfg, "draft_vocab_size": int(head.vocab_ids.numel()),
        "norm_before_residual": False, "eagle_aux_hidden_state_layer_ids": list(head.config.aux_layers),
        "speculators_config": {
            "algorithm": "eagle3", "default_proposal_method": "greedy",
            "proposal_methods": [{"proposal_type": "greedy", "speculative_tokens": head.config.gamma,
                                  "accept_tolerance": 0.0, "verifier_accept_k": 1}],
            "verifier": {"name_or_path": verifier, "architectures": archs},
        },
        "anatomist": {"loss": head.config.loss, "base_model": head.config.base_model, "extra": head.config.extra},
    }
    state = eagle3_state(head)
    if dtype is not None:  # floats only: d2t / t2d keep their integer / bool types
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    atomic_save_safetensors(out / "model.safetensors", state, {"format": "pt"})
    atomic_write_text(out / "config.json", json.dumps(cfg, indent=2, default=str))
    g = head.config.gamma
    cmds = __doc__.split("rejection sampling against q:\n\n", 1)[1].rstrip().rstrip('"')
    cmds = "\n".join(line[4:] for line in cmds.splitlines())
    cmds = (cmds.replace("VERIFIER", verifier).replace("OUT", str(out)).replace("GAMMA1", str(g + 1))
            .replace("GAMMA", str(g)))
    atomic_write_text(out / "README.md", f"# EAGLE-3 draft head (speculators 'eagle3' format)\n\nVerifier: "
                      f"`{verifier}`, γ = {g}, aux layers {list(head.config.aux_layers)}, draft vocabulary "
                      f"{head.vocab_ids.numel()}, trained with `{head.config.loss}` by anatomist.\n\n"
                      f"```bash\n{cmds.strip()}\n```\n")
    return out


def _export_mtp(head, trunk, out_dir, *, verifier: str, dtype=None) -> Path:
    from anatomist.spec_decode.eagle3 import Eagle3Head
    from anatomist.spec_decode.export import export_speculators

    if isinstance(head, Eagle3Head):
        raise AnatomistError("--format mtp cannot hold an EAGLE-3 head (fused aux states, own LM head); "
                             "use --format eagle3")
    return export_speculators(head, trunk, out_dir, verifier=verifier, dtype=dtype)


# `anatomist mtp export --format`: format name → writer(head, trunk, out, *, verifier, dtype)
EXPORT_FORMATS = {"mtp": _export_mtp, "eagle3": export_eagle3}
