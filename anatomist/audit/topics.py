"""Prompt topics: cluster prompt embeddings, label each topic with its distinctive words.

The audit embeds prompts with all-MiniLM by default, or the model's own mean prompt residual
(embed.py says which recovers known topics better); any [P, D] matrix works. Rows are centred and L2-normalised
so clusters follow direction, not norm. k-means picks k by silhouette within `k_range` unless
`k` is given; Leiden on a kNN graph is the alternative (`method="leiden"`).
"""

from __future__ import annotations

import re
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


# Words every chat prompt uses whatever its topic (HH-RLHF's model-residual topics came out as
# "people / think / want / don"): requests, hedges, greetings and generic referents. With
# scikit-learn's English list they make `stop_words()`; no topic name contains one.
CHAT_FILLER = frozenset("""
    want wants wanted wanting think thinks thought know knows knew like likes liked just really actually
    maybe probably going gonna wanna good bad great nice make makes making made need needs needed tell
    telling told say says said saying way ways thing things stuff something anything everything nothing
    use using used get gets getting got does did doing don doesn didn isn aren wasn weren won wouldn
    shouldn couldn ok okay yes yeah yep sure thanks thank please help hi hello hey lot lots kind
    sort mean means right let ask asking asked question questions answer try trying tried give go goes
    went come came look looking idea ideas best better sorry guess feel believe able people
    person someone somebody anyone anybody everyone guy guys time times day long new old little big
    """.split())


def stop_words() -> frozenset[str]:
    """scikit-learn's English stop words and CHAT_FILLER: never part of a topic name."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(ENGLISH_STOP_WORDS) | CHAT_FILLER


def content_words(text: str, stop: frozenset[str]) -> list[str]:
    """Lower-cased words of ≥ 2 letters, not in `stop`. A contraction ("don't", "I'm") is one
    word and dropped (they are function words), except "'s", which may be a possessive: its stem
    is kept ("Trump's" → "trump"; "it's" → "it", a stop word)."""
    words = re.findall(r"[a-z][a-z'’]*[a-z]", text.lower())
    words = [re.sub(r"['’]s$", "", w) for w in words]
    return [w for w in words if "'" not in w and "’" not in w and len(w) > 1 and w not in stop]


def distinctive_words(texts: list[str], labels: np.ndarray, n_words: int = 4) -> list[str]:
    """Class-based TF-IDF name per topic (Grootendorst 2022, BERTopic), over each topic's prompts
    joined as one document, stop words removed (`stop_words`):
        W(t, c) = tf(t, c) / |c| · log(1 + A / f(t))
    tf(t, c): count of word t in topic c, |c| its word count, A: mean words per topic, f(t): count
    of t over all topics. The `n_words` highest words, joined by " / "."""
    from sklearn.feature_extraction.text import CountVectorizer

    k = int(labels.max()) + 1
    docs = [" ".join(t for t, lab in zip(texts, labels) if lab == c) for c in range(k)]
    stop = stop_words()
    try:
        vec = CountVectorizer(analyzer=lambda doc: content_words(doc, stop))
        counts = vec.fit_transform(docs).toarray().astype(np.float64)  # [k, V]
    except ValueError:  # no words at all
        return [f"topic {c}" for c in range(k)]
    vocab = np.array(vec.get_feature_names_out())
    tf = counts / np.clip(counts.sum(1, keepdims=True), 1, None)
    score = tf * np.log(1 + counts.sum(1).mean() / np.clip(counts.sum(0), 1, None))
    names = []
    for c in range(k):
        top = [w for w in np.argsort(-score[c], kind="stable")[:n_words] if counts[c, w] > 0]
        names.append(" / ".join(vocab[top]) if top else f"topic {c}")
    return names


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
