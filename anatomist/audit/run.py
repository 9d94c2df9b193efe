"""`run_audit`: pairs → pooled SAE latents → topics × concept clusters → tables, labels, report.

It writes the audit folder (every file atomically; `latents/` resumes after a kill); the file
names and columns are in `anatomist.audit.folder`, which is also the one reader of the folder.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from anatomist.audit.concepts import concept_clusters
from anatomist.audit.embed import EMBEDDERS, minilm_dir, minilm_embed
from anatomist.audit.folder import (
    CLUSTERS,
    CONCEPTS,
    EXAMPLES,
    FEATURES,
    LATENTS,
    LOGIT_LENS,
    META,
    PAIRS,
    ROWS,
    TEXT_HASH,
    TRACKS,
    read_screen,
    write_json,
    write_table,
)
from anatomist.audit.graph import LEIDEN_BACKENDS
from anatomist.audit.labels import token_units
from anatomist.audit.lens import concept_lens
from anatomist.audit.pool import POOLINGS, check_pool_inputs, pool_features
from anatomist.audit.rows import topic_cluster_rows
from anatomist.audit.screen_files import screen_key, write_screen
from anatomist.audit.stats import prompt_clusters
from anatomist.audit.topics import column_topics, prompt_topics
from anatomist.audit.tracks import CI_LOW_MIN, MIN_FIRES, by_cluster, detector_tracks, response_fires
from anatomist.capture.run import items_from_pairs
from anatomist.data import dataset_hash, text_hash
from anatomist.errors import AnatomistError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AuditConfig:
    # Mean pooling by default: max over a response grows with its length, so on real data (HH:
    # rejected answers run longer) max-pooled concepts mostly measure length, not content. "calmax"
    # (max calibrated for length, audit.calmax) keeps a short span's strength without the length.
    pooling: str = "mean"                # which pooled vector feeds the statistics: audit.pool.POOLINGS
    topk: int = 16                       # k of pooling="topk": the mean of a latent's k largest token values
    min_support: int = 10                # a feature must fire in this many responses to be clustered
    knn: int = 10                        # neighbours per feature in the concept graph
    decoder_weight: float = 0.0          # weight of decoder-direction cosine in the feature graph
    # ~90 concepts of ~40 latents for a 4,608-latent SAE on 300 HH pairs (1.0 gave 19 of ~150)
    resolution: float = 4.0              # Leiden resolution (higher: more, smaller concepts)
    topics: int | None = None            # number of prompt topics (None: chosen by silhouette)
    topic_range: tuple[int, int] = (2, 8)
    topic_method: str = "kmeans"         # "kmeans" | "leiden"
    topic_column: str | None = None      # take topics from this data column instead of clustering
    topic_embedder: str = "minilm"       # prompt embeddings: all-MiniLM (default: why in embed.py), or "model"
    leiden_backend: str = "sknetwork"    # "sknetwork" (BSD) or "leidenalg" (GPL, optional install)
    min_pairs: int = 8                   # rows with fewer pairs are not tested
    alpha: float = 0.05                  # FDR level for a predicted direction
    n_boot: int = 1000
    n_examples: int = 12                 # activating / non-activating contexts per cluster kept in examples.json
    # Contexts per side the labeller sees (half label, half held out): 12 left 6 + 6 to score on, so
    # accuracies swung by 1/12 and labels were fit on 6 (benchmarks/labels.py: at 40, 0.66 of the
    # organism audit's concepts reach accuracy 0.8, vs 0.46 at 12).
    label_contexts: int = 40
    labeller: str = "offline"
    labeller_kwargs: dict = field(default_factory=dict)
    max_length: int = 256
    batch_size: int = 8
    seed: int = 0

    def __post_init__(self):
        if self.pooling not in POOLINGS:
            raise AnatomistError(f"pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        if self.topk < 1:
            raise AnatomistError(f"topk must be >= 1, got {self.topk}")
        if not 0 < self.alpha < 1:
            raise AnatomistError(f"alpha must be in (0, 1), got {self.alpha}")
        if self.topic_embedder not in EMBEDDERS:
            raise AnatomistError(f"topic_embedder must be one of {EMBEDDERS}, got {self.topic_embedder!r}")
        if self.topic_embedder == "minilm" and not self.topic_column:
            minilm_dir()        # not installed: one line saying how, before minutes of pooling
        if self.leiden_backend not in LEIDEN_BACKENDS:
            raise AnatomistError(f"leiden_backend must be one of {tuple(LEIDEN_BACKENDS)}, got {self.leiden_backend!r}")
        if self.min_support < 1 or self.min_pairs < 2 or self.knn < 1 or self.n_boot < 10 or self.label_contexts < 2:
            raise AnatomistError("min_support >= 1, min_pairs >= 2, knn >= 1, n_boot >= 10 and label_contexts >= 2 "
                                 "are required")
        if not self.resolution > 0:
            raise AnatomistError(f"resolution must be positive, got {self.resolution}")
        if self.topic_method not in ("kmeans", "leiden"):
            raise AnatomistError(f"topic_method must be 'kmeans' or 'leiden', got {self.topic_method!r}")
        # Checked here, not after pooling (minutes on a real model): the labeller's name and, for an
        # LLM labeller, its endpoint — a remote host is refused (or warned about) before any work.
        from anatomist.audit.labels import LABELLERS

        if self.labeller not in LABELLERS:
            raise AnatomistError(f"--labeller {self.labeller!r}: choose one of {', '.join(sorted(LABELLERS))}")
        if self.labeller != "offline":
            LABELLERS[self.labeller](**self.labeller_kwargs)


def prompt_text(pair) -> str:
    """The prompt text topics are found from and the report shows: the last user turn."""
    users = [m["content"] for m in pair.prompt if m["role"] == "user"]
    return users[-1] if users else pair.prompt[-1]["content"]


def conversation_opening(pair) -> str:
    """The key pairs are clustered by: the prompt up to its first user turn (system messages
    included). HH-RLHF's multi-turn siblings — one conversation cut at different depths — share it,
    as do pairs with the same prompt."""
    first = next((i for i, m in enumerate(pair.prompt) if m["role"] == "user"), len(pair.prompt) - 1)
    return json.dumps([[m["role"], m["content"]] for m in pair.prompt[:first + 1]])


def stats_note(groups: np.ndarray | None, n_pairs: int) -> dict:
    """audit.json's account of the unit of the pair statistics (the report prints `note`)."""
    if groups is None:
        return {"n_prompts": n_pairs, "clustered_by_prompt": False, "note": ""}
    G = int(groups.max()) + 1
    return {"n_prompts": G, "clustered_by_prompt": True,
            "note": f"pairs share prompts: {G} prompts for {n_pairs} pairs; CIs and se clustered by prompt"}


def concept_contexts(latents, units_of, concepts, c: np.ndarray, *, n_examples: int, seed: int) -> dict:
    """Activating (top c_C) and non-activating (random below-median) responses per cluster, with
    the cluster's per-token activation Σ_f w_f a_f(t) for labelling and the report's snippets.

    c [S, C]: concept scores per latent sequence; units_of(s) → the readable units of sequence s
    (`labels.token_units` over its token ids), computed once per sequence however many clusters use it.
    """
    from anatomist.audit.labels import unit_context

    rng = np.random.default_rng(seed)
    units, out = {}, {}
    for k in range(concepts.n_clusters):
        order = np.argsort(-c[:, k], kind="stable")
        low = np.flatnonzero(c[:, k] <= np.median(c[:, k]))
        picks = (order[:n_examples], rng.choice(low, size=min(n_examples, len(low)), replace=False))
        members, weights = concepts.members(k), concepts.weights[concepts.labels == k]

        def ctx(s):
            s = int(s)
            if s not in units:
                units[s] = units_of(s)
            acts = latents.token_acts(s, members) @ weights                     # [n_tokens]
            return unit_context(units[s], acts, latents.ids[s], latents.sides[s])
        out[k] = tuple([ctx(s) for s in group] for group in picks)
    return out


TRACKS_NOTE = (f"tracks: AUROC of the concept's score for the responses a screen detector fires on, kept where "
               f"its 95% CI (prompts resampled) starts at >= {CI_LOW_MIN} and it fires on >= {MIN_FIRES} "
               "responses and stays quiet on as many")


def screen_key_of(pairs, detectors: list[str], topics, cfg: AuditConfig) -> dict:
    labels = None if topics is None else [topics.names[k] for k in topics.labels]
    return screen_key(dataset_hash(pairs), detectors, labels, cfg.alpha, cfg.seed)


def screen_first(pairs, out: Path, topics, cfg: AuditConfig, *, progress: bool = True):
    """(the screen of `pairs`, its key, whether `out` already holds it): the default detectors and
    pair hygiene over the audit's topics (where known before pooling), read back from `out` where
    stored for the same key instead of computed; its table is printed when `progress`."""
    from rich.console import Console

    from anatomist.screen.detectors import resolve
    from anatomist.screen.hygiene import hygiene_of
    from anatomist.screen.report import render
    from anatomist.screen.run import screen_pairs

    key = screen_key_of(pairs, [d.name for d in resolve(None, ())], topics, cfg)
    result = read_screen(out, key)
    stored = result is not None
    if not stored:
        labels = None if topics is None else [topics.names[k] for k in topics.labels]
        result = screen_pairs(pairs, topics=labels, hygiene=hygiene_of(pairs), alpha=cfg.alpha, seed=cfg.seed)
    if progress:
        render(result, Console(highlight=False, width=max(Console().width, 120)))
    return result, key, stored


def run_audit(model, tokenizer, sae, pairs, out: str | Path, cfg: AuditConfig = AuditConfig(), *,
              model_name: str = "", sae_path: str = "", data_path: str = "", progress: bool = True) -> Path:
    """Audit preference `pairs` with `sae` on `model`; write the tables and the report into `out`.
    data_path (recorded in audit.json, made absolute) lets later stages find the audited file from any folder."""
    from anatomist.audit.labels import label_clusters
    from anatomist.audit.length import write_length_tables

    out = Path(out)
    pairs = list(pairs)
    if len(pairs) < 2 * cfg.min_pairs:
        raise AnatomistError(f"audit needs at least {2 * cfg.min_pairs} pairs, got {len(pairs)}")
    items = items_from_pairs(pairs)
    # what pooling would refuse is refused before the topics and the screen (seconds to minutes of work)
    check_pool_inputs(model, tokenizer, sae, items, max_length=cfg.max_length)
    # Topics that need no pass of the audited model come first, so the screen runs on them before pooling.
    timings, t = {}, time.perf_counter()
    texts = [prompt_text(p) for p in pairs]
    topics = None
    if cfg.topic_column:
        missing = [p.id for p in pairs if cfg.topic_column not in p.extra]
        if missing:
            raise AnatomistError(f"record {missing[0]!r}: field {cfg.topic_column!r} (the topic column) is missing")
        topics = column_topics([p.extra[cfg.topic_column] for p in pairs], texts)
    elif cfg.topic_embedder != "model":
        topics = prompt_topics(minilm_embed(texts), texts, k=cfg.topics, k_range=cfg.topic_range,
                               method=cfg.topic_method, seed=cfg.seed, backend=cfg.leiden_backend)
    timings["topics_s"] = time.perf_counter() - t

    t = time.perf_counter()
    screen, screen_key_, stored = screen_first(pairs, out, topics, cfg, progress=progress)
    timings["screen_s"] = time.perf_counter() - t

    # `out` comes into being with latents/ (pool_features), after its input checks: a bad input
    # leaves no folder behind.
    t = time.perf_counter()
    latents = pool_features(model, tokenizer, sae, items, out / LATENTS, max_length=cfg.max_length,
                            batch_size=cfg.batch_size, progress=progress)
    pooled = latents.pooled(topk=cfg.topk if cfg.pooling == "topk" else None)
    timings["pool_s"] = time.perf_counter() - t
    if not stored:
        write_screen(out, screen, screen_key_)

    t = time.perf_counter()
    if topics is None:       # the model's own prompt residuals: known only now
        topics = prompt_topics(pooled.prompt_emb[0::2], texts, k=cfg.topics, k_range=cfg.topic_range,
                               method=cfg.topic_method, seed=cfg.seed, backend=cfg.leiden_backend)
    W_dec = sae.W_dec.detach().cpu().numpy() if cfg.decoder_weight else None
    acts, concepts = pooled_concepts(latents, pooled, cfg, W_dec)                # [2P, F], C clusters
    groups = prompt_clusters([conversation_opening(p) for p in pairs])         # [P] or None: all distinct
    features = feature_table(acts, concepts, cfg, groups, support=pooled.max)
    c = concepts.scores(acts)                                                    # [2P, C]
    delta_c = c[0::2] - c[1::2]                                                  # [P, C]
    rows = topic_cluster_rows(delta_c, topics.labels, topics.names, min_pairs=cfg.min_pairs, alpha=cfg.alpha,
                              n_boot=cfg.n_boot, seed=cfg.seed, groups=groups)
    timings["stats_s"] = time.perf_counter() - t

    t = time.perf_counter()
    contexts = concept_contexts(latents, lambda s: token_units(latents.tokens[s], tokenizer.decode), concepts, c,
                                n_examples=max(cfg.label_contexts, cfg.n_examples), seed=cfg.seed)
    labels = label_clusters(contexts, labeller=cfg.labeller, seed=cfg.seed, progress=progress,
                            **cfg.labeller_kwargs)
    lens = concept_lens(model, tokenizer.decode, sae.decoder_directions(), concepts)
    timings["labels_s"] = time.perf_counter() - t

    t = time.perf_counter()
    names = [d.name for d in screen.detectors]
    unit = np.repeat(np.arange(len(pairs)) if groups is None else groups, 2)   # [2P] each response's prompt
    tracks = detector_tracks(c, response_fires(screen.fires, names), names, unit, n_boot=cfg.n_boot, seed=cfg.seed)
    timings["tracks_s"] = time.perf_counter() - t

    overall = rows[rows.topic == "all"].set_index("cluster")
    clusters = pd.DataFrame({
        "cluster": np.arange(concepts.n_clusters),
        "label": [labels[k].text for k in range(concepts.n_clusters)],
        "label_status": [labels[k].status for k in range(concepts.n_clusters)],
        "detection_acc": [labels[k].detection_acc for k in range(concepts.n_clusters)],
        "n_features": [int((concepts.labels == k).sum()) for k in range(concepts.n_clusters)],
        "features": [concepts.members(k).tolist() for k in range(concepts.n_clusters)],
        "mean_delta": overall.loc[np.arange(concepts.n_clusters), "mean"].to_numpy(),
        "q": overall.loc[np.arange(concepts.n_clusters), "q"].to_numpy(),
        "direction": overall.loc[np.arange(concepts.n_clusters), "direction"].to_numpy(),
        LOGIT_LENS: lens,
        TRACKS: by_cluster(tracks, concepts.n_clusters),
    })
    P, C = delta_c.shape
    pair_table = pd.DataFrame({
        "pair_id": np.repeat([p.id for p in pairs], C), "topic_id": np.repeat(topics.labels, C),
        "cluster": np.tile(np.arange(C), P), "c_chosen": c[0::2].ravel(), "c_rejected": c[1::2].ravel(),
        "delta": delta_c.ravel(), TEXT_HASH: np.repeat([text_hash(p) for p in pairs], C),
    })
    examples = {str(k): {
        "label": asdict(labels[k]),
        "activating": [asdict(x) for x in contexts[k][0][:cfg.n_examples]],
        "non_activating": [asdict(x) for x in contexts[k][1][:cfg.n_examples]],
        "pairs": _example_pairs(pairs, delta_c[:, k]),
    } for k in range(C)}
    meta = {
        "model": model_name, "sae": sae_path, "sae_cfg": sae.cfg.to_dict(), "layer": int(latents.settings["layer"]),
        "data": {"n_pairs": P, "hash": dataset_hash(pairs), "file": str(Path(data_path).resolve()) if data_path else data_path}, "config": asdict(cfg),
        "topics": {"names": topics.names, "examples": topics.examples, "method": topics.method,
                   "silhouette": topics.silhouette, "sizes": np.bincount(topics.labels).tolist()},
        "n_clusters": C, "n_features_clustered": int(len(concepts.features)), "timings": timings,
        "stats": stats_note(groups, P),
        "tracks": {"ci_low_min": CI_LOW_MIN, "min_fires": MIN_FIRES, "n_boot": cfg.n_boot,
                   "note": TRACKS_NOTE},
    }
    write_length_tables(out, [p.id for p in pairs], pooled.n_tokens, topics.labels, topics.names,
                        min_pairs=cfg.min_pairs, alpha=cfg.alpha, n_boot=cfg.n_boot, seed=cfg.seed, groups=groups)
    write_table(out, ROWS, rows)
    write_table(out, FEATURES, features)
    write_table(out, CLUSTERS, clusters)
    write_table(out, PAIRS, pair_table)
    write_json(out, CONCEPTS, concepts.to_dict())
    write_json(out, EXAMPLES, examples)
    write_json(out, META, meta, indent=2, default=float)    # last: marks the audit finished
    return out


def pooled_concepts(latents, pooled, cfg: AuditConfig, W_dec: np.ndarray | None = None):
    """(acts [S, F], concepts): the pooled latents the statistics read (cfg.pooling) and the
    concept clusters over them. calmax clusters the max-pooled latents (which fire together), then
    calibrates the clustered ones against the store's own tokens (`audit.calmax`)."""
    kw = dict(W_dec=W_dec, min_support=cfg.min_support, knn=cfg.knn, decoder_weight=cfg.decoder_weight,
              resolution=cfg.resolution, seed=cfg.seed, backend=cfg.leiden_backend)
    if cfg.pooling != "calmax":
        acts = getattr(pooled, cfg.pooling)
        return acts, concept_clusters(acts, **kw)
    concepts = concept_clusters(pooled.max, **kw)
    calibration = latents.max_calibration(concepts.features)
    acts = calibration.pooled(pooled.max, pooled.n_tokens)
    return acts, concepts.with_calibration(calibration, acts)


def feature_table(acts, concepts, cfg: AuditConfig, groups: np.ndarray | None = None,
                  support=None) -> pd.DataFrame:
    """Dataset-wide pair statistics per SAE feature (the clustered ones: support >= min_support),
    so a strong single feature stays visible whatever the cluster granularity. support [S, F]: the
    pooled latents whose nonzeros count as firing (default acts; calmax is never 0)."""
    from anatomist.audit.stats import add_q, pair_stats

    delta = (acts[0::2] - acts[1::2])[:, concepts.features].toarray()          # [P, M]
    table = add_q(pair_stats(delta, n_boot=cfg.n_boot, seed=cfg.seed, groups=groups))
    table.insert(0, "cluster", concepts.labels)
    table.insert(0, "feature", concepts.features)
    fired = acts if support is None else support
    table["support"] = np.asarray((fired[:, concepts.features] > 0).sum(0)).ravel()
    return table.sort_values("z", key=np.abs, ascending=False, kind="stable").reset_index(drop=True)


def _example_pairs(pairs, delta: np.ndarray, n: int = 3) -> list[dict]:
    """The pairs that push hardest each way on this concept (largest and smallest Δc)."""
    order = np.argsort(-delta, kind="stable")
    picks = [*order[:n], *order[::-1][:n]]
    return [{"pair_id": pairs[i].id, "delta": float(delta[i]), "prompt": prompt_text(pairs[i]),
             "chosen": pairs[i].chosen, "rejected": pairs[i].rejected} for i in picks]
