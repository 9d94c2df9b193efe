"""benchmarks/timing.py: every arm warmed once untimed, then the arms alternate round by round."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from timing import interleaved, median_seconds  # noqa: E402


def test_arms_are_warmed_alike_then_interleaved():
    calls = []
    arms = {"a": lambda i: calls.append(("a", i)) or i * 10, "b": lambda i: calls.append(("b", i)) or -i}
    timed = interleaved(arms, 3)
    assert calls == [("a", 0), ("b", 0), ("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 2), ("b", 2)]
    assert [v for _, v in timed["a"]] == [0, 10, 20] and [v for _, v in timed["b"]] == [0, -1, -2]
    med = median_seconds({"x": [(3.0, None), (1.0, None), (2.0, None)]})
    assert med == {"x": 2.0}
