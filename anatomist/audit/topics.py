"""Prompt topics: cluster prompt embeddings, label each topic with its distinctive words.

Embeddings default to the model's own mean prompt residual at the audit layer (see pool.py);
any [P, D] matrix works (e.g. a sentence-embedding model's). Rows are centred and L2-normalised
so clusters follow direction, not norm. k-means picks k by silhouette within `k_range` unless
`k` is given; Leiden on a kNN graph is the alternative (`method="leiden"`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from anatomist.audit.graph import cosine_similarity, knn_graph, leiden
from anatomist.errors import AnatomistError


@dataclass
class Topics:
    labels: np.ndarray          # [P] topic index per pair
    names: list[str]            # offline label per topic: its most distinctive prompt words
    examples: list[list[str]]   # prompts nearest each topic's centre
    method: str
    silhouette: float           # of the chosen partition (cosine), in [-1, 1]

    @property
    def k(self) -> int:
        return len(self.names)


def _normalise(emb: np.ndarray) -> np.ndarray:
    x = emb - emb.mean(0)
    return x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)


def _kmeans(x: np.ndarray, k: int | None, k_range: tuple[int, int], seed: int) -> tuple[np.ndarray, float]:
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    candidates = [k] if k else range(k_range[0], min(k_range[1], len(x) - 1) + 1)
    best = None
    for kk in candidates:
        labels = KMeans(kk, n_init=4, random_state=seed).fit_predict(x)
        score = silhouette_score(x, labels, metric="cosine") if len(set(labels)) > 1 else -1.0
        if best is None or score > best[1]:
            best = (labels, score)
    return best


def distinctive_words(texts: list[str], labels: np.ndarray, n_words: int = 4) -> list[str]:
    """c-TF-IDF label per topic: tf(word, topic) · log(1 + mean words per topic / tf(word))."""
    from sklearn.feature_extraction.text import CountVectorizer

    k = int(labels.max()) + 1
    docs = [" ".join(t for t, lab in zip(texts, labels) if lab == c) for c in range(k)]
    try:
        vec = CountVectorizer(stop_words="english", token_pattern=r"(?u)\b[a-zA-Z][a-zA-Z]+\b")
        counts = vec.fit_transform(docs).toarray().astype(np.float64)  # [k, V]
    except ValueError:  # no words at all
        return [f"topic {c}" for c in range(k)]
    vocab = np.array(vec.get_feature_names_out())
    tf = counts / np.clip(counts.sum(1, keepdims=True), 1, None)
    score = tf * np.log(1 + counts.sum(1).mean() / np.clip(counts.sum(0), 1, None))
    return [" / ".join(vocab[np.argsort(-score[c])[:n_words]]) for c in range(k)]


def column_topics(values: list, texts: list[str], *, n_examples: int = 3) -> Topics:
    """Topics given by the data (e.g. a `topic` column): one topic per distinct value, sorted."""
    names = sorted({str(v) for v in values})
    index = {n: i for i, n in enumerate(names)}
    labels = np.array([index[str(v)] for v in values])
    examples = [[t for t, lab in zip(texts, labels) if lab == c][:n_examples] for c in range(len(names))]
    return Topics(labels, names, examples, "column", float("nan"))


def prompt_topics(emb: np.ndarray, texts: list[str], *, k: int | None = None, k_range: tuple[int, int] = (2, 8),
                  method: str = "kmeans", resolution: float = 1.0, seed: int = 0, n_examples: int = 3,
                  backend: str = "sknetwork") -> Topics:
    """Cluster P prompts (emb [P, D], texts [P]) into topics."""
    if len(emb) != len(texts):
        raise AnatomistError(f"{len(emb)} prompt embeddings but {len(texts)} prompt texts")
    if len(emb) < 4:
        raise AnatomistError(f"need at least 4 prompts to find topics, got {len(emb)}")
    if k is not None and not 1 <= k < len(emb):
        raise AnatomistError(f"topics: k must be in 1..{len(emb) - 1}, got {k}")
    x = _normalise(np.asarray(emb, dtype=np.float64))
    if k == 1:
        labels, sil = np.zeros(len(x), dtype=int), 0.0
    elif method == "kmeans":
        labels, sil = _kmeans(x, k, k_range, seed)
    elif method == "leiden":
        from sklearn.metrics import silhouette_score

        labels = leiden(knn_graph(cosine_similarity(x), 15), resolution=resolution, seed=seed, backend=backend)
        sil = silhouette_score(x, labels, metric="cosine") if 1 < len(set(labels)) < len(x) else 0.0
    else:
        raise AnatomistError(f"topics: method must be 'kmeans' or 'leiden', got {method!r}")
    labels = np.asarray(labels, dtype=int)
    examples = []
    for c in range(labels.max() + 1):
        members = np.flatnonzero(labels == c)
        centre = x[members].mean(0)
        examples.append([texts[i] for i in members[np.argsort(-(x[members] @ centre))[:n_examples]]])
    return Topics(labels, distinctive_words(texts, labels), examples, method, float(sil))
