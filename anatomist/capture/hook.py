"""Residual-stream activations after decoder block L, stopping the forward pass there.

"After layer L" = the output of block L (0-based), i.e. `hidden_states[L + 1]` of an
`output_hidden_states=True` forward — except for the last block, where HF applies the final
norm to `hidden_states[-1]` and this module returns the un-normed residual.
"""

from __future__ import annotations

import torch

from anatomist.models.layers import check_layer, decoder_layers


class _StopForward(Exception):
    """Raised from a hook once every requested layer is captured: blocks above never run."""


@torch.no_grad()
def residual_stream(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                    layers: int | list[int]) -> torch.Tensor | dict[int, torch.Tensor]:
    """Residual activations after the given block(s): [B, T, D] (or {layer: [B, T, D]}), on the
    model's device (the inputs are moved there: callers collate on the CPU)."""
    single = isinstance(layers, int)
    wanted = sorted({check_layer(model, layer) for layer in ([layers] if single else layers)})
    blocks = decoder_layers(model)
    captured: dict[int, torch.Tensor] = {}

    def make_hook(index: int):
        def hook(_module, _args, output):
            captured[index] = output[0] if isinstance(output, tuple) else output
            if len(captured) == len(wanted):
                raise _StopForward
        return hook

    handles = [blocks[i].register_forward_hook(make_hook(i)) for i in wanted]
    try:
        dev = model.get_input_embeddings().weight.device
        model(input_ids=input_ids.to(dev), use_cache=False,
              attention_mask=attention_mask.to(dev) if attention_mask is not None else None)
    except _StopForward:
        pass
    finally:
        for h in handles:
            h.remove()
    assert len(captured) == len(wanted), "a requested layer never ran"
    return captured[wanted[0]] if single else captured
