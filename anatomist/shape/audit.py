"""Read an audit folder (written by `anatomist.audit.run.run_audit`) for shaping.

What shaping needs from it:
    concepts.json      the concept-score transform (members, weights 1/sd_f, mean_C, sd_C)
    clusters.parquet   one row per cluster: id, label, member features
    pairs.parquet      per (pair, cluster): c(y⁺), c(y⁻), Δc — standardized as the audit stores them
    latents/           per-token sparse SAE latents; sequence 2i / 2i+1 = pair i chosen / rejected
    audit.json         model, SAE folder, layer

Pairs are matched by pair id; a pair the audit never saw is a `DataError` naming the id.

Per-token concept score (token filtering). For cluster C and response token t,
    raw_C(t) = Σ_{f∈C} w_f · a_f(t)          (w_f = 1/sd_f, the concept score's own weights)
    c_C(t)   = (raw_C(t) − mean_C) / sd_C     (the response-level standardisation, unchanged)
so with the audit's default mean pooling, mean_t c_C(t) = c_C(y) exactly: a token's score is on
the same scale as the response's score in pairs.parquet (τ = 0 is the audited mean response).

Response length (`anatomist.audit.length`, cluster id LENGTH = −1, name "length") is one more
concept for reward shaping and pair dropping where the audit wrote length_pairs.parquet:
c_len(y) = (log n(y) − mean) / sd over every audited response. It has no per-token score and
no decoder direction, so token filtering and steering on it are refused.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from anatomist.audit.concepts import Concepts
from anatomist.audit.length import LENGTH
from anatomist.audit.length import PAIRS_FILE as LENGTH_PAIRS
from anatomist.errors import AnatomistError, DataError

REQUIRED = ("audit.json", "concepts.json", "clusters.parquet", "pairs.parquet")


class Audit:
    """A finished audit folder, read lazily (latents only when token scores are asked for)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        missing = [n for n in REQUIRED if not (self.folder / n).is_file()]
        if missing:
            raise AnatomistError(f"{self.folder} is not a finished audit folder: {missing[0]} is missing "
                                 "(run `anatomist audit` first)")
        self.meta = json.loads((self.folder / "audit.json").read_text())
        self.concepts = Concepts.from_dict(json.loads((self.folder / "concepts.json").read_text()))
        self.clusters = pd.read_parquet(self.folder / "clusters.parquet")
        table = pd.read_parquet(self.folder / "pairs.parquet")
        self.pair_ids = [str(p) for p in dict.fromkeys(table.pair_id)]   # audit order = latents' sequence order
        C = self.concepts.n_clusters
        wide = {k: table.pivot(index="pair_id", columns="cluster", values=k).reindex(self.pair_ids)
                for k in ("c_chosen", "c_rejected")}
        self._c_chosen = wide["c_chosen"].to_numpy(np.float64)          # [P, C]
        self._c_rejected = wide["c_rejected"].to_numpy(np.float64)      # [P, C]
        assert self._c_chosen.shape == (len(self.pair_ids), C), "pairs.parquet holds every (pair, cluster)"
        self._row = {pid: i for i, pid in enumerate(self.pair_ids)}
        names = self.meta.get("topics", {}).get("names", [])
        first = table.drop_duplicates("pair_id").set_index("pair_id")
        self._topic = ({str(pid): names[int(t)] for pid, t in first.topic_id.items() if 0 <= int(t) < len(names)}
                       if "topic_id" in table and names else {})
        self._length = self._read_length()

    def _read_length(self) -> np.ndarray | None:
        """[P, 2] standardized log length of (chosen, rejected), or None for an audit without it."""
        path = self.folder / LENGTH_PAIRS
        if not path.is_file():
            return None
        table = pd.read_parquet(path).set_index("pair_id").reindex(self.pair_ids)
        if table[["n_chosen", "n_rejected"]].isna().any().any():
            raise AnatomistError(f"{path}: does not hold every pair of the audit's pairs.parquet")
        logn = np.log(np.maximum(table[["n_chosen", "n_rejected"]].to_numpy(np.float64), 1.0))   # [P, 2]
        sd = logn.std()
        return (logn - logn.mean()) / (sd if sd > 0 else 1.0)

    # --- metadata -----------------------------------------------------------------------------

    @property
    def layer(self) -> int:
        return int(self.meta["layer"])

    @property
    def sae_path(self) -> str:
        return str(self.meta["sae"])

    @property
    def model_name(self) -> str:
        return str(self.meta.get("model", ""))

    @property
    def n_clusters(self) -> int:
        return self.concepts.n_clusters

    def label(self, cluster: int) -> str:
        """The cluster's label ("" where the labeller gave none)."""
        c = self.check_cluster(cluster)
        return "long responses" if c == LENGTH else self._labels.loc[c]

    @cached_property
    def _labels(self) -> pd.Series:
        return self.clusters.set_index("cluster")["label"].fillna("").astype(str)

    def check_cluster(self, cluster: int) -> int:
        if int(cluster) == LENGTH:
            if self._length is None:
                raise AnatomistError(f"{self.folder} has no response-length tables ({LENGTH_PAIRS}): re-run "
                                     "`anatomist audit` on it to shape on length")
            return LENGTH
        if not 0 <= int(cluster) < self.n_clusters:
            raise AnatomistError(f"cluster {cluster} is out of range: the audit in {self.folder} has "
                                 f"{self.n_clusters} clusters (0..{self.n_clusters - 1})")
        return int(cluster)

    def resolve_concept(self, spec: str | int) -> int:
        """A cluster id, "length" (response length), or a label (exact match first, then a unique substring)."""
        if str(spec).strip().lower() == "length":
            return self.check_cluster(LENGTH)
        if isinstance(spec, (int, np.integer)) or str(spec).lstrip("-").isdigit():
            return self.check_cluster(int(spec))
        labels = self._labels[self._labels != ""]
        exact = labels.index[labels == spec].tolist()
        hits = exact or labels.index[labels.str.contains(str(spec), regex=False)].tolist()
        if len(hits) != 1:
            what = "no cluster label contains" if not hits else f"{len(hits)} cluster labels contain"
            raise AnatomistError(f"{what} {spec!r} in {self.folder / 'clusters.parquet'}; pass a cluster id")
        return int(hits[0])

    # --- per-pair scores ----------------------------------------------------------------------

    def pair_index(self, pair_id: str) -> int:
        """Row of `pair_id` in audit order (its sequences in latents/ are 2i and 2i+1)."""
        if pair_id not in self._row:
            raise DataError(f"pair {pair_id!r} is not in the audit (was the audit run on this data?)",
                            file=str(self.folder / "pairs.parquet"), field="pair_id")
        return self._row[pair_id]

    def topic(self, pair_id: str) -> str | None:
        """The audit's prompt topic of a pair (None where the audit recorded none)."""
        return self._topic.get(pair_id)

    def scores(self, pair_ids, clusters) -> tuple[np.ndarray, np.ndarray]:
        """Standardized concept scores c(y⁺), c(y⁻): two [P, K] arrays for the given pairs and clusters."""
        rows = [self.pair_index(p) for p in pair_ids]
        cols = [self.check_cluster(k) for k in clusters]
        pos, neg = np.empty((len(rows), len(cols))), np.empty((len(rows), len(cols)))         # [P, K] each
        for j, k in enumerate(cols):
            pos[:, j], neg[:, j] = ((self._length[rows, 0], self._length[rows, 1]) if k == LENGTH
                                    else (self._c_chosen[rows, k], self._c_rejected[rows, k]))
        return pos, neg

    # --- per-token scores ---------------------------------------------------------------------

    @cached_property
    def latents(self):
        from anatomist.audit.pool import Latents

        folder = self.folder / "latents"
        if not folder.is_dir():
            raise AnatomistError(f"{folder} is missing: token filtering needs the audit's per-token latents")
        lat = Latents(folder)
        if len(lat.tokens) != 2 * len(self.pair_ids):
            raise AnatomistError(f"{folder} holds {len(lat.tokens)} responses, the audit {len(self.pair_ids)} "
                                 "pairs: the latents belong to another run")
        return lat

    def response_tokens(self, pair_id: str, side: str) -> list[int]:
        """The response token ids the audit scored (end-of-turn included; a long one may be cut)."""
        return list(self.latents.tokens[self._seq(pair_id, side)])

    def token_scores(self, pair_id: str, side: str, cluster: int) -> np.ndarray:
        """c_C(t) [n_tokens] on one response: same weights and standardisation as c_C(y) (module doc)."""
        c = self.check_cluster(cluster)
        if c == LENGTH:
            raise AnatomistError("response length has no per-token score: shape it with λ (--lam length=…), "
                                 "not a token filter")
        members = self.concepts.labels == c
        acts = self.latents.token_acts(self._seq(pair_id, side), self.concepts.features[members])  # [T, M]
        raw = acts.astype(np.float64) @ self.concepts.weights[members]                              # [T]
        return (raw - self.concepts.mean[c]) / self.concepts.sd[c]

    def _seq(self, pair_id: str, side: str) -> int:
        if side not in ("chosen", "rejected"):
            raise AnatomistError(f"side must be 'chosen' or 'rejected', got {side!r}")
        seq = 2 * self.pair_index(pair_id) + (side == "rejected")
        assert self.latents.ids[seq] == pair_id and self.latents.sides[seq] == side, \
            "latents/ stores pair i's sides at sequences 2i, 2i+1 in pairs.parquet order"
        return seq
