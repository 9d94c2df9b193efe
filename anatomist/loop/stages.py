"""The loop's stages, in order, and the runner.

    run_loop(cfg, until="predict")     # data → screen → audit → predict; prints the plan

Each stage writes OUT/<stage>/ (or OUT/<stage>/<unit>/ for one unit per DPO variant: plain,
shaped) and is skipped, resumed or rerun by `units.run_unit` from the hash of its inputs: the
config section it reads plus the result digests of the upstream units it reads. So a new λ
retrains only the shaped run; a new eval setting re-evaluates without retraining; a killed run
picks up in the unit it died in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from anatomist.errors import AnatomistError
from anatomist.loop import runs, steps
from anatomist.loop.config import LoopConfig
from anatomist.loop.context import Ctx
from anatomist.loop.units import run_unit, status


@dataclass(frozen=True)
class Stage:
    name: str
    what: str                                   # one line: what the stage does
    inputs: Callable[[Ctx, str], dict]          # what decides a unit's content
    run: Callable[[Ctx, str, object], None]     # (ctx, unit, folder): writes the unit's folder
    outputs: tuple[str, ...]                    # files (globs in the unit's folder) that are its result
    units: Callable[[Ctx], list[str]] = lambda ctx: [""]


def _report_inputs(ctx: Ctx, unit: str) -> dict:
    from anatomist.loop.report import report_inputs

    return report_inputs(ctx, STAGES)


def _report(ctx: Ctx, unit: str, folder) -> None:
    from anatomist.loop.report import write_report

    ctx.echo(f"report: {write_report(ctx, folder)}")


STAGES: dict[str, Stage] = {s.name: s for s in (
    Stage("data", "the train pairs, held-out pairs and prompts (an organism is built here)",
          steps.data_inputs, steps.run_data, steps.DATA_OUTPUTS),
    Stage("screen", "model-free detectors and pair hygiene", steps.screen_inputs, steps.run_screen,
          steps.SCREEN_OUTPUTS),
    Stage("audit", "SAE concepts that separate chosen from rejected, per topic", steps.audit_inputs,
          steps.run_audit_stage, steps.AUDIT_OUTPUTS),
    Stage("base", "the base model on held-out prompts, before predict (predict.first_order reads it)",
          runs.eval_inputs, runs.run_eval_unit, runs.EVAL_OUTPUTS, units=runs.base_units),
    Stage("predict", "the shaping plan and the predicted shift per (topic, concept)", steps.predict_inputs,
          steps.run_predict, steps.PREDICT_OUTPUTS),
    Stage("shape", "the recipe applied to the pairs", steps.shape_inputs, steps.run_shape, steps.SHAPE_OUTPUTS),
    Stage("train", "DPO per variant", runs.train_inputs, runs.run_train, runs.TRAIN_OUTPUTS,
          units=lambda ctx: ctx.variants()),
    Stage("eval", "the base and each policy on held-out prompts; held-out preference accuracy", runs.eval_inputs,
          runs.run_eval_unit, runs.EVAL_OUTPUTS, units=runs.eval_units),
    Stage("verify", "predicted vs measured shift", runs.verify_inputs, runs.run_verify, runs.VERIFY_OUTPUTS,
          units=runs.verify_units),
    Stage("report", "one HTML page of the whole loop", _report_inputs, _report, ("report.html",)),
)}


def check_until(until: str | None) -> None:
    if until is not None and until not in STAGES:
        raise AnatomistError(f"--until {until!r}: choose one of {', '.join(STAGES)}")


def run_loop(cfg: LoopConfig, *, config_path: str = "", until: str | None = None, echo=print,
             progress: bool = False) -> Ctx:
    """Run the stages in order up to `until` (inclusive; None: all); returns the context (its
    `out` is the run folder). After predict, the plan and the predicted shifts are printed."""
    check_until(until)
    ctx = Ctx(cfg, config_path=config_path, echo=echo, progress=progress)
    ctx.out.mkdir(parents=True, exist_ok=True)
    for stage in STAGES.values():
        for unit in stage.units(ctx):
            folder = ctx.folder(stage.name, unit)
            label = f"{stage.name}/{unit}" if unit else stage.name
            inputs = stage.inputs(ctx, unit)
            state = status(folder, inputs)
            echo(f"[{label}] " + {"done": "done earlier, skipped", "changed": "inputs changed, rerunning",
                                  "resume": "running"}[state] + f": {stage.what}")
            run_unit(folder, inputs, lambda: stage.run(ctx, unit, folder), outputs=stage.outputs, name=label)
        if stage.name == "predict":
            steps.print_plan(ctx)
        if stage.name == until:
            break
    return ctx
