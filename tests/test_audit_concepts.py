"""Concept clusters: co-firing features group together; scores are standardised and reusable."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from anatomist.audit.concepts import Concepts, concept_clusters
from anatomist.errors import AnatomistError


def _planted(seed=0, S=400):
    """Features 0-4 fire together (concept A), 5-9 together (B), 10-14 are rare noise."""
    rng = np.random.default_rng(seed)
    acts = np.zeros((S, 15))
    a, b = rng.random(S) < 0.4, rng.random(S) < 0.4
    acts[a, 0:5] = rng.exponential(1.0, (a.sum(), 5))
    acts[b, 5:10] = rng.exponential(2.0, (b.sum(), 5))
    acts[:3, 10:15] = 1.0
    return sp.csr_matrix(acts)


def test_cofiring_features_form_concepts():
    concepts = concept_clusters(_planted(), min_support=10, knn=4)
    assert set(concepts.features) == set(range(10))  # rare features are not clustered
    groups = {frozenset(concepts.members(c)) for c in range(concepts.n_clusters)}
    assert groups == {frozenset(range(5)), frozenset(range(5, 10))}


def test_scores_are_standardised_and_hand_checked():
    acts = _planted()
    concepts = concept_clusters(acts, min_support=10, knn=4)
    c = concepts.scores(acts)
    np.testing.assert_allclose(c.mean(0), 0, atol=1e-9)
    np.testing.assert_allclose(c.std(0), 1, atol=1e-9)
    dense = acts.toarray()
    cluster = concepts.labels[list(concepts.features).index(7)]
    members = concepts.members(cluster)
    raw = (dense[:, members] / dense[:, members].std(0)).sum(1)
    np.testing.assert_allclose(c[:, cluster], (raw - raw.mean()) / raw.std(), atol=1e-9)
    again = Concepts.from_dict(concepts.to_dict())
    np.testing.assert_allclose(again.scores(acts), c)


def test_decoder_term_and_errors():
    acts = _planted()
    W_dec = np.eye(15, 8)  # orthogonal-ish decoder rows: decoder cosine alone carries no grouping
    with pytest.raises(AnatomistError, match="decoder_weight must be in"):
        concept_clusters(acts, W_dec=W_dec, decoder_weight=2)
    mixed = concept_clusters(acts, W_dec=W_dec, decoder_weight=0.3, min_support=10, knn=4)
    assert {frozenset(mixed.members(c)) for c in range(mixed.n_clusters)} == {frozenset(range(5)), frozenset(range(5, 10))}
    with pytest.raises(AnatomistError, match="only 0 SAE features fire in >= 1000 responses"):
        concept_clusters(acts, min_support=1000)
