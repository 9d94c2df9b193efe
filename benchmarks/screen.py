"""The screen, measured: organism recall, real-data findings, speed, detector quality.

    .venv/bin/python benchmarks/screen.py [--organism DIR] [--pairs 100000] [--minilm 500] [--repeats 3]
                                          [--parts abcd]

(a) organism (DIR/train.jsonl + truth.json): for every planted cell whose trait has a detector,
    is that detector flagged in the planted topic with the planted sign? (recall per cell); and
    the precision of the screen's flagged (detector, topic) rows for those traits against the
    organism's measured truth (`anatomist.organism.truth.measured_truth`).
(b) the real HH-RLHF dev file (../shared/data): the screen's findings and the hygiene counts.
(c) speed: a file of --pairs pairs made by repeating the organism and HH pairs with perturbed
    ids, prompts and responses; the time to merely read and validate it (`load_pairs`) against
    the whole screen (hygiene read + detectors + statistics), topics from a column
    and none, with the default detectors (what `anatomist screen` runs) and with every registered
    one, in --repeats rounds that alternate the read and the screens (medians printed, wall and
    CPU, each as a multiple of the read's); all-MiniLM prompt embedding timed apart on --minilm
    prompts (the audit's embedder, which the screen leaves to its caller).
(d) precision / recall of every registered detector on the dev and held-out halves of the
    hand-labelled set (tests/data/screen_labels.jsonl).

Measured (c), 2026-12-05, 100k pairs (111 MB), the 2-core dev machine UNDER LOAD (load average
5-9 from other jobs: absolute pairs/s here are not an idle machine's; the ratios to the read in
the same run are the comparable numbers), medians of 3 rounds,

    nice -n 10 .venv/bin/python benchmarks/screen.py --parts c --minilm 0 --organism /work/main/runs/demo/organism

                                     before (per-response)      after, run 1 (load 9.5)    after, run 2 (load 6.1)
    read + validate (load_pairs)     3.3 s, CPU 2.2 s           3.9 s, CPU 1.9 s           2.8 s, CPU 1.9 s
    screen, default, topics column   26.1 s = 3,825 pairs/s     27.3 s = 3,657 pairs/s     19.2 s = 5,218 pairs/s
                                     7.9× read, CPU 17.3 s      7.0× read, CPU 13.0 s      6.8× read, CPU 13.1 s
    screen, default, no topics       26.0 s = 3,846 pairs/s     26.4 s = 3,785 pairs/s     19.1 s = 5,234 pairs/s
                                     7.8× read, CPU 17.3 s      6.7× read, CPU 13.1 s      6.8× read, CPU 13.2 s
    screen, all registered, topics   46.2 s = 2,163 pairs/s     41.4 s = 2,416 pairs/s     27.9 s = 3,579 pairs/s
                                     13.9× read, CPU 30.6 s     10.5× read, CPU 21.0 s     10.0× read, CPU 21.3 s

(before: the same script run from the main checkout, whose package still scored pair by pair,
right after "after, run 1"; the runs met different loads, so compare the CPU seconds and the
ratios to the read.) The column path (`anatomist.screen.columns`) cuts the screen's CPU by 24%
(default detectors) to 30% (all), with results identical to the per-response path (tables,
per-pair fires and hygiene equal on this 100k file with all detectors; tests/test_screen_columns.py).
With the default detectors the screen reached 5,200 pairs/s at load average 6 and 3,700 at 9.5:
the 5,000 pairs/s goal is met only while the other jobs leave about one core free. On the idle
machine (load average 0.5, 2026-12-05, `.venv/bin/python benchmarks/screen.py --minilm 0`, all parts):
read 1.9 s; default detectors 10,571 pairs/s with topics from a column (4.9× the read, CPU 12.5 s),
10,839 with no topics (4.8×); all registered detectors 7,068 pairs/s (7.4×).
Where the CPU still goes (per 100k pairs, one core):
language_switch ~2.7 s (tokenizing each text's first 240 characters for function words),
flattery ~2 s (two large case-insensitive regexes over every opening), the hygiene checks ~2 s,
reading and validating ~2 s.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from anatomist.data import load_pairs  # noqa: E402
from anatomist.data.shared import HH_NAME, shared_data_dir  # noqa: E402
from anatomist.screen import DETECTORS, read_with_hygiene, screen_pairs  # noqa: E402
from anatomist.screen.quality import quality, read_labelled  # noqa: E402

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


def timed(fn) -> tuple[float, float, object]:
    """(wall seconds, CPU seconds, result) of fn()."""
    c0, t0 = cpu_seconds(), time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, cpu_seconds() - c0, out


def speed(folder: Path, hh: Path, n_pairs: int, n_minilm: int, repeats: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.jsonl"
        perturbed_file(folder, hh, n_pairs, path)
        print(f"\n(c) speed on {n_pairs} pairs ({path.stat().st_size / 1e6:.0f} MB), {len(DETECTORS)} detectors, "
              f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} (other jobs share the machine); "
              f"medians of {repeats} rounds, each round reading the file alone and then screening it")
        default = [d.name for d in DETECTORS.values() if d.default]
        runs = {"default detectors, topics from a column": (default, "topic"),
                "default detectors, no topics": (default, None),
                "all registered detectors, topics from a column": (list(DETECTORS), "topic")}
        rows: dict[str, list[tuple[float, float]]] = {"read": [], **{k: [] for k in runs}}
        parts: dict[str, list[tuple[float, float]]] = {k: [] for k in runs}   # (hygiene read, detectors)

        def screen(names, topics):
            t_hyg, _, (pairs, h) = timed(lambda: read_with_hygiene(path))
            result = screen_pairs(pairs.pairs, detectors=names, topics=topics, hygiene=h)
            return t_hyg, result.seconds, pairs

        for _ in range(repeats):   # alternate, so a change of the machine's load touches both alike
            wall, cpu, plain = timed(lambda: load_pairs(path))
            rows["read"].append((wall, cpu))
            del plain
            for label, (names, topics) in runs.items():
                wall, cpu, (t_hyg, t_det, pairs) = timed(lambda: screen(names, topics))
                rows[label].append((wall, cpu))
                parts[label].append((t_hyg, t_det))
        med = {k: (median(w for w, _ in v), median(c for _, c in v)) for k, v in rows.items()}
        read_wall, read_cpu = med["read"]
        print(f"    read + validate (load_pairs): {read_wall:.1f} s, {n_pairs / read_wall:.0f} pairs/s; CPU {read_cpu:.1f} s")
        for label in runs:
            wall, cpu = med[label]
            t_hyg, t_det = (median(x[i] for x in parts[label]) for i in (0, 1))
            print(f"    screen, {label}: {wall:.1f} s, {n_pairs / wall:.0f} pairs/s, {wall / read_wall:.1f}× the read "
                  f"(hygiene read {t_hyg:.1f} s, detectors {t_det:.1f} s, stats {wall - t_hyg - t_det:.1f} s); "
                  f"CPU {cpu:.1f} s, {cpu / read_cpu:.1f}× the read's CPU")
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
    ap.add_argument("--organism", type=Path, default=REPO / "runs" / "demo" / "organism")
    ap.add_argument("--pairs", type=int, default=100_000)
    ap.add_argument("--minilm", type=int, default=500, help="prompts to embed with all-MiniLM (0: skip)")
    ap.add_argument("--repeats", type=int, default=3, help="rounds of the speed part (read, then each screen)")
    ap.add_argument("--parts", default="abcd", help="which parts to run, e.g. c for the speed part alone")
    args = ap.parse_args()
    pd.set_option("display.width", 200)
    hh = shared_data_dir() / HH_NAME
    if "a" in args.parts:
        organism(args.organism)
    if "b" in args.parts:
        real_data(hh)
    if "c" in args.parts:
        speed(args.organism, hh, args.pairs, args.minilm, args.repeats)
    if "d" in args.parts:
        detector_quality()


if __name__ == "__main__":
    main()
