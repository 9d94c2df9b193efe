"""The README names only what exists: every `anatomist …` command it shows has a working `--help`
and knows every flag the README gives it; every dotted Python name imports (and what it shows
called is callable); every script it names is there; a benchmark said to take `--device` does."""

from __future__ import annotations

import importlib
import re

import pytest
from conftest import REPO
from typer.testing import CliRunner

from anatomist.cli import app
from test_cli_help import ROOT

README = (REPO / "README.md").read_text()
SPANS = re.findall(r"`([^`\n]+)`", README)
COMMAND_SPANS = sorted({s for s in SPANS if s.startswith("anatomist ") or s == "anatomist"})
PY_NAMES = sorted({m.group(0) for s in SPANS for m in re.finditer(r"\banatomist(?:\.\w+)+(\()?", s)
                   if not s.startswith("anatomist ")})
# "`anatomist.sae.train_sae`, `load_sae`, `default_sae`": the bare names live beside the dotted one
PY_NAMES += sorted({f"{m.group(1).rsplit('.', 1)[0]}.{bare}"
                    for m in re.finditer(r"`(anatomist(?:\.\w+)+)`((?:, `\w+`)+)", README)
                    for bare in re.findall(r"`(\w+)`", m.group(2))})
SCRIPTS = sorted({s for s in SPANS if re.fullmatch(r"[\w./-]+\.py", s)})


def resolve(span: str):
    """(command path, click command, the flags the span gives it) of `anatomist …` text from the README."""
    tokens = [t.strip("[]") for t in span.split()[1:]]
    cmd, path, flags = ROOT, [], []
    for t in tokens:
        if t.startswith("-"):
            flags.append((cmd, t.split("=")[0]))
        elif hasattr(cmd, "commands") and t in cmd.commands:
            cmd = cmd.commands[t]
            path.append(t)
        elif hasattr(cmd, "commands") and re.fullmatch(r"[a-z][a-z-]*", t):
            raise AssertionError(f"README `{span}`: `anatomist {' '.join(path)}` has no command {t!r}")
    return path, cmd, flags


def test_the_readme_names_commands_and_python_names():
    assert len(COMMAND_SPANS) >= 20 and len(PY_NAMES) >= 10, (COMMAND_SPANS, PY_NAMES)


@pytest.mark.parametrize("span", COMMAND_SPANS)
def test_readme_command_exists_and_knows_its_flags(span):
    path, cmd, flags = resolve(span)
    for owner, flag in flags:
        known = {o for p in owner.params for o in (*p.opts, *p.secondary_opts)} | {"--help"}
        assert flag in known, f"README `{span}`: `anatomist {' '.join(path)}` has no option {flag}"
    r = CliRunner().invoke(app, [*path, "--help"])
    assert r.exit_code == 0, (span, r.output)


def test_an_unknown_readme_command_or_flag_would_fail():
    with pytest.raises(AssertionError, match="has no command 'nosuch'"):
        resolve("anatomist organism nosuch --out DIR")
    with pytest.raises(AssertionError, match="has no option --nope"):
        test_readme_command_exists_and_knows_its_flags("anatomist audit --data FILE --nope")


@pytest.mark.parametrize("name", PY_NAMES)
def test_readme_python_name_imports(name):
    called = name.endswith("(")
    parts = name.rstrip("(").split(".")
    obj = importlib.import_module(parts[0])
    for i, attr in enumerate(parts[1:], 2):     # as Python resolves `anatomist.x.y`: attribute, else submodule
        if not hasattr(obj, attr):
            try:
                importlib.import_module(".".join(parts[:i]))
            except ModuleNotFoundError:
                pass
        assert hasattr(obj, attr), f"README names {name.rstrip('(')}: {'.'.join(parts[:i - 1])} has no {attr!r}"
        obj = getattr(obj, attr)
    assert not called or callable(obj), f"README shows {name}…) called, but it is not callable"


@pytest.mark.parametrize("script", SCRIPTS)
def test_readme_script_exists(script):
    assert any((base / script).is_file() for base in (REPO, REPO / "anatomist", REPO / "benchmarks", REPO.parent / "shared")), script


def test_benchmarks_said_to_take_device_do():
    sentence = re.search(r"([^.;]*) take `--device`", README)
    assert sentence, "the README no longer says which benchmarks take --device"
    names = re.findall(r"`(\w+)`", sentence.group(1))
    assert names
    for name in names:
        assert '"--device"' in (REPO / "benchmarks" / f"{name}.py").read_text(), f"{name}.py has no --device"
