"""The `anatomist` command line: one sub-app per stage, each thin over the Python API.

Every stage's CLI lives beside its code (`anatomist/<stage>/cli.py`) and is registered
here. User errors (`AnatomistError`) print as one line and exit 2; `--debug` shows the
traceback instead.
"""

from __future__ import annotations

import logging
import sys

import typer

from anatomist.errors import AnatomistError

app = typer.Typer(
    name="anatomist",
    help="See and shape what DPO will teach before training; keep RL rollouts fast.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

_state = {"debug": False}


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log at INFO level."),
) -> None:
    _state["debug"] = debug
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")


def _register() -> None:
    # Imported here so `anatomist --help` stays fast and one broken stage does not hide the rest.
    from anatomist.models.cli import app as model_app
    from anatomist.data.cli import app as data_app
    from anatomist.capture.cli import capture

    app.add_typer(model_app, name="model")
    app.add_typer(data_app, name="data")
    app.command("capture")(capture)
    # -- stages registered below this line --


_register()


def main() -> None:
    try:
        app(standalone_mode=False)
    except AnatomistError as e:
        if _state["debug"]:
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:  # click's usage errors arrive here in non-standalone mode
        import click

        if isinstance(e, click.exceptions.Abort):
            sys.exit(130)
        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        raise


if __name__ == "__main__":
    main()
