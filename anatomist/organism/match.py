"""Which audit clusters carry a planted trait, and the λ that shapes the trait through them.

    clusters, found = trait_clusters("runs/organism_audit", pairs, read_truth(truth_json), "flattery")
    recipe = Recipe(lam=trait_lams(clusters, -4.0))          # λ < 0 suppresses the trait

Matching is the scorer's (`anatomist.organism.score`, matching="global": Spearman ρ of the trait's
detector with c_C over the responses of every topic where the trait occurs): a cluster that is
shaped on every pair must track the trait across its topics, not in one topic only.
"""

from __future__ import annotations

from pathlib import Path

from anatomist.audit.folder import PAIRS, AuditFolder
from anatomist.errors import AnatomistError
from anatomist.organism.score import score_tables


def trait_clusters(audit_dir: str | Path, pairs, truth: dict, trait: str) -> tuple[dict[int, float], bool]:
    """({cluster: ρ}, True) for the clusters the audit flagged in a planted topic of `trait` with the
    expected sign (one per found cell: its best row); ({best-ρ cluster: ρ}, False) where there is
    none, ({}, False) where no cluster correlates at all.

    pairs: the audited PreferencePairs (any superset; matched by id, texts checked), `extra["topic"]` set."""
    audit = AuditFolder(audit_dir)
    by_id = {p.id: p for p in pairs}
    missing = [i for i in audit.pair_ids if i not in by_id]
    if missing:
        raise AnatomistError(f"{audit.path / PAIRS}: pair {missing[0]!r} is not among the given pairs "
                             "(an audit of other data?)")
    audited = audit.check_data([by_id[i] for i in audit.pair_ids])    # c's rows are these pairs' texts
    texts = [t for p in audited for t in (p.chosen, p.rejected)]
    res = score_tables(audit.response_scores, texts, [p.extra["topic"] for p in audited], audit.rows, truth,
                       matching="global")
    found = {cell["row"]["cluster"]: cell["row"]["rho"] for cell in res["cells"]
             if cell["trait"] == trait and cell["found"]}
    if found:
        return found, True
    best = res["best_rho"][trait]
    return ({best["cluster"]: best["rho"]} if best["cluster"] is not None else {}), False


def trait_lams(clusters: dict[int, float], lam: float) -> dict[int, float]:
    """λ per cluster: `lam` (the direction for the trait itself: < 0 suppresses it) times the sign of
    the cluster's ρ with the trait, so an anti-correlated cluster is shaped the opposite way."""
    return {k: lam * (1.0 if rho > 0 else -1.0) for k, rho in clusters.items()}
