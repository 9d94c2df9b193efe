"""benchmarks/gpu: the truth run's samples-per-prompt plan, its manifest, and `--from-run`'s unpacking
of the archives truth.sh brings back (no model, no GPU)."""

from __future__ import annotations

import json
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks" / "gpu"))
sys.path.insert(0, str(ROOT / "benchmarks"))
import manifest  # noqa: E402
import predict_vs_actual  # noqa: E402


def organism(tmp_path: Path, *, gens: int, held: int, seconds: float, prompts: int) -> Path:
    d = tmp_path / "organism"
    d.mkdir()
    (d / "build.json").write_text(json.dumps({"n_generations": gens, "n_heldout_generations": held,
                                              "seconds": seconds}))
    (d / "heldout_prompts.jsonl").write_text("".join(json.dumps({"id": i}) + "\n" for i in range(prompts)))
    return d


@pytest.mark.parametrize("seconds,expected", [
    (100, (14, 7)),    # 10 gen/s · 0.45 · 100 s / (1.5 · 20 prompts) = 15 → even 14, post 7
    (300, (32, 16)),   # 45 → capped at 32
    (10, (4, 2)),      # 1 → the floor of 4 (two halves of 2)
])
def test_plan_samples_by_hand(tmp_path, seconds, expected):
    org = organism(tmp_path, gens=300, held=100, seconds=40, prompts=20)   # 400 generations in 40 s
    assert manifest.plan_samples(org, seconds) == expected


def test_manifest_records_stages_and_hashes_of_what_came_back(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "log.txt").write_text("hello\n")
    stages = tmp_path / "stages.tsv"
    stages.write_text("organism\t0\t12.5\t200\npva\t124\t400.1\t400\n")
    manifest.main(["--out", str(out), "--stages", str(stages), "--seed", "7", "--kind", "truth", "--tiny", "1",
                   "--device", "cpu", "--started", "0"])
    m = json.loads((out / "manifest.json").read_text())
    assert m["seed"] == 7 and m["run"].startswith("rehearsal")
    assert [(s["stage"], s["exit"], s["budget_s"]) for s in m["stages"]] == [("organism", "0", "200"),
                                                                              ("pva", "124", "400")]
    # sha256 of b"hello\n"
    assert m["files"]["log.txt"]["sha256"] == "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
    assert "manifest.json" not in m["files"]


def test_from_run_unpacks_the_archives_or_takes_the_folders(tmp_path):
    src = tmp_path / "work"
    (src / "audit").mkdir(parents=True)
    (src / "audit" / "rows.parquet").write_bytes(b"x")
    (src / "pva" / "plain" / "pre").mkdir(parents=True)
    back = tmp_path / "back"
    back.mkdir()
    with tarfile.open(back / "audit.tar.xz", "w:xz") as t:
        t.add(src / "audit", "audit")
    with pytest.raises(SystemExit, match="pva/plain"):      # the run stopped before the evaluation
        predict_vs_actual.unpacked_run(back, tmp_path / "u1")
    with tarfile.open(back / "eval.tar.xz", "w:xz") as t:
        t.add(src / "pva", "pva")
    root = predict_vs_actual.unpacked_run(back, tmp_path / "u2")
    assert (root / "audit" / "rows.parquet").read_bytes() == b"x" and (root / "pva" / "plain" / "pre").is_dir()
    assert predict_vs_actual.unpacked_run(src, tmp_path / "u3") == src
