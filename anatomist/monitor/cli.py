"""The monitor's CLI options, shared by `anatomist dpo` and `anatomist grpo` (each command lists
them in its signature; `build` turns them into a `ConceptMonitor` or None)."""

from __future__ import annotations

from pathlib import Path

import typer

from anatomist.errors import AnatomistError

from anatomist.monitor.core import DEFAULT_BUDGET
DEFAULT_PER_TOPIC = 4
PROMPTS_FILE = "heldout_prompts.jsonl"   # what `anatomist organism build` writes beside train.jsonl

AUDIT = typer.Option(None, "--monitor", help="Audit folder whose concepts to watch during training: every "
                     "--monitor-every steps the policy answers fixed held-out prompts, and each concept's shift from "
                     "step 0 (95% CI over prompts) goes to OUT/monitor.jsonl, the log and OUT/monitor.html.")
EVERY = typer.Option(None, "--monitor-every", min=1, help="Steps between monitor points (default: the cadence that "
                     "keeps the monitor within --monitor-budget of training time, fixed after the first steps); "
                     "without --monitor, watches the screen's detectors only.")
BUDGET = typer.Option(DEFAULT_BUDGET, "--monitor-budget", min=0.001, max=1.0, help="Share of training time the "
                      "default cadence may spend on monitor points (the first and last point come on top).")
PROMPTS = typer.Option(None, "--monitor-prompts", help=f"Held-out prompts (jsonl: id, topic, prompt); default: "
                       f"{PROMPTS_FILE} beside the training data or the audit's data.")
PER_TOPIC = typer.Option(DEFAULT_PER_TOPIC, "--monitor-per-topic", min=1,
                         help="Monitor the first N prompts of each topic (fixed for the run).")
SAMPLES = typer.Option(None, "--monitor-samples", min=1, help="Samples per prompt at each point (fixed seeds); "
                       "default 4 with the paired estimator, 2 with the sampled one.")
ESTIMATOR = typer.Option("paired", "--monitor-estimator", help="paired: reweigh the first point's samples by each "
                         "later policy's log-probs (one forward, narrower CIs; a prompt whose weights collapse is "
                         "sampled afresh); sampled: sample every point afresh.")
TOKENS = typer.Option(64, "--monitor-max-new-tokens", min=1, help="Tokens sampled per monitor response.")
CONCEPTS = typer.Option([], "--monitor-concept", help="Concept to watch (cluster id or label); repeat. "
                        "Default: the audit's flagged concepts.")
DETECTORS = typer.Option([], "--monitor-detector", help="Screen detector to watch; repeat. Default: the "
                         "screen's default detectors.")
ALARMS = typer.Option([], "--alarm", help="CONCEPT>THRESHOLD or CONCEPT<THRESHOLD (a concept of --monitor, or a "
                      "detector name): warn when its shift crosses the threshold with a CI that excludes 0; repeat.")
STOP = typer.Option(False, "--stop-on-alarm", help="End training at the first checkpoint after an alarm "
                    "(rerun the command to resume).")


def default_prompts(*candidates: Path | None) -> Path:
    for c in candidates:
        if c is not None and (Path(c).parent / PROMPTS_FILE).is_file():
            return Path(c).parent / PROMPTS_FILE
    raise AnatomistError(f"the monitor needs held-out prompts: pass --monitor-prompts FILE (no {PROMPTS_FILE} "
                         "beside the data)")


def build(audit: Path | None, every: int | None, prompts, per_topic: int, samples: int | None, max_new_tokens: int,
          concepts: list[str], detectors: list[str], alarms: list[str], stop: bool, *, seed: int = 0,
          budget: float = DEFAULT_BUDGET, estimator: str = "paired"):
    """A `ConceptMonitor` from the CLI options, or None when no monitor option was given.
    `prompts`: a file, a list of `HeldoutPrompt`s, or a callable giving one (the command's default)."""
    from anatomist.data.heldout import first_per_topic, read_prompts
    from anatomist.monitor.core import ConceptMonitor

    if audit is None and every is None and not alarms and not stop:
        return None
    if callable(prompts):
        prompts = prompts()
    items = read_prompts(prompts) if isinstance(prompts, (str, Path)) else list(prompts)
    return ConceptMonitor(audit, first_per_topic(items, per_topic), every=every, budget=budget,
                          concepts=concepts or None, detectors=detectors or None, samples=samples, seed=seed,
                          alarms=alarms, stop_on_alarm=stop, max_new_tokens=max_new_tokens, estimator=estimator)
