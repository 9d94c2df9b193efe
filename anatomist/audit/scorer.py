"""The audit's measuring instrument: its model, SAE, layer, pooling and concept transform, applied
to any responses (`Scorer.from_audit(dir)`, `score_texts`). Evaluation and the training monitor
both score generations with it, so it sits on the audit's floor."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from anatomist.errors import AnatomistError


@dataclass
class Scorer:
    """The audit's measuring instrument: its model, SAE, layer, pooling and concept transform."""

    model: object
    tokenizer: object
    sae: object
    concepts: object            # anatomist.audit.concepts.Concepts
    layer: int
    pooling: str = "mean"
    max_length: int = 256
    batch_size: int = 8
    topk: int = 16              # k of pooling="topk"

    @classmethod
    def from_audit(cls, audit_dir: str | Path, *, loaded=None, sae=None) -> Scorer:
        """Read audit.json + concepts.json; load the audit's model (unless `loaded` = (model,
        tokenizer, …) is given) and SAE (unless `sae` is given)."""
        from anatomist.audit.folder import CONCEPTS, META, AuditFolder

        audit = AuditFolder(audit_dir)
        audit.require(META, CONCEPTS)
        concepts, layer = audit.concepts, audit.layer
        if loaded is None:
            if not audit.model_name:
                raise AnatomistError(f"{audit.path / META}: no model recorded; pass the audit's model")
            from anatomist.models import load
            loaded = load(audit.model_name)
        if sae is None:
            if not audit.sae_path:
                raise AnatomistError(f"{audit.path / META}: no SAE path recorded; pass sae=")
            from anatomist.sae import load_sae
            sae = load_sae(audit.sae_path)
        cfg = audit.config
        return cls(loaded[0], loaded[1], sae, concepts, layer, cfg.get("pooling", "mean"),
                   int(cfg.get("max_length", 256)), int(cfg.get("batch_size", 8)), int(cfg.get("topk", 16)))

    def key(self, items) -> str:
        from anatomist.audit.pool import tensor_hash
        from anatomist.capture.run import items_hash

        parts = [items_hash(items), tensor_hash(self.sae.W_enc), self.layer, self.max_length,
                 getattr(self.model.config, "_name_or_path", "")]
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]

    def scores(self, items, folder: str | Path, *, progress: bool = True) -> np.ndarray:
        """c [S, C] of the items' responses, computed as the audit computes c (run.py)."""
        from anatomist.audit.pool import pool_features

        latents = pool_features(self.model, self.tokenizer, self.sae, items, Path(folder) / self.key(items),
                                layer=self.layer, batch_size=self.batch_size, max_length=self.max_length,
                                progress=progress)
        acts = latents.pool(self.pooling, self.topk, self.concepts.calibration)  # [S, F]
        return self.concepts.scores(acts)                                       # [S, C]


def score_texts(scorer: Scorer, messages: Sequence[tuple[dict, ...]], texts: Sequence[str], folder: str | Path,
                *, progress: bool = True) -> np.ndarray:
    """Concept scores c [S, C] of responses `texts` to chat contexts `messages`."""
    from anatomist.capture.run import CaptureItem

    items = [CaptureItem(f"g{i}", "text", tuple(m), t) for i, (m, t) in enumerate(zip(messages, texts))]
    return scorer.scores(items, folder, progress=progress)
