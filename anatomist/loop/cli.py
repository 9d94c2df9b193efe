"""`anatomist loop CONFIG`: thin over `anatomist.loop.stages.run_loop`."""

from __future__ import annotations

from pathlib import Path

import typer


def loop(
    config: Path = typer.Argument(..., metavar="CONFIG", help="The recipe: a YAML file (examples/*.yaml; every "
                                  "field is in anatomist/loop/config.py with its default and meaning)."),
    until: str = typer.Option(None, "--until", help="Stop after this stage: data, screen, audit, predict, shape, "
                              "train, eval, verify, report (predict: the plan and predicted shifts, before training)."),
    out: Path = typer.Option(None, "--out", help="Run folder (default: the config's `out`, else runs/loop/<stem>)."),
) -> None:
    """Audit → shape → train (DPO) → evaluate → verify from one recipe; one HTML report at the end.

    Each stage writes its folder under the run folder and is skipped when its inputs (config section
    and upstream results) are unchanged; rerun after a kill to resume where it stopped.

    Example: anatomist loop examples/organism-shaped.yaml --until predict
    """
    from anatomist.loop.config import read_config
    from anatomist.loop.stages import check_until, run_loop

    check_until(until)
    cfg = read_config(config, out=out)
    ctx = run_loop(cfg, config_path=str(config), until=until, echo=typer.echo, progress=True)
    report = ctx.folder("report") / "report.html"
    typer.echo(f"run folder: {ctx.out}" + (f"; report: {report}" if report.is_file() and until in (None, "report")
                                          else ""))
