"""Concept clusters: SAE features that fire together, grouped with Leiden, scored per response.

Feature graph: cosine similarity of feature columns over responses (co-activation of pooled
latents), optionally mixed with decoder-direction cosine, kNN-sparsified, partitioned by Leiden.
Features firing in fewer than `min_support` responses are left out (too rare to test).

Concept score of cluster C on response y (DESIGN.md "c"):
    raw_C(y) = Σ_{f∈C} A_f(y) / sd_f          (each member contributes unit variance)
    c_C(y)   = (raw_C(y) − mean_C) / sd_C     (standardised over the audited responses)
`mean_C`, `sd_C` and the weights are kept, so shaping scores new responses on the same scale.
With pooling "calmax" A_f is the length-calibrated max (`audit.calmax`): the clusters come from the
max-pooled co-activation (which latents fire together), the weights and standardisation from the
calibrated values (`with_calibration`), and the reference table travels with the concepts.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import scipy.sparse as sp

from anatomist.audit.calmax import MaxCalibration
from anatomist.audit.graph import cosine_similarity, knn_graph, leiden
from anatomist.errors import AnatomistError


@dataclass
class Concepts:
    features: np.ndarray   # [M] SAE latent index of each clustered feature
    labels: np.ndarray     # [M] cluster of each feature (0..C-1, largest first)
    weights: np.ndarray    # [M] 1 / sd_f over responses
    mean: np.ndarray       # [C] mean raw score over the audited responses
    sd: np.ndarray         # [C] sd of the raw score
    calibration: MaxCalibration | None = None   # pooling "calmax" only: the reference F_f of `features`

    @property
    def n_clusters(self) -> int:
        return len(self.mean)

    def members(self, c: int) -> np.ndarray:
        return self.features[self.labels == c]

    def projection(self, d_sae: int) -> sp.csr_matrix:
        """[F, C] sparse map from latents to raw cluster scores."""
        return sp.csr_matrix((self.weights, (self.features, self.labels)), shape=(d_sae, self.n_clusters))

    def scores(self, acts: sp.spmatrix | np.ndarray) -> np.ndarray:
        """Standardised concept scores c [S, C] of pooled latents acts [S, F]."""
        raw = acts @ self.projection(acts.shape[1])
        raw = raw.toarray() if sp.issparse(raw) else np.asarray(raw)
        return (raw - self.mean) / self.sd

    def to_dict(self) -> dict:
        out = {k: getattr(self, k).tolist() for k in ("features", "labels", "weights", "mean", "sd")}
        if self.calibration is not None:
            out["calibration"] = self.calibration.to_dict()
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "Concepts":
        cal = MaxCalibration.from_dict(d["calibration"]) if d.get("calibration") else None
        return cls(*(np.asarray(d[k]) for k in ("features", "labels", "weights", "mean", "sd")), calibration=cal)

    def with_calibration(self, calibration: MaxCalibration, acts: sp.spmatrix) -> "Concepts":
        """The same clusters, weighted and standardised on acts [S, F] (the calmax values of
        `calibration`, which must calibrate exactly these features)."""
        assert np.array_equal(calibration.features, self.features), "calibrate the clustered features"
        weights, mean, sd = _standardise(sp.csr_matrix(acts)[:, self.features].toarray(), self.labels)
        return replace(self, weights=weights, mean=mean, sd=sd, calibration=calibration)


def _standardise(sub: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(w_f = 1/sd_f [M], mean_C [C], sd_C [C]) of member activations sub [S, M] (module docstring)."""
    weights = 1 / np.clip(sub.std(0), 1e-12, None)
    raw = (sub * weights) @ np.eye(int(labels.max()) + 1)[labels]                # [S, C]
    return weights, raw.mean(0), np.clip(raw.std(0), 1e-12, None)


def feature_similarity(acts: sp.csr_matrix, features: np.ndarray, W_dec: np.ndarray | None = None,
                       decoder_weight: float = 0.0) -> np.ndarray:
    """[M, M] similarity of the selected features: co-activation cosine (+ decoder cosine)."""
    cols = acts[:, features].T.tocsr()                                   # [M, S]
    norms = np.sqrt(np.asarray(cols.multiply(cols).sum(1))).ravel()
    unit = sp.diags(1 / np.clip(norms, 1e-12, None)) @ cols
    sim = np.asarray((unit @ unit.T).todense())                          # [M, M]
    if decoder_weight:
        assert W_dec is not None, "decoder_weight needs W_dec"
        sim = (1 - decoder_weight) * sim + decoder_weight * cosine_similarity(W_dec[features])
    return sim


def concept_clusters(acts: sp.csr_matrix, *, W_dec: np.ndarray | None = None, min_support: int = 10,
                     knn: int = 10, decoder_weight: float = 0.0, resolution: float = 1.0,
                     seed: int = 0, backend: str = "sknetwork") -> Concepts:
    """Cluster the latents of pooled activations acts [S, F] into concepts."""
    acts = sp.csr_matrix(acts)
    if not 0 <= decoder_weight <= 1:
        raise AnatomistError(f"decoder_weight must be in [0, 1], got {decoder_weight}")
    support = np.asarray((acts > 0).sum(0)).ravel()                      # [F] responses where f fires
    features = np.flatnonzero(support >= min_support)
    if len(features) < 2:
        raise AnatomistError(f"only {len(features)} SAE features fire in >= {min_support} responses; "
                             "audit more pairs or lower min_support")
    sim = feature_similarity(acts, features, W_dec, decoder_weight)
    labels = leiden(knn_graph(sim, knn), resolution=resolution, seed=seed, backend=backend)
    weights, mean, sd = _standardise(acts[:, features].toarray(), labels)       # sub [S, M]
    return Concepts(features, labels, weights, mean, sd)
