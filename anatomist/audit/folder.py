"""The audit folder: its file names, the columns of its tables, and the one reader of them.

`run_audit` (run.py) and `write_length_tables` (length.py) write the folder with the names and
columns below (`write_table` checks them); every other stage reads it through `AuditFolder`.

    latents/              per-token sparse SAE latents of every response + prompt embeddings (shard
                          store); sequence 2i / 2i+1 = pair i's chosen / rejected, in pairs.parquet order
    audit.json            every parameter, model, SAE and data hash, topics, timings (written last:
                          its presence marks a finished audit)
    rows.parquet          one row per (topic, cluster) + dataset-wide rows (rows.py)
    features.parquet      per-feature pair statistics (dataset-wide), for features with enough support
    clusters.parquet      one row per concept cluster: members, label, detection accuracy, Δc summary,
                          the logit lens of its decoder direction (LOGIT_LENS) and the screen's
                          detectors it tracks (TRACKS, audit/tracks.py); audits from before them
                          lack the columns
    pairs.parquet         per (pair, cluster), pair-major: pair id, topic, c(y⁺), c(y⁻), Δc, and the
                          pair's text hash (`anatomist.data.text_hash`; audits from before it lack it)
    length.parquet        response length (log tokens, chosen − rejected) per topic, tested like a
                          concept (rows.parquet's columns; cluster = LENGTH); length_pairs.parquet:
                          tokens per response (length.py)
    concepts.json         the concept-score transform (members, weights, standardisation) for shaping
    examples.json         per cluster: top-activating snippets (token, activation) and example pairs
    screen.parquet, screen_fires.parquet, screen.json   the screen (model-free detectors, pair hygiene),
                          run first (audit/screen_files.py; audits from before it lack them)
    report.html           the self-contained report (re-render with `anatomist report DIR`)
    score.json            only after `anatomist organism score`: the audit scored against planted truth

Pairs are joined to an audit by id, but ids outlive their texts (organism ids hash the prompt, HH
ids name file:row), so `AuditFolder.check_data` refuses data whose texts the audit did not score.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

from anatomist.data import dataset_hash, load_pairs, text_hash
from anatomist.errors import AnatomistError, DataError
from anatomist.audit.screen_files import SCREEN, SCREEN_FILES, SCREEN_FIRES, SCREEN_META, read_screen  # noqa: F401
from anatomist.fileio import atomic_write_parquet, atomic_write_text

META = "audit.json"
ROWS = "rows.parquet"
FEATURES = "features.parquet"
CLUSTERS = "clusters.parquet"
PAIRS = "pairs.parquet"
LENGTH_ROWS = "length.parquet"
LENGTH_PAIRS = "length_pairs.parquet"
CONCEPTS = "concepts.json"
EXAMPLES = "examples.json"
LATENTS = "latents"
REPORT = "report.html"
SCORE = "score.json"

LENGTH = -1                # the cluster id that stands for response length wherever rows are mixed
TEXT_HASH = "text_hash"    # pairs.parquet: `anatomist.data.text_hash` of the pair, repeated per cluster
LOGIT_LENS = "logit_lens"  # clusters.parquet: the concept's top output tokens (`anatomist.audit.lens`), a list
TRACKS = "tracks"          # clusters.parquet: the detectors the concept tracks (`anatomist.audit.tracks`), a list

_ROW_COLUMNS = ("topic", "topic_id", "cluster", "n", "mean", "d", "z", "ci_low", "ci_high", "split_half", "q",
                "excess", "tested", "direction", "rank_score")
# The columns a reader may rely on; writers write at least these (rows.py and run.py add a few more).
COLUMNS: dict[str, tuple[str, ...]] = {
    ROWS: _ROW_COLUMNS,
    LENGTH_ROWS: _ROW_COLUMNS,
    FEATURES: ("feature", "cluster", "n", "mean", "d", "z", "ci_low", "ci_high", "split_half", "q", "support"),
    CLUSTERS: ("cluster", "label", "label_status", "detection_acc", "n_features", "features", "mean_delta", "q",
               "direction"),
    PAIRS: ("pair_id", "topic_id", "cluster", "c_chosen", "c_rejected", "delta"),
    LENGTH_PAIRS: ("pair_id", "topic_id", "n_chosen", "n_rejected"),
}
SCORE_KEYS = ("recall", "precision", "sign_accuracy", "n_found", "n_planted_cells", "n_flagged", "rho_min", "truth",
              "cells")


def write_table(out: str | Path, name: str, frame: pd.DataFrame) -> None:
    """Write table `name` (a key of COLUMNS) into audit folder `out`, atomically."""
    missing = [c for c in COLUMNS[name] if c not in frame.columns]
    assert not missing, f"{name} is written without {missing}"
    atomic_write_parquet(frame, Path(out) / name)


def write_json(out: str | Path, name: str, obj: dict, **kw) -> None:
    atomic_write_text(Path(out) / name, json.dumps(obj, **kw))


def is_audit_of(path: str | Path, pairs) -> bool:
    """Whether `path` holds a finished audit (audit.json is written last) of exactly these pairs, in order."""
    if not (Path(path) / META).is_file():
        return False
    recorded = AuditFolder(path).data_hash
    return recorded is not None and recorded == dataset_hash(pairs)


class AuditFolder:
    """A finished audit folder, read lazily: each file is read (and its columns checked) the first
    time something asks for it, so a stage needs only the files it uses."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise AnatomistError(f"{self.path}: no such audit folder; run `anatomist audit --out {self.path}` first")

    def __repr__(self) -> str:
        return f"AuditFolder({str(self.path)!r})"

    # --- files -----------------------------------------------------------------------------------

    def has(self, name: str) -> bool:
        return (self.path / name).is_dir() if name == LATENTS else (self.path / name).is_file()

    def require(self, *names: str) -> None:
        """One line naming every missing file, before any is read."""
        missing = [n for n in names if not self.has(n)]
        if missing:
            raise AnatomistError(f"{self.path} is not a finished audit folder: missing {', '.join(missing)}; "
                                 f"run `anatomist audit --out {self.path}` first")

    def _read(self, name: str, reader):
        self.require(name)
        path = self.path / name
        try:
            return reader(path)
        except Exception as e:  # json / pyarrow raise many types; all mean the same to the user
            first = str(e).splitlines()[0] if str(e) else ""
            raise AnatomistError(f"{path}: unreadable ({type(e).__name__}: {first})") from e

    def _json(self, name: str) -> dict:
        value = self._read(name, lambda p: json.loads(p.read_text(encoding="utf-8")))
        if not isinstance(value, dict):
            raise AnatomistError(f"{self.path / name}: expected a JSON object, got {type(value).__name__}")
        return value

    def _table(self, name: str) -> pd.DataFrame:
        frame = self._read(name, pd.read_parquet)
        missing = [c for c in COLUMNS[name] if c not in frame.columns]
        if missing:
            raise AnatomistError(f"{self.path / name}: missing column(s) {', '.join(missing)}")
        return frame

    @cached_property
    def meta(self) -> dict:
        return self._json(META)

    @cached_property
    def rows(self) -> pd.DataFrame:
        return self._table(ROWS)

    @cached_property
    def features(self) -> pd.DataFrame:
        return self._table(FEATURES)

    @cached_property
    def clusters(self) -> pd.DataFrame:
        return self._table(CLUSTERS)

    @cached_property
    def pairs(self) -> pd.DataFrame:
        """pairs.parquet as written: one row per (pair, cluster), pair-major."""
        return self._table(PAIRS)

    @cached_property
    def length_rows(self) -> pd.DataFrame | None:
        """length.parquet, or None for an audit written before the length tables."""
        return self._table(LENGTH_ROWS) if self.has(LENGTH_ROWS) else None

    @cached_property
    def length_pairs(self) -> pd.DataFrame | None:
        return self._table(LENGTH_PAIRS) if self.has(LENGTH_PAIRS) else None

    @cached_property
    def concepts(self):
        from anatomist.audit.concepts import Concepts

        d = self._json(CONCEPTS)
        missing = [k for k in ("features", "labels", "weights", "mean", "sd") if k not in d]
        if missing:
            raise AnatomistError(f"{self.path / CONCEPTS}: missing field(s) {', '.join(missing)}")
        return Concepts.from_dict(d)

    @cached_property
    def examples(self) -> dict:
        return self._json(EXAMPLES)

    @cached_property
    def score(self) -> dict | None:
        """score.json (the audit scored against an organism's truth), or None where it was not scored."""
        if not self.has(SCORE):
            return None
        score = self._json(SCORE)
        missing = [k for k in SCORE_KEYS if k not in score]
        if missing:
            raise AnatomistError(f"{self.path / SCORE}: missing {', '.join(missing)}; rewrite it with "
                                 f"`anatomist organism score {self.path}` or delete it")
        return score

    @cached_property
    def screen(self):
        """The screen run first (`anatomist.screen.ScreenResult`), or None for an audit without one."""
        return read_screen(self.path)

    @cached_property
    def latents(self):
        """The per-token latent store; pair i's responses are its sequences 2i (chosen) and 2i+1."""
        from anatomist.audit.pool import Latents

        if not self.has(LATENTS):
            raise AnatomistError(f"{self.path / LATENTS} is missing: token filtering needs the audit's "
                                 "per-token latents")
        lat = Latents(self.path / LATENTS)
        if len(lat.tokens) != 2 * len(self.pair_ids):
            raise AnatomistError(f"{self.path / LATENTS} holds {len(lat.tokens)} responses, the audit "
                                 f"{len(self.pair_ids)} pairs: the latents belong to another run")
        return lat

    # --- audit.json ------------------------------------------------------------------------------

    @property
    def layer(self) -> int:
        if "layer" not in self.meta:
            raise AnatomistError(f"{self.path / META}: missing field 'layer'")
        return int(self.meta["layer"])

    @property
    def sae_path(self) -> str:
        return str(self.meta.get("sae", ""))

    @property
    def model_name(self) -> str:
        return str(self.meta.get("model", ""))

    @property
    def config(self) -> dict:
        return dict(self.meta.get("config", {}))

    @property
    def topic_names(self) -> list[str]:
        """Names of topic ids 0..K-1 ([] where the audit recorded none)."""
        return [str(n) for n in self.meta.get("topics", {}).get("names", [])]

    @property
    def data_hash(self) -> str | None:
        return self.meta.get("data", {}).get("hash")

    @property
    def data_file(self) -> Path | None:
        """The audited preference file, as audit.json records it (None where it does not).

        Audits now record it absolute. An older audit recorded it as typed, relative to the folder
        the audit ran in, which is usually an ancestor of the audit folder (its --out was typed
        from the same place): a relative path is looked up from here, then from the audit folder
        upwards, and returned as recorded where none holds it (the reader fails naming it)."""
        data = self.meta.get("data", {})
        name = data.get("file") or data.get("path")
        if not name:
            return None
        path = Path(name)
        if path.is_absolute() or path.exists():
            return path
        here = self.path.resolve()
        return next((d / path for d in (here, *here.parents) if (d / path).exists()), path)

    # --- per-pair tables, in audit order -------------------------------------------------------

    @cached_property
    def _by_pair(self) -> dict:
        """pairs.parquet reshaped to [P, C] (it is pair-major, every cluster 0..C-1 once per pair)."""
        table = self.pairs
        if not len(table):
            raise AnatomistError(f"{self.path / PAIRS}: holds no pairs")
        C = int(table["cluster"].max()) + 1
        cluster = table["cluster"].to_numpy()
        ids = table["pair_id"].astype(str).to_numpy(dtype=object)
        if len(table) % C or not (cluster.reshape(-1, C) == np.arange(C)).all() \
                or not (ids.reshape(-1, C) == ids[::C, None]).all():
            raise AnatomistError(f"{self.path / PAIRS}: expected every cluster 0..{C - 1} once per pair, pair-major")
        mat = lambda col: table[col].to_numpy(np.float64).reshape(-1, C)  # noqa: E731
        return {"ids": [str(i) for i in ids[::C]], "topic": table["topic_id"].to_numpy()[::C].astype(int),
                "c_chosen": mat("c_chosen"), "c_rejected": mat("c_rejected"), "delta": mat("delta"),
                "text_hash": [str(h) for h in table[TEXT_HASH].to_numpy()[::C]] if TEXT_HASH in table else None}

    @property
    def pair_ids(self) -> list[str]:
        """[P] pair ids in audit order (the latents' sequence order)."""
        return self._by_pair["ids"]

    @property
    def n_clusters(self) -> int:
        return self._by_pair["c_chosen"].shape[1]

    @property
    def topic_ids(self) -> np.ndarray:
        return self._by_pair["topic"]                                           # [P]

    @property
    def c_chosen(self) -> np.ndarray:
        return self._by_pair["c_chosen"]                                        # [P, C]

    @property
    def c_rejected(self) -> np.ndarray:
        return self._by_pair["c_rejected"]                                      # [P, C]

    @property
    def delta(self) -> np.ndarray:
        return self._by_pair["delta"]                                           # [P, C]

    @cached_property
    def response_scores(self) -> np.ndarray:
        """c [2P, C] per response, 2i = pair i's chosen and 2i+1 its rejected (the latents' order)."""
        c = np.empty((2 * len(self.pair_ids), self.n_clusters))
        c[0::2], c[1::2] = self.c_chosen, self.c_rejected
        return c

    @property
    def text_hashes(self) -> list[str] | None:
        """[P] per-pair text hashes, or None for an audit written before they were recorded."""
        return self._by_pair["text_hash"]

    @cached_property
    def _row(self) -> dict[str, int]:
        return {pid: i for i, pid in enumerate(self.pair_ids)}

    def pair_index(self, pair_id: str) -> int:
        """Row of `pair_id` in audit order (its sequences in latents/ are 2i and 2i+1)."""
        if pair_id not in self._row:
            raise DataError(f"pair {pair_id!r} is not in the audit (was the audit run on this data?)",
                            file=str(self.path / PAIRS), field="pair_id")
        return self._row[pair_id]

    def topic(self, pair_id: str) -> str | None:
        """The audit's prompt topic of a pair (None where the audit recorded no topic names)."""
        t, names = int(self.topic_ids[self.pair_index(pair_id)]), self.topic_names
        return names[t] if 0 <= t < len(names) else None

    @cached_property
    def n_tokens(self) -> np.ndarray | None:
        """[P, 2] response tokens (chosen, rejected) in audit order, or None for an audit without
        the length tables."""
        if self.length_pairs is None:
            return None
        table = self.length_pairs.assign(pair_id=self.length_pairs["pair_id"].astype(str)).drop_duplicates("pair_id")
        n = table.set_index("pair_id").reindex(self.pair_ids)[["n_chosen", "n_rejected"]]
        if n.isna().any().any():
            raise AnatomistError(f"{self.path / LENGTH_PAIRS}: does not hold every pair of {PAIRS}")
        return n.to_numpy(np.int64)

    @cached_property
    def length_scores(self) -> np.ndarray | None:
        """[P, 2] the length concept c_len(y) = (log n(y) − mean) / sd over every audited response."""
        if self.n_tokens is None:
            return None
        logn = np.log(np.maximum(self.n_tokens.astype(np.float64), 1.0))       # [P, 2]
        sd = logn.std()
        return (logn - logn.mean()) / (sd if sd > 0 else 1.0)

    # --- clusters ----------------------------------------------------------------------------------

    @cached_property
    def labels(self) -> dict[int, str]:
        """{cluster: label}, "" where the labeller gave none."""
        blank = lambda v: v is None or v != v or not str(v).strip()  # noqa: E731  (None, NaN, "")
        return {int(k): "" if blank(v) else str(v) for k, v in zip(self.clusters["cluster"], self.clusters["label"])}

    def label(self, cluster: int) -> str:
        """The cluster's label ("" where the labeller gave none; "long responses" for LENGTH)."""
        c = self.check_cluster(cluster)
        return "long responses" if c == LENGTH else self.labels.get(c, "")

    @cached_property
    def names(self) -> dict[int, str]:
        """{cluster: what a person reads for it} (`labels.concept_name`): the label where held-out
        detection trusts it, else the top activating context and why there is no name — never blank."""
        from anatomist.audit.labels import Context, concept_name

        examples = self.examples if self.has(EXAMPLES) else {}
        out = {}
        for c, status, acc in zip(self.clusters["cluster"], self.clusters["label_status"],
                                  self.clusters["detection_acc"]):
            contexts = examples.get(str(int(c)), {}).get("activating", [])
            top = max((Context(tuple(x["tokens"]), tuple(x["acts"]), x["record_id"], x["side"]) for x in contexts),
                      key=lambda x: x.peak, default=None)
            out[int(c)] = concept_name(self.labels[int(c)] or None, str(status),
                                       None if acc is None or acc != acc else float(acc), top)
        return out

    def name(self, cluster: int) -> str:
        """The cluster's readable name (`names`; "long responses" for LENGTH)."""
        c = self.check_cluster(cluster)
        return self.label(c) if c == LENGTH else self.names[c]

    @cached_property
    def lenses(self) -> dict[int, list[str]]:
        """{cluster: its logit-lens tokens}, {} for an audit written before them."""
        if LOGIT_LENS not in self.clusters.columns:
            return {}
        return {int(c): [] if v is None else [str(t) for t in v]
                for c, v in zip(self.clusters["cluster"], self.clusters[LOGIT_LENS])}

    @cached_property
    def tracks(self) -> dict[int, list[dict]]:
        """{cluster: [{detector, auroc, ci_low, ci_high, n_fires}, …]}, {} for an audit without them."""
        if TRACKS not in self.clusters.columns:
            return {}
        return {int(c): [] if v is None else [dict(t) for t in v]
                for c, v in zip(self.clusters["cluster"], self.clusters[TRACKS])}

    def check_cluster(self, cluster: int) -> int:
        if int(cluster) == LENGTH:
            if self.n_tokens is None:
                raise AnatomistError(f"{self.path} has no response-length tables ({LENGTH_PAIRS}): re-run "
                                     "`anatomist audit` on it to shape on length")
            return LENGTH
        if not 0 <= int(cluster) < self.n_clusters:
            raise AnatomistError(f"cluster {cluster} is out of range: the audit in {self.path} has "
                                 f"{self.n_clusters} clusters (0..{self.n_clusters - 1})")
        return int(cluster)

    def resolve_concept(self, spec: str | int) -> int:
        """A cluster id, "length" (response length), or a label (exact match first, then a unique substring)."""
        if str(spec).strip().lower() == "length":
            return self.check_cluster(LENGTH)
        if isinstance(spec, (int, np.integer)) or str(spec).lstrip("-").isdigit():
            return self.check_cluster(int(spec))
        labels = pd.Series(self.labels)
        labels = labels[labels != ""]
        exact = labels.index[labels == spec].tolist()
        hits = exact or labels.index[labels.str.contains(str(spec), regex=False)].tolist()
        if len(hits) != 1:
            what = "no cluster label contains" if not hits else f"{len(hits)} cluster labels contain"
            raise AnatomistError(f"{what} {spec!r} in {self.path / CLUSTERS}; pass a cluster id")
        return int(hits[0])

    def scores(self, pair_ids, clusters) -> tuple[np.ndarray, np.ndarray]:
        """Standardized concept scores c(y⁺), c(y⁻): two [P, K] arrays for the given pairs and clusters."""
        rows = [self.pair_index(p) for p in pair_ids]
        cols = [self.check_cluster(k) for k in clusters]
        pos, neg = np.empty((len(rows), len(cols))), np.empty((len(rows), len(cols)))         # [P, K] each
        for j, k in enumerate(cols):
            pos[:, j], neg[:, j] = ((self.length_scores[rows, 0], self.length_scores[rows, 1]) if k == LENGTH
                                    else (self.c_chosen[rows, k], self.c_rejected[rows, k]))
        return pos, neg

    # --- was the audit run on these texts? -------------------------------------------------------

    def check_text_hashes(self, pair_ids, hashes, *, src: str) -> None:
        """Refuse, in one line naming `src` and the pair, the first pair whose text hash
        (`anatomist.data.text_hash`) is not the one the audit recorded for its id."""
        recorded = self.text_hashes
        if recorded is None:
            raise AnatomistError(f"{src}: cannot be checked against {self.path}: the audit predates per-pair "
                                 "text hashes; re-run `anatomist audit`")
        for pid, h in zip(pair_ids, hashes):
            if h != recorded[self.pair_index(pid)]:
                raise AnatomistError(f"{src}: pair {pid!r} holds other texts than the audit in {self.path} "
                                     "scored (edited or rebuilt data); re-run `anatomist audit` on this data")

    def check_data(self, data, *, complete: bool = False) -> list:
        """The pairs of `data` (a preference file, or pairs), refused in one line unless the audit
        scored these very texts under these ids.

        With per-pair text hashes (pairs.parquet, current audits) every pair is checked by id, so
        any subset passes, in any order. An older audit can only compare the dataset hash, so it
        accepts only its complete data. complete=True also asks for every audited pair, in audit
        order, and the dataset hash (the extra columns included)."""
        given_path = isinstance(data, (str, Path))
        src = str(data) if given_path else "the given pairs"
        pairs = list(load_pairs(data)) if given_path else list(data)
        if self.text_hashes is not None:
            hashes = [text_hash(p) for p in pairs]
            for p, h in zip(pairs, hashes):    # swapped sides flip the sign of every Δc: named as such
                recorded = self.text_hashes[self.pair_index(p.id)]
                if h != recorded and text_hash(SimpleNamespace(prompt=p.prompt, chosen=p.rejected,
                                                               rejected=p.chosen)) == recorded:
                    raise AnatomistError(f"{src}: pair {p.id!r} has chosen and rejected swapped relative to the "
                                         f"audit in {self.path}; re-run `anatomist audit` on this data")
            self.check_text_hashes([p.id for p in pairs], hashes, src=src)
            if not complete:
                return pairs
        if self.data_hash is None:
            raise AnatomistError(f"{self.path / META}: records no data hash, so the data cannot be checked against "
                                 "it; re-run `anatomist audit`")
        if dataset_hash(pairs) != self.data_hash:
            hint = ("" if complete else "; this audit predates per-pair text hashes, so it takes only its complete "
                    "data file: re-run `anatomist audit` to use part of it")
            raise AnatomistError(f"{src}: is not the data audited in {self.path} (its hash differs from "
                                 f"{META}'s){hint}")
        ids = [p.id for p in pairs]
        if complete and ids != self.pair_ids:
            raise AnatomistError(f"{src}: its pair ids are not the ones of {self.path / PAIRS}, in order")
        for i in ids:
            self.pair_index(i)
        return pairs
