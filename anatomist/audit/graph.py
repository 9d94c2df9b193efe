"""kNN similarity graphs and Leiden partitions (shared by prompt topics and concept clusters).

Leiden comes from scikit-network (BSD) by default; `backend="leidenalg"` uses leidenalg/igraph,
which are GPL and therefore never required (`pip install leidenalg` to opt in).

scikit-network's Leiden core draws from the C library's `rand()` (sknetwork 0.33,
leiden_core.pyx), which its `random_state` does not seed: two calls in one process gave different
partitions of the same graph. `_sknetwork` seeds `rand()` with `srand(seed)` first, so a partition
depends only on the graph, the resolution and the seed (tests/test_audit_graph.py).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from anatomist.errors import AnatomistError


def cosine_similarity(x: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity [N, N] of x [N, M]; all-zero rows get similarity 0."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    unit = np.divide(x, norms, out=np.zeros_like(x, dtype=np.float64), where=norms > 0)
    return unit @ unit.T


def knn_graph(similarity: np.ndarray, k: int) -> sp.csr_matrix:
    """Keep each node's k most similar neighbours (positive weights only), symmetrised by max."""
    n = similarity.shape[0]
    k = min(k, n - 1)
    sim = similarity.copy()
    np.fill_diagonal(sim, -np.inf)
    nbrs = np.argpartition(-sim, k - 1, axis=1)[:, :k] if k > 0 else np.zeros((n, 0), dtype=int)  # [N, k]
    w = np.take_along_axis(sim, nbrs, axis=1)
    keep = w > 0
    rows = np.repeat(np.arange(n), k)[keep.ravel()]
    graph = sp.csr_matrix((w[keep], (rows, nbrs[keep])), shape=(n, n))
    return graph.maximum(graph.T).tocsr()


def _seed_c_rand(seed: int) -> None:
    """srand(seed) in the C library this process links (where ctypes can reach one)."""
    import ctypes
    import ctypes.util

    for name in (None, ctypes.util.find_library("c")):   # the process's own symbols, else libc by name
        try:
            ctypes.CDLL(name).srand(ctypes.c_uint(seed % 2**32))
            return
        except (OSError, AttributeError, TypeError):      # none reachable: partitions stay unseeded
            continue


def _sknetwork(graph: sp.csr_matrix, resolution: float, seed: int) -> np.ndarray:
    from sknetwork.clustering import Leiden

    _seed_c_rand(seed)
    return np.asarray(Leiden(resolution=resolution, random_state=seed).fit_predict(graph))


def _leidenalg(graph: sp.csr_matrix, resolution: float, seed: int) -> np.ndarray:
    try:
        import igraph
        import leidenalg
    except ImportError as e:
        raise AnatomistError("leiden backend 'leidenalg' needs: pip install leidenalg (GPL)") from e
    upper = sp.triu(graph, k=1).tocoo()
    g = igraph.Graph(n=graph.shape[0], edges=list(zip(upper.row.tolist(), upper.col.tolist())))
    part = leidenalg.find_partition(g, leidenalg.RBConfigurationVertexPartition, weights=upper.data.tolist(),
                                    resolution_parameter=resolution, seed=seed)
    labels = np.asarray(part.membership)
    # largest community first, as scikit-network returns them
    order = np.argsort(-np.bincount(labels), kind="stable")
    return np.argsort(order)[labels]


LEIDEN_BACKENDS = {"sknetwork": _sknetwork, "leidenalg": _leidenalg}


def leiden(graph: sp.csr_matrix, *, resolution: float = 1.0, seed: int = 0, backend: str = "sknetwork") -> np.ndarray:
    """Community label per node (0..C-1, largest community first)."""
    if graph.nnz == 0:
        return np.arange(graph.shape[0])  # no edges: every node is its own community
    return LEIDEN_BACKENDS[backend](graph, resolution, seed)
