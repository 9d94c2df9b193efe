"""Detector evidence beside concept labels (issue 25 item 2): how many of an audit's concepts track
a screen detector, and which, on an existing audit folder (read-only; no model forward).

    .venv/bin/python benchmarks/detector_tracks.py runs/demo/audit

The screen is read from the folder where the audit stored it, else run on the audited file (the
path audit.json records) over the audit's topics; then `anatomist.audit.tracks.detector_tracks`
on the folder's per-response concept scores, as `run_audit` does (prompts resampled; kept at CI
low >= CI_LOW_MIN and >= MIN_FIRES fires). Prints fires per detector, each detector's best point
AUROC, and every kept (concept, detector) with the concept's name.

Measured (December 2026, seed 0, the demo organism audit of 420 pairs, 61 concepts, 840
responses): 9 of 61 concepts get "tracks:" evidence (15 entries) in 0.7 s — emoji (C2 0.99
[0.98, 0.99]), over-formatting (C10 0.90), URLs (C19 "www" 1.00 [0.99, 1.00]; invented URLs 0.99),
flattery (C31 "what, great, a wonderful" 0.92 [0.88, 0.95], C24 0.85), length (C37 0.79);
language_switch fired on 4 responses (< MIN_FIRES: not judged), eval_awareness on none.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from anatomist.audit.folder import AuditFolder
from anatomist.audit.run import conversation_opening
from anatomist.audit.tracks import CI_LOW_MIN, MIN_FIRES, detector_tracks, response_fires, tracks_text
from anatomist.screen.run import screen_pairs
from anatomist.stats import auroc, prompt_clusters


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("audit", help="an audit folder (`anatomist audit --out`)")
    ap.add_argument("--n-boot", type=int, default=None, help="bootstrap resamples (default: the audit's n_boot)")
    args = ap.parse_args()
    audit = AuditFolder(args.audit)
    pairs = audit.check_data(audit.data_file, complete=True)
    cfg = audit.config
    screen = audit.screen or screen_pairs(pairs, topics=[audit.topic_names[t] for t in audit.topic_ids],
                                          alpha=cfg.get("alpha", 0.05), seed=cfg.get("seed", 0))
    names = [d.name for d in screen.detectors]
    fires = response_fires(screen.fires, names)                                 # [2P, D]
    print(f"{audit.path}: {len(pairs)} pairs, {audit.n_clusters} concepts, {len(fires)} responses; screen "
          f"{'stored' if audit.screen is not None else 'run now'}")
    print("fires per detector:", dict(zip(names, fires.sum(0).tolist())))
    groups = prompt_clusters([conversation_opening(p) for p in pairs])
    unit = np.repeat(np.arange(len(pairs)) if groups is None else groups, 2)
    c = audit.response_scores                                                   # [2P, C]
    t = time.perf_counter()
    table = detector_tracks(c, fires, names, unit, n_boot=args.n_boot or cfg.get("n_boot", 1000),
                            seed=cfg.get("seed", 0))
    seconds = time.perf_counter() - t
    for j, d in enumerate(names):
        if 0 < fires[:, j].sum() < len(fires):
            a = [auroc(c[:, k], fires[:, j])[0] for k in range(c.shape[1])]
            print(f"  best point AUROC for {d}: C{int(np.argmax(a))} {max(a):.3f} (fires {int(fires[:, j].sum())})")
    print(f"{table.cluster.nunique()} of {audit.n_clusters} concepts track a detector ({len(table)} entries; "
          f"CI low >= {CI_LOW_MIN}, >= {MIN_FIRES} fires) in {seconds:.1f}s")
    for k, group in table.groupby("cluster", sort=True):
        print(f"  C{k:<3} {audit.name(int(k))[:50]:50s} {tracks_text(group.to_dict('records'))}")


if __name__ == "__main__":
    main()
