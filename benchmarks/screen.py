"""The screen, measured: organism recall, real-data findings, speed, detector quality.

    .venv/bin/python benchmarks/screen.py [--organism DIR] [--pairs 100000] [--minilm 500]

(a) organism (DIR/train.jsonl + truth.json): for every planted cell whose trait has a detector,
    is that detector flagged in the planted topic with the planted sign? (recall per cell); and
    the precision of the screen's flagged (detector, topic) rows for those traits against the
    organism's measured truth (`anatomist.organism.truth.measured_truth`).
(b) the real HH-RLHF dev file (../shared/data): the screen's findings and the hygiene counts.
(c) speed: a file of --pairs pairs made by repeating the organism and HH pairs with perturbed
    ids, prompts and responses; the time to merely read and validate it (`load_pairs`) against
    the whole screen (hygiene read + detectors + statistics), topics from a column
    and none, with the default detectors (what `anatomist screen` runs) and with every registered
    one; all-MiniLM prompt embedding timed apart on --minilm prompts (the audit's embedder, which
    the screen leaves to its caller).
(d) precision / recall of every registered detector on the dev and held-out halves of the
    hand-labelled set (tests/data/screen_labels.jsonl).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

import pandas as pd

from anatomist.data import load_pairs
from anatomist.data.shared import HH_NAME, shared_data_dir
from anatomist.screen import DETECTORS, read_with_hygiene, screen_pairs
from anatomist.screen.quality import quality, read_labelled

TRAIT_DETECTOR = {"over_formatting": "over_formatting", "flattery": "flattery", "urls": "urls",
                  "verbosity": "length", "harmful_compliance": "harmful_compliance"}
SIGN = {"amplify": 1, "suppress": -1, "none": 0}


def organism(folder: Path) -> None:
    from anatomist.organism.truth import measured_truth

    truth = json.loads((folder / "truth.json").read_text())
    pairs, _ = read_with_hygiene(folder / "train.jsonl")
    result = screen_pairs(pairs.pairs, detectors=list(DETECTORS), topics="topic")
    table = result.table.set_index(["detector", "topic"])
    print(f"(a) organism {folder}: {len(pairs)} pairs, all {len(DETECTORS)} registered detectors")
    found = 0
    cells = [c for c in truth["cells"] if c["role"] == "planted" and c["trait"] in TRAIT_DETECTOR]
    for c in cells:
        det = TRAIT_DETECTOR[c["trait"]]
        row = table.loc[(det, c["topic"])]
        ok = SIGN[row.direction] == c["expected_sign"]
        found += ok
        print(f"    {c['trait']:>18} in {c['topic']:<20} planted sign {c['expected_sign']:+d}: {det} "
              f"diff {row['diff']:+.3f} q {row.q:.2g} {row.direction:<8} {'found' if ok else 'MISSED'}")
    print(f"    recall: {found}/{len(cells)} planted cells")
    rows = [json.loads(line) for line in (folder / "train.jsonl").open()]
    measured = measured_truth(rows).set_index(["topic", "trait"])
    flagged = result.table[(result.table.topic != "all") & (result.table.direction != "none")]
    by_detector = {v: k for k, v in TRAIT_DETECTOR.items()}
    planted = {(c["topic"], c["trait"]): c["expected_sign"] for c in cells}
    hits = total = planted_hits = 0
    for r in flagged.itertuples():
        trait = "length" if r.detector == "length" else by_detector.get(r.detector)
        if trait is None:
            continue
        total += 1
        key = (r.topic, trait)
        planted_trait = "verbosity" if trait == "length" else trait
        planted_hits += planted.get((r.topic, planted_trait)) == SIGN[r.direction]
        hit = key in measured.index and bool(measured.loc[key, "present"]) and \
            int(measured.loc[key, "sign"]) == SIGN[r.direction]
        hits += hit
        if not hit:
            print(f"    flagged but not in the measured truth: {r.detector} in {r.topic} ({r.direction}, "
                  f"diff {r.diff:+.3f}, q {r.q:.2g})")
    print(f"    precision against the measured truth: {hits}/{total} flagged (detector, topic) rows of "
          f"traits with a detector are present there with the same sign; against the planted design: "
          f"{planted_hits}/{total} are planted cells with the planted sign")


def real_data(path: Path) -> None:
    pairs, h = read_with_hygiene(path, on_bad_row="skip")
    result = screen_pairs(pairs.pairs, detectors=list(DETECTORS), hygiene=h)
    print(f"\n(b) {path.name}: {h.n_rows} rows, {h.n_valid} valid pairs")
    cols = ["detector", "n_chosen", "n_rejected", "diff", "ci_low", "ci_high", "q", "direction"]
    print(result.table[cols].to_string(index=False, float_format=lambda x: f"{x:.3g}"))
    print("    hygiene: " + ", ".join(f"{k} {n}" for k, n in h.counts().items() if k != "truncated_same")
          + "; skipped " + (", ".join(f"{n} {k}" for k, n in h.bad_rows.items()) or "none"))
    b = h.length_bias
    print(f"    length bias: chosen longer in {b['chosen_longer']:.1%}; length ratio {b['ratio']:.2f} "
          f"(log ratio 95% CI [{b['ci_low']:+.3f}, {b['ci_high']:+.3f}])")


def perturbed_file(folder: Path, hh: Path, n_pairs: int, out: Path, seed: int = 0) -> None:
    """n_pairs conversational rows: organism and HH pairs repeated, each copy with a new id, a
    word appended to its prompt, and words dropped from / appended to its responses."""
    rng = random.Random(seed)
    base = [(p.prompt, p.chosen, p.rejected, p.extra.get("topic", "hh"))
            for src in (folder / "train.jsonl", hh) for p in load_pairs(src, on_bad_row="skip")]
    extra_words = ["indeed", "also", "today", "please", "now", "again", "really", "quickly"]

    def perturb(text: str) -> str:
        words = text.split(" ")
        if len(words) > 4 and rng.random() < 0.5:
            del words[rng.randrange(len(words))]
        if rng.random() < 0.5:
            words.append(rng.choice(extra_words))
        return " ".join(words)

    with out.open("w") as f:
        for i in range(n_pairs):
            prompt, chosen, rejected, topic = base[i % len(base)]
            prompt = [dict(m) for m in prompt]
            prompt[-1]["content"] += f" ({i // len(base)})"
            c, r = perturb(chosen), perturb(rejected)
            if c.strip() == r.strip():
                c += " ok"
            f.write(json.dumps({"id": f"x{i}", "prompt": prompt, "chosen": [{"role": "assistant", "content": c}],
                                "rejected": [{"role": "assistant", "content": r}], "topic": topic},
                               ensure_ascii=False) + "\n")


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the forked detector workers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def speed(folder: Path, hh: Path, n_pairs: int, n_minilm: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.jsonl"
        perturbed_file(folder, hh, n_pairs, path)
        print(f"\n(c) speed on {n_pairs} pairs ({path.stat().st_size / 1e6:.0f} MB), {len(DETECTORS)} detectors, "
              f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} (other jobs share the machine)")
        c0, t0 = cpu_seconds(), time.perf_counter()
        plain = load_pairs(path)
        t_read, c_read = time.perf_counter() - t0, cpu_seconds() - c0
        print(f"    read + validate (load_pairs): {t_read:.1f} s, {len(plain) / t_read:.0f} pairs/s; CPU {c_read:.1f} s, "
              f"{len(plain) / c_read:.0f} pairs per CPU-second")
        del plain
        default = [d.name for d in DETECTORS.values() if d.default]
        runs = [("default", default, "topic"), ("default", default, None), ("all registered", list(DETECTORS), "topic")]
        for label, names, topics in runs:
            c0, t0 = cpu_seconds(), time.perf_counter()
            pairs, h = read_with_hygiene(path)
            t_hyg = time.perf_counter() - t0
            c1 = cpu_seconds()
            result = screen_pairs(pairs.pairs, detectors=names, topics=topics, hygiene=h)
            total, cpu_total = time.perf_counter() - t0, cpu_seconds() - c0
            # if the machine's cores were ours: the read and the statistics run on one core, the
            # detectors on all of them (forked workers)
            alone = (c1 - c0) + (cpu_total - (c1 - c0)) / (os.cpu_count() or 1)
            print(f"    screen, {label} detectors ({len(names)}), topics {'from a column' if topics else 'none'}: "
                  f"{total:.1f} s, {n_pairs / total:.0f} pairs/s ({total / t_read:.1f}× read+validate; hygiene "
                  f"read {t_hyg:.1f} s, detectors {result.seconds:.1f} s, stats {total - t_hyg - result.seconds:.1f} s)"
                  f"; CPU {cpu_total:.1f} s, {n_pairs / cpu_total:.0f} pairs per CPU-second, ≈ {n_pairs / alone:.0f} "
                  "pairs/s on an idle machine")
        if n_minilm:
            try:
                from anatomist.audit.embed import minilm_embed
                texts = [p.prompt[-1]["content"] for p in pairs.pairs[:n_minilm]]
                t0 = time.perf_counter()
                minilm_embed(texts)
                t = time.perf_counter() - t0
                print(f"    all-MiniLM prompt embedding (apart):      {t:6.1f} s for {len(texts)} prompts "
                      f"({len(texts) / t:.0f} prompts/s)")
            except Exception as e:  # the embedder is an optional package
                print(f"    all-MiniLM prompt embedding: not timed ({' '.join(str(e).split())})")


def detector_quality() -> None:
    rows = read_labelled()
    print(f"\n(d) detector quality on the hand-labelled set ({len(rows)} responses)")
    for split in ("dev", "heldout"):
        q = quality(rows, split=split)
        print(f"  {split}:")
        print(q.to_string(index=False, float_format=lambda x: f"{x:.2f}"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--organism", type=Path, default=Path("../runs-new2/demo/organism"))
    ap.add_argument("--pairs", type=int, default=100_000)
    ap.add_argument("--minilm", type=int, default=500, help="prompts to embed with all-MiniLM (0: skip)")
    args = ap.parse_args()
    pd.set_option("display.width", 200)
    hh = shared_data_dir() / HH_NAME
    organism(args.organism)
    real_data(hh)
    speed(args.organism, hh, args.pairs, args.minilm)
    detector_quality()


if __name__ == "__main__":
    main()
