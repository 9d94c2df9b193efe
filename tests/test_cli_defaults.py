"""Every CLI option named like a field of the config it fills has that field's default: the default
is written once, in the config (anatomist/options.py), and this keeps the two from drifting."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
import typer

from anatomist.audit.run import AuditConfig
from anatomist.cli import app
from anatomist.evaluate.run import run_eval
from anatomist.organism.build import build_organism
from anatomist.organism.hh import build_hh
from anatomist.organism.score import score_audit
from anatomist.sae.config import TrainConfig as SAETrainConfig
from anatomist.sae.train import sae_config
from anatomist.screen import read_with_hygiene, screen_pairs
from anatomist.spec_decode.analyze import collect
from anatomist.spec_decode.generate import generate
from anatomist.spec_decode.pipeline import cached_samples
from anatomist.spec_decode.train import TrainConfig as MTPTrainConfig
from anatomist.train.dpo import DPOConfig
from anatomist.train.grpo import GRPOConfig

# (command, the config or function its options fill, option names deliberately different, fewest matches)
CASES = [
    ("dpo", DPOConfig, (), 15),
    ("audit", AuditConfig, (), 12),
    ("grpo", GRPOConfig, (), 16),
    ("eval", run_eval, (), 14),
    ("mtp train", MTPTrainConfig, (), 7),
    ("mtp train", cached_samples, ("batch_size",), 4),   # --batch-size is the training batch
    ("mtp analyze", collect, (), 4),
    ("generate", generate, ("max_new_tokens",), 5),      # the CLI answers at more length than the library
    ("sae train", SAETrainConfig, (), 5),
    ("sae train", sae_config, ("model", "layer"), 3),    # the model's and the default SAE's, not sae_config's
    ("organism build", build_organism, (), 6),
    ("organism build-hh", build_hh, (), 6),
    ("organism score", score_audit, (), 3),
    ("screen", screen_pairs, (), 1),
    ("screen", read_with_hygiene, (), 3),
]


def config_defaults(owner) -> dict:
    if dataclasses.is_dataclass(owner):
        return {f.name: f.default for f in dataclasses.fields(owner) if f.default is not dataclasses.MISSING}
    return {n: p.default for n, p in inspect.signature(owner).parameters.items() if p.default is not p.empty}


def command(path: str):
    cmd = typer.main.get_command(app)
    for name in path.split():
        cmd = cmd.commands[name]
    return cmd


def shown(value):
    """Tuples reach the CLI as comma-separated lists, counts as text ('2000000')."""
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


@pytest.mark.parametrize("path,owner,different,fewest", CASES, ids=[f"{c[0]}:{c[1].__name__}" for c in CASES])
def test_option_defaults_are_the_config_defaults(path, owner, different, fewest):
    expected = config_defaults(owner)
    options = {p.name: p.default for p in command(path).params if p.name in expected and p.name not in different}
    assert len(options) >= fewest, f"`anatomist {path}` fills {owner.__name__}: only {sorted(options)} matched"
    drift = {name: (value, expected[name]) for name, value in options.items() if shown(value) != shown(expected[name])}
    assert drift == {}, f"`anatomist {path}` option default ≠ {owner.__name__} default: {drift}"


def test_drift_would_be_caught(monkeypatch):
    """The comparison sees a changed config default (the CLI reads it once, at import)."""
    monkeypatch.setattr(DPOConfig.__dataclass_fields__["lr"], "default", 1.0)
    with pytest.raises(AssertionError, match="lr"):
        test_option_defaults_are_the_config_defaults(*CASES[0])
