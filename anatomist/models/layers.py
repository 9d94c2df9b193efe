"""Find the stack of decoder blocks in any HF causal LM, without TransformerLens."""

from __future__ import annotations

import torch

from anatomist.errors import AnatomistError

# Attribute paths to the block list, by architecture family (first match wins).
LAYER_PATHS = (
    "model.layers",          # Llama, Mistral, Qwen, Gemma, Phi-3, SmolLM
    "model.decoder.layers",  # OPT
    "transformer.h",         # GPT-2, GPT-J, Falcon
    "gpt_neox.layers",       # Pythia / GPT-NeoX
    "transformer.blocks",    # MPT
)


def _at(model: torch.nn.Module, path: str):
    obj = model
    for attr in path.split("."):
        obj = getattr(obj, attr, None)
        if obj is None:
            return None
    return obj


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    for path in LAYER_PATHS:
        obj = _at(model, path)
        if isinstance(obj, torch.nn.ModuleList):
            return obj
    raise AnatomistError(f"cannot find the decoder layers of {type(model).__name__} "
                         f"(looked for {', '.join(LAYER_PATHS)})")


def num_layers(model: torch.nn.Module) -> int:
    return len(decoder_layers(model))


def check_layer(model: torch.nn.Module, layer: int) -> int:
    """Validate a 0-based block index (negative counts from the end) and return it normalised."""
    n = num_layers(model)
    if not -n <= layer < n:
        raise AnatomistError(f"layer {layer} is out of range: the model has {n} layers (0..{n - 1})")
    return layer % n


# Attribute paths to the norm before the unembedding, by architecture family (first match wins).
FINAL_NORM_PATHS = ("model.norm", "model.decoder.final_layer_norm", "transformer.ln_f", "gpt_neox.final_layer_norm",
                    "transformer.norm_f")


def final_norm(model: torch.nn.Module) -> torch.nn.Module:
    """The norm applied to the last residual before the unembedding (for a logit lens)."""
    for path in FINAL_NORM_PATHS:
        obj = _at(model, path)
        if isinstance(obj, torch.nn.Module):
            return obj
    raise AnatomistError(f"cannot find the final norm of {type(model).__name__} "
                         f"(looked for {', '.join(FINAL_NORM_PATHS)})")
