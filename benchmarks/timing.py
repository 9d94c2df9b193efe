"""Timing the arms of a ratio alike: one untimed warm-up call per arm, then interleaved repeats.

The first call of any arm pays for lazy imports, allocator growth, kernel and tokenizer caches; an
arm timed cold loses to one timed warm, whatever the code. And load on a shared host drifts over
minutes, so an arm's repeats run between the other arms' (A, B, A, B, …), never back to back, and
each arm is summarised by its median.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def interleaved(arms: dict[str, Callable[[int], object]], rounds: int, *, log: bool = False
                ) -> dict[str, list[tuple[float, object]]]:
    """Call every arm once untimed with i = 0 (the warm-up, in the same order), then `rounds`
    rounds in which round i calls each arm(i) in turn. → {arm: [(seconds, return value)] per round}."""
    assert rounds >= 1 and arms
    for fn in arms.values():
        fn(0)
    out: dict[str, list[tuple[float, object]]] = {name: [] for name in arms}
    for i in range(rounds):
        for name, fn in arms.items():
            t = time.perf_counter()
            value = fn(i)
            out[name].append((time.perf_counter() - t, value))
        if log:
            print(f"round {i}: " + "  ".join(f"{k} {v[-1][0]:.2f} s" for k, v in out.items()), flush=True)
    return out


def median_seconds(timed: dict[str, list[tuple[float, object]]]) -> dict[str, float]:
    """{arm: median seconds over its rounds}."""
    return {name: statistics.median(s for s, _ in runs) for name, runs in timed.items()}
