"""The `anatomist` command line: one sub-app per stage, each thin over the Python API.

Every stage's CLI lives beside its code (`anatomist/<stage>/cli.py`) and is registered
here. User errors (`AnatomistError`) and usage errors (a missing option, a value of the
wrong type) print as one line and exit 2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import logging
import os
import sys

import typer

from anatomist.errors import AnatomistError

app = typer.Typer(
    name="anatomist",
    help="See and shape what DPO will teach before training; keep RL rollouts fast.\n\n"
         "Offline by default: models load from aliases, local folders, .gguf files and the local HF cache; "
         "pass --hub (or set ANATOMIST_ALLOW_HUB=1) to download hub ids.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

_state = {"debug": False}


def _print_version(value: bool) -> None:
    # eager: runs while parsing, before click asks for a subcommand
    if value:
        from anatomist import __version__

        typer.echo(f"anatomist {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log at INFO level."),
    hub: bool = typer.Option(False, "--hub", help="Allow downloading models from the Hugging Face hub "
                                                  "(same as ANATOMIST_ALLOW_HUB=1; default: offline)."),
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                 help="Print the version and exit."),
) -> None:
    from anatomist.models.loading import HUB_ENV, hub_allowed

    if hub:
        os.environ[HUB_ENV] = "1"
    if not hub_allowed():   # child processes (organism workers, other libraries) stay offline too
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    _state["debug"] = debug
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")


def _register() -> None:
    # Each stage's CLI lives beside its code; this is the one place that assembles them.
    from anatomist.models.cli import app as model_app
    from anatomist.data.cli import app as data_app
    from anatomist.audit.cli import audit, report
    from anatomist.capture.cli import capture
    from anatomist.demo import demo

    app.add_typer(model_app, name="model")
    app.add_typer(data_app, name="data")
    app.command("capture")(capture)
    app.command("audit")(audit)
    app.command("report")(report)
    app.command("demo")(demo)
    # -- stages registered below this line --
    from anatomist.train.grpo_cli import grpo as grpo_cmd
    app.command("grpo")(grpo_cmd)
    from anatomist.evaluate.cli import evaluate as eval_cmd
    app.command("eval")(eval_cmd)
    from anatomist.train.cli import dpo as dpo_cmd
    app.command("dpo")(dpo_cmd)
    from anatomist.evaluate.predict_cli import predict as predict_cmd, verify as verify_cmd
    app.command("predict")(predict_cmd)
    app.command("verify")(verify_cmd)
    from anatomist.shape.cli import app as shape_app, steer as steer_cmd
    app.add_typer(shape_app, name="shape")
    app.command("steer")(steer_cmd)
    from anatomist.organism.cli import app as organism_app
    app.add_typer(organism_app, name="organism")
    from anatomist.spec_decode.cli import app as mtp_app, generate as generate_cmd
    app.add_typer(mtp_app, name="mtp")
    app.command("generate")(generate_cmd)
    from anatomist.sae.cli import app as sae_app
    app.add_typer(sae_app, name="sae")
    from anatomist.screen.cli import screen as screen_cmd
    app.command("screen")(screen_cmd)
    from anatomist.loop.cli import loop as loop_cmd
    app.command("loop")(loop_cmd)


_register()


def main() -> None:
    try:
        # standalone_mode=False: click's usage errors come back as exceptions, printed below on one line
        # (standalone mode would draw a multi-line box)
        code = app(standalone_mode=False)
    except AnatomistError as e:
        if _state["debug"]:
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except typer.Abort:
        print("error: aborted", file=sys.stderr)
        sys.exit(1)
    except typer.exceptions.TyperException as e:   # click's usage errors (typer vendors click)
        message = " ".join(e.format_message().split())
        if message:                                 # empty: no_args_is_help has printed the help already
            ctx = getattr(e, "ctx", None)
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            print(f"error: {message}{hint}", file=sys.stderr)
        sys.exit(e.exit_code)
    if isinstance(code, int):                       # --help and typer.Exit return their exit code
        sys.exit(code)


if __name__ == "__main__":
    main()
