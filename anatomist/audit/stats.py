"""Moved to `anatomist.stats` (the ground floor), so the screen, below the audit, shares it;
these names stay importable from here."""

from anatomist.stats import (COLUMNS, add_q, benjamini_hochberg, bootstrap_mean_ci, cluster_sums,
                             clustered_se, pair_stats, prompt_clusters)

__all__ = ["COLUMNS", "add_q", "benjamini_hochberg", "bootstrap_mean_ci", "cluster_sums", "clustered_se", "pair_stats",
           "prompt_clusters"]
