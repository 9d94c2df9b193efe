"""Every command's `--help` works and shows an example; every example parses against its command;
the examples form one worked path (each `runs/…` path a command reads is one an earlier example
writes); every command that reads preference pairs takes the same `--on-bad-row` option."""

from __future__ import annotations

import re
import shlex
from pathlib import PurePosixPath

import pytest
import typer
from typer.testing import CliRunner

from anatomist.cli import app

ROOT = typer.main.get_command(app)
# An example line: an optional label ("Example:", "Shaped:") and a command line starting with `anatomist `.
EXAMPLE = re.compile(r"^\s*(?:[A-Z][\w ]*:\s*)?(anatomist\s.+?)\s*$")


def commands(group=ROOT, path=()):
    """(path, click command) of every leaf command, e.g. (("organism", "score"), <Command>)."""
    for name, sub in sorted(group.commands.items()):
        if hasattr(sub, "commands"):
            yield from commands(sub, (*path, name))
        else:
            yield (*path, name), sub


COMMANDS = dict(commands())


def examples(command) -> list[str]:
    return [m.group(1) for line in (command.help or "").splitlines() if (m := EXAMPLE.match(line))]


ALL_EXAMPLES = [(" ".join(path), ex) for path, cmd in COMMANDS.items() for ex in examples(cmd)]


def parse(line: str):
    """Parse an example against its command without running it: returns the click context (its
    .params are the converted values). Unknown options, missing required ones or values of the
    wrong type raise click's UsageError / BadParameter."""
    args = shlex.split(line)
    assert args[0] == "anatomist", line
    args, cmd, name = args[1:], ROOT, "anatomist"
    while hasattr(cmd, "commands"):
        name, args = args[0], args[1:]
        assert name in cmd.commands, f"{line!r}: no command {name!r}"
        cmd = cmd.commands[name]
    return cmd.make_context(name, args)


@pytest.mark.parametrize("path", list(COMMANDS), ids=[" ".join(p) for p in COMMANDS])
def test_help_works_and_shows_an_example(path):
    r = CliRunner().invoke(app, [*path, "--help"])
    assert r.exit_code == 0, r.output
    assert examples(COMMANDS[path]), f"`anatomist {' '.join(path)} --help` has no `Example: anatomist …` line"


@pytest.mark.parametrize("path, line", ALL_EXAMPLES, ids=[f"{p}: {e[:60]}" for p, e in ALL_EXAMPLES])
def test_every_example_parses(path, line):
    ctx = parse(line)
    assert ctx.command is COMMANDS[tuple(path.split())], (line, path)


def test_a_typo_in_an_example_would_fail():
    usage_error = typer.exceptions.TyperException       # click's usage errors (typer vendors click)
    with pytest.raises(usage_error, match="No such option: --no-such-flag"):
        parse("anatomist audit --data x.jsonl --out runs/a --no-such-flag")
    with pytest.raises(usage_error, match="Missing parameter: data"):
        parse("anatomist audit --out runs/a")
    with pytest.raises(usage_error, match="valid integer"):
        parse("anatomist dpo --data x.jsonl --out runs/d --steps many")


def test_examples_chain():
    """Each `runs/…` path an example reads is written by some example's --out (or lies under one):
    `organism build` → `audit` → `dpo` → `eval` → `verify` can be pasted in order."""
    written, reads = set(), []
    for _, line in ALL_EXAMPLES:
        args = shlex.split(line)
        for flag, token in zip(args, args[1:]):
            if token.startswith("runs/"):
                if flag in ("--out", "-o"):
                    written.add(PurePosixPath(token))
                else:
                    reads.append((token, line))
    dangling = [(t, line) for t, line in reads
                if not any(PurePosixPath(t) == w or w in PurePosixPath(t).parents for w in written)]
    assert not dangling, dangling
    for path in ("runs/organism", "runs/audit", "runs/dpo", "runs/eval"):
        assert PurePosixPath(path) in written, path
    assert any(line.startswith("anatomist verify runs/audit runs/eval") for _, line in ALL_EXAMPLES)
    assert any("--model runs/dpo/policy" in line for _, line in ALL_EXAMPLES)


PAIR_READERS = ["capture", "audit", "dpo", "eval", "demo", "data inspect", "shape export", "sae train", "sae eval"]


@pytest.mark.parametrize("path", PAIR_READERS)
def test_every_pair_reader_takes_on_bad_row(path):
    from anatomist.data.cli import ON_BAD_ROW_HELP

    cmd = COMMANDS[tuple(path.split())]
    option = next((p for p in cmd.params if "--on-bad-row" in p.opts), None)
    assert option is not None, f"`anatomist {path}` has no --on-bad-row"
    assert option.default == "error" and option.help == ON_BAD_ROW_HELP


def test_dpo_keeps_the_deprecated_skip_bad_rows_hidden():
    option = next(p for p in COMMANDS[("dpo",)].params if "--skip-bad-rows" in p.opts)
    assert option.hidden
    ctx = parse("anatomist dpo --data x.jsonl --out runs/d --skip-bad-rows")
    assert ctx.params["skip_bad_rows"] is True and ctx.params["on_bad_row"] == "error"


def test_version():
    from anatomist import __version__

    r = CliRunner().invoke(app, ["--version"])
    assert r.exit_code == 0 and r.output.strip() == f"anatomist {__version__}"


@pytest.mark.parametrize("stage", ["capture", "audit"])
def test_torchrun_modules_take_the_commands_flags_with_descriptions(stage, capsys):
    """`python -m anatomist.<stage>.distributed --help`: every flag of `anatomist <stage>` is there,
    each with a description."""
    import importlib

    module = importlib.import_module(f"anatomist.{stage}.distributed")
    with pytest.raises(SystemExit) as exit_:
        module.main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    flags = set(re.findall(r"^  (--[\w-]+)", text, flags=re.M))
    wanted = {p.opts[0] for p in COMMANDS[(stage,)].params if p.opts[0].startswith("--")}
    assert wanted <= flags, sorted(wanted - flags)
    undescribed = re.findall(r"^  (--[\w-]+)(?: [A-Z_{},]+)?\n(?!  {10,})", text, flags=re.M)
    assert not undescribed, undescribed
