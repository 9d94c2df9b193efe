"""(topic, cluster) rows: a topic-specific planted asymmetry ranks first with the right direction."""

from __future__ import annotations

import numpy as np

from anatomist.audit.rows import ALL, direction, topic_cluster_rows


def test_direction_rule():
    assert direction(0.5, 0.01, True, 0.05) == "amplify"
    assert direction(-0.5, 0.01, True, 0.05) == "suppress"
    assert direction(0.5, 0.01, False, 0.05) == "none"
    assert direction(0.5, 0.2, True, 0.05) == "none"
    assert direction(0.5, float("nan"), True, 0.05) == "none"


def test_planted_topic_asymmetry():
    rng = np.random.default_rng(0)
    P, C = 240, 4
    topics = np.repeat(np.arange(3), 80)
    delta = rng.normal(size=(P, C))
    delta[topics == 1, 0] += 1.0   # concept 0 favoured on the chosen side, in topic 1 only
    delta[:, 2] -= 0.6             # concept 2 disfavoured everywhere
    rows = topic_cluster_rows(delta, topics, ["cooking", "coding", "travel"], n_boot=100, min_pairs=8)
    assert len(rows) == (1 + 3) * C
    top = rows.iloc[0]
    assert (top.topic, top.cluster, top.direction) == ("coding", 0, "amplify")
    all2 = rows[(rows.topic == ALL) & (rows.cluster == 2)].iloc[0]
    assert all2.direction == "suppress" and all2.q < 1e-3
    # concept 2's topic rows sit at the baseline: tiny excess
    assert rows[(rows.topic != ALL) & (rows.cluster == 2)]["excess_z"].abs().max() < 3
    # null concepts 1 and 3 get no direction anywhere
    assert set(rows[rows.cluster.isin([1, 3])]["direction"]) == {"none"}
    np.testing.assert_allclose(rows["excess"], rows["mean"] - rows["baseline"])


def test_rows_with_too_few_pairs_are_untested():
    rng = np.random.default_rng(1)
    topics = np.array([0] * 30 + [1] * 5)
    rows = topic_cluster_rows(rng.normal(size=(35, 2)) + 3, topics, ["big", "small"], min_pairs=8, n_boot=50)
    small = rows[rows.topic == "small"]
    assert (~small.tested).all() and small.q.isna().all() and set(small.direction) == {"none"}
    assert (rows[rows.topic == "big"].direction == "amplify").all()
