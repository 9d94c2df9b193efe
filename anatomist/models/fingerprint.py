"""A cheap hash of a model's weights, for cache keys that must miss when the weights change (a
policy saved over its base's folder, a model edited in memory) and hit when they do not."""

from __future__ import annotations

import hashlib

__all__ = ["model_fingerprint"]


def model_fingerprint(model) -> str:
    """Cheap hash of a model: config, parameter names/shapes and a strided sample of every tensor."""
    h = hashlib.sha256(model.config.to_json_string(use_diff=False).encode())
    for name, p in model.state_dict().items():
        flat = p.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 64)].float().cpu()
        h.update(f"{name}{tuple(p.shape)}".encode())
        h.update(sample.numpy().tobytes())
    return h.hexdigest()
