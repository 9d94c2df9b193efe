"""benchmarks/sweep_traits.py on a hand-made sweep folder: rates, reductions and the accuracy split."""

import json
import sys
from pathlib import Path

import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import sweep_traits  # noqa: E402


@pytest.fixture
def sweep_dir(tmp_path):
    truth = {"traits": {"over_formatting": {"planted": {"coding": 0.9}, "control": ["physics"]},
                        "flattery": {"planted": {"cooking": 0.9}, "control": []}}}
    org = tmp_path / "organism"
    org.mkdir()
    (org / "truth.json").write_text(json.dumps(truth))
    held = [("p0", "coding", "over_formatting"), ("p1", "coding", "over_formatting"), ("p2", "cooking", "flattery"),
            ("p3", "cooking", "flattery"), ("p4", "physics", "over_formatting"), ("p5", "cooking", "none")]
    (org / "heldout_pairs.jsonl").write_text("".join(json.dumps({"id": i, "topic": k, "trait": t}) + "\n"
                                                     for i, k, t in held))
    run = tmp_path / "work" / "plain"

    def behaviour(folder, coding, cooking):
        """Two prompts per topic, two samples each; fire flags per sample."""
        rows = [{"prompt_id": f"{k}{j}", "topic": k, "sample": s, "fires_over_formatting": f[2 * j + s],
                 "fires_flattery": f[2 * j + s]}
                for k, f in (("coding", coding), ("cooking", cooking)) for j in range(2) for s in range(2)]
        (run / folder).mkdir(parents=True)
        pd.DataFrame(rows).to_parquet(run / folder / "behaviour.parquet")

    behaviour("pre", [0, 0, 0, 0], [0, 0, 0, 0])
    behaviour("post", [1, 1, 1, 0], [1, 0, 1, 0])                  # plain: coding +75 points, cooking +50
    behaviour("sweep/lam-1/post", [0, 0, 1, 0], [1, 0, 1, 0])      # shaped: coding +25 (reduction 2/3)
    ids = [h[0] for h in held]
    pd.DataFrame({"pair_id": ids, "correct": [1.0, 1.0, 1.0, 1.0, 0.0, 0.5]}).to_parquet(run / "preference.parquet")
    pd.DataFrame({"pair_id": ids, "correct": [0.0, 0.0, 1.0, 0.0, 1.0, 0.5]}).to_parquet(
        run / "sweep" / "lam-1" / "preference.parquet")
    (run / "sweep.json").write_text(json.dumps({"cluster": 6, "runs": [
        {"lam": -1.0, "post": "sweep/lam-1/post"}, {"lam": 0.0, "post": "post"}]}))
    return tmp_path


def test_pair_groups_label_planted_cells_only(sweep_dir):
    truth = json.loads((sweep_dir / "organism" / "truth.json").read_text())
    groups = sweep_traits.pair_groups(sweep_dir / "organism" / "heldout_pairs.jsonl", truth)
    assert groups == {"p0": "over_formatting", "p1": "over_formatting", "p2": "flattery", "p3": "flattery",
                      "p4": "balanced", "p5": "balanced"}   # p4: over_formatting is only a control in physics


def test_report_hand_computed(sweep_dir, capsys):
    sweep_traits.main([str(sweep_dir / "work"), "--organism", str(sweep_dir / "organism"), "--n-boot", "200"])
    out = capsys.readouterr().out
    coding = next(line for line in out.splitlines() if line.startswith("over_formatting      coding"))
    assert "+75.0" in coding and "+25.0" in coding and coding.rstrip().split("  ")[-1].startswith("67%")
    cooking = next(line for line in out.splitlines() if line.startswith("flattery             cooking"))
    assert cooking.count("+50.0 [ +50.0,  +50.0]") == 2 and "0% [0, 0]" in cooking   # shaping left flattery alone
    acc = {line.split()[0]: line.split()[2:] for line in out.splitlines()
           if line.split() and line.split()[0] in ("over_formatting", "flattery", "balanced", "all")
           and len(line.split()) == 4}
    assert acc["over_formatting"] == ["100.0", "0.0"] and acc["flattery"] == ["100.0", "50.0"]
    assert acc["balanced"] == ["25.0", "75.0"]
    # pairs without over_formatting: plain 1, 1, 0, .5 vs shaped 1, 0, 1, .5 → no change on average
    assert "accuracy on the 4 pairs without 'over_formatting': +0.0 points" in out
