"""Response length, tested beside the SAE concepts: the best-documented confound DPO learns.

DPO's implicit reward is a *sum* over response tokens, r = β·Σ_t log(π/π_ref), so when chosen
responses are systematically longer the policy is pushed to write more (Park et al. 2024,
"Disentangling length from quality in DPO"). Concept scores are pooled per token (max / mean) and
are nearly blind to how many tokens there are, so the audit tests length on its own:

    Δ_i = log n(y⁺_i) − log n(y⁻_i)      n = response tokens (the audit's response mask)

with the same statistics as a concept (`rows.topic_cluster_rows`: Δ̄, d, z, split-half, bootstrap
CI, clustered by prompt where pairs share prompts), per topic and dataset-wide, and its own
Benjamini–Hochberg family (one test per topic, so it neither dilutes nor is diluted by the concept
rows). exp(Δ̄) is the typical chosen/rejected length ratio. Files in the audit folder (names and
columns in `anatomist.audit.folder`):

    length.parquet         the rows (rows.parquet's columns; cluster = LENGTH)
    length_pairs.parquet   pair_id, topic_id, n_chosen, n_rejected
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from anatomist.audit.folder import LATENTS, LENGTH, LENGTH_PAIRS, LENGTH_ROWS, PAIRS, AuditFolder, write_table
from anatomist.audit.rows import topic_cluster_rows
from anatomist.errors import AnatomistError


def length_rows(n_tokens: np.ndarray, topics: np.ndarray, topic_names: list[str], **kw) -> pd.DataFrame:
    """Rows for n_tokens [2P] (2i chosen, 2i+1 rejected) and topics [P]; kw as topic_cluster_rows."""
    n = np.maximum(np.asarray(n_tokens, dtype=np.float64), 1.0)                  # [2P]
    delta = (np.log(n[0::2]) - np.log(n[1::2]))[:, None]                        # [P, 1]
    rows = topic_cluster_rows(delta, np.asarray(topics), topic_names, **kw)
    rows["cluster"] = LENGTH
    return rows


def write_length_tables(out: Path, pair_ids: list[str], n_tokens: np.ndarray, topics: np.ndarray,
                        topic_names: list[str], **kw) -> pd.DataFrame:
    rows = length_rows(n_tokens, topics, topic_names, **kw)
    write_table(out, LENGTH_ROWS, rows)
    write_table(out, LENGTH_PAIRS, pd.DataFrame({"pair_id": pair_ids, "topic_id": np.asarray(topics),
                                                 "n_chosen": np.asarray(n_tokens)[0::2],
                                                 "n_rejected": np.asarray(n_tokens)[1::2]}))
    return rows


def ensure_length_tables(audit_dir: str | Path) -> bool:
    """Add the length tables to an audit written before they existed, from its latent store and
    tables (no forward pass). Returns True if they were written now."""
    audit = AuditFolder(audit_dir)
    if audit.has(LENGTH_ROWS) and audit.has(LENGTH_PAIRS):
        return False
    audit.require(LATENTS)
    # Audits that old predate clustering by prompt; a newer one wrote its (clustered) length tables,
    # and the prompts it clustered by are not in the folder to redo that.
    if audit.meta.get("stats", {}).get("clustered_by_prompt"):
        raise AnatomistError(f"{audit.path / LENGTH_ROWS}: missing from an audit clustered by prompt; re-run the audit")
    cfg, latents = audit.config, audit.latents
    if list(audit.pair_ids) != latents.ids[0::2]:
        raise AnatomistError(f"{audit.path / LATENTS}: does not hold the pairs of {PAIRS}, in order")
    write_length_tables(audit.path, audit.pair_ids, latents.n_tokens, audit.topic_ids, audit.topic_names,
                        min_pairs=cfg["min_pairs"], alpha=cfg["alpha"], n_boot=cfg["n_boot"], seed=cfg["seed"])
    return True
