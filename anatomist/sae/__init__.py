"""Sparse autoencoders on the residual stream: architectures, trainer, SAELens-format I/O.

    sae = train_sae(store, sae_config(576, width="8x", k=32, layer=15), "runs/sae")
    sae = load_sae("runs/sae")            # also loads SAELens-saved SAEs
    f = sae.encode(acts)                   # [.., d_in] -> [.., d_sae]
    evaluate_sae(sae, store, model=lm.model, tokenizer=lm.tokenizer, items=held_out)
    path = default_sae()                   # the default recipe, trained once and cached
"""

from anatomist.sae.arch import ARCHITECTURES
from anatomist.sae.config import SAEConfig, TrainConfig
from anatomist.sae.io import load_sae, save_sae
from anatomist.sae.model import SAE
from anatomist.sae.train import sae_config, train_sae


_LAZY = {"evaluate_sae": "anatomist.sae.evaluate", "default_sae": "anatomist.sae.default",
         "DEFAULT_RECIPE": "anatomist.sae.default"}


def __getattr__(name):  # model- and data-dependent parts load on first use
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'anatomist.sae' has no attribute {name!r}")


__all__ = ["ARCHITECTURES", "DEFAULT_RECIPE", "SAE", "SAEConfig", "TrainConfig", "default_sae", "evaluate_sae",
           "load_sae", "sae_config", "save_sae", "train_sae"]
