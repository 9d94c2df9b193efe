"""`anatomist loop`: audit → shape → train (DPO) → evaluate → verify from one YAML recipe.

    from anatomist.loop import read_config, run_loop
    ctx = run_loop(read_config("examples/organism-shaped.yaml"), until="predict")

config.py (the recipe's dataclasses and YAML reader), units.py (skip / resume / rerun by input
hash), context.py (the run folder and what is loaded once), plan.py (the shaping plan read
against the audit), steps.py and runs.py (the stages' bodies, over each stage's own library
function), stages.py (the ordered registry and the runner), report.py (the page), cli.py.
The top floor of flow A: it may import audit, evaluate, train, shape, screen, organism.
"""

from anatomist.loop.config import LoopConfig, read_config
from anatomist.loop.stages import STAGES, run_loop

__all__ = ["LoopConfig", "read_config", "run_loop", "STAGES"]
