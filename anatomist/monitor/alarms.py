"""Alarms: `NAME>THRESHOLD` or `NAME<THRESHOLD` on a monitored metric's shift from step 0.

NAME is a concept of the audit (cluster id or label) or a screen detector (its registry name,
e.g. `over_formatting`); the monitor resolves it (`ConceptMonitor`). An alarm fires at a point
where the shift crosses the threshold *and* its CI excludes zero on that side:

    NAME>τ fires when shift > τ and ci_low > 0;   NAME<τ fires when shift < τ and ci_high < 0

so sampling noise alone (a CI covering 0) never fires one, whatever the threshold.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from anatomist.errors import AnatomistError

_SPEC = re.compile(r"^\s*(?P<name>[^<>]+?)\s*(?P<op>[<>])\s*(?P<value>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")
OPS = {">": lambda shift, lo, hi, t: shift > t and lo > 0, "<": lambda shift, lo, hi, t: shift < t and hi < 0}


@dataclass(frozen=True)
class Alarm:
    name: str          # as the user wrote it (a cluster id, a label, a detector name)
    op: str            # ">" or "<"
    threshold: float

    @property
    def spec(self) -> str:
        return f"{self.name}{self.op}{self.threshold:g}"

    def fires(self, shift: float, ci_low: float, ci_high: float) -> bool:
        if not all(math.isfinite(v) for v in (shift, ci_low, ci_high)):
            return False
        return bool(OPS[self.op](shift, ci_low, ci_high, self.threshold))


def parse_alarm(spec: str) -> Alarm:
    """'over_formatting>0.2' → Alarm; a bad spec raises a one-line AnatomistError naming it."""
    m = _SPEC.match(spec or "")
    if m is None:
        raise AnatomistError(f"bad --alarm {spec!r}: expected CONCEPT>THRESHOLD or CONCEPT<THRESHOLD, "
                             "e.g. 10>0.2 or over_formatting>0.5")
    return Alarm(m["name"], m["op"], float(m["value"]))
