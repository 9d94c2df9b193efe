"""CLI options take their defaults from the code they configure, so each default is written once.

    lr: float = typer.Option(default(DPOConfig, "lr"), "--lr", help="Peak learning rate.")

`default` reads a field of a config dataclass or a keyword parameter of a library function (e.g.
`run_eval`); tests/test_cli_defaults.py checks that no option of a command drifts from its config.
Ground floor: imports nothing of anatomist.
"""

from __future__ import annotations

import dataclasses
import inspect


def default(owner, name: str):
    """The default value of field `name` of dataclass `owner`, or of parameter `name` of function `owner`."""
    if dataclasses.is_dataclass(owner):
        f = {f.name: f for f in dataclasses.fields(owner)}[name]
        assert f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING, \
            f"{owner.__name__}.{name} has no default"
        return f.default_factory() if f.default is dataclasses.MISSING else f.default
    value = inspect.signature(owner).parameters[name].default
    assert value is not inspect.Parameter.empty, f"{owner.__name__}({name}=...) has no default"
    return value
