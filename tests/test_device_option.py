"""`--device` reaches the model: the CLIs thread it into `load`, and the residual hook moves the
CPU-collated inputs onto the model's device (here the "meta" device stands in for a GPU: no data,
but a real second device, so a forward fed CPU tensors is caught)."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from anatomist.capture.hook import residual_stream
from anatomist.cli import app


class Stop(Exception):
    """Raised by a stub once it has recorded what it was called with."""


class MetaLM(torch.nn.Module):
    """A one-block LM on the meta device that records the devices its forward receives."""

    def __init__(self):
        super().__init__()
        self.model = torch.nn.Module()
        self.model.embed_tokens = torch.nn.Embedding(8, 4, device="meta")
        self.model.layers = torch.nn.ModuleList([torch.nn.Linear(4, 4, device="meta")])
        self.seen: list[tuple[str, str]] = []

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def forward(self, input_ids, attention_mask=None, use_cache=False):
        self.seen.append((input_ids.device.type, attention_mask.device.type))
        return self.model.layers[0](self.model.embed_tokens(input_ids))


def test_residual_stream_moves_inputs_to_the_model_device():
    lm = MetaLM()
    ids = torch.tensor([[1, 2, 3]])                      # collated on the CPU, as capture/pool do
    out = residual_stream(lm, ids, torch.ones_like(ids), 0)
    assert lm.seen == [("meta", "meta")]
    assert out.device.type == "meta" and out.shape == (1, 3, 4)


def test_organism_build_loads_on_the_device(tmp_path, monkeypatch):
    import anatomist.models as models

    calls = []

    def fake_load(name, **kw):
        calls.append(kw)
        raise Stop

    monkeypatch.setattr(models, "load", fake_load)
    r = CliRunner().invoke(app, ["organism", "build", "--out", str(tmp_path / "o"), "--prompts-per-topic", "4",
                                 "--device", "meta"])
    assert isinstance(r.exception, Stop), r.output
    assert calls == [{"device": "meta"}]


def test_audit_puts_model_and_sae_on_the_device(tmp_path, monkeypatch):
    import anatomist.audit.run as audit_run
    import anatomist.models.loading as loading
    import anatomist.sae as sae_pkg
    from anatomist.models.loading import LoadedModel

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"q{i}", "chosen": "yes", "rejected": "no"}) + "\n"
                            for i in range(3)))
    seen = {}

    class FakeSAE:
        def to(self, device):
            seen["sae"] = device
            return self

    monkeypatch.setattr(loading, "load", lambda name, **kw: seen.update(model=kw.get("device")) or
                        LoadedModel(object(), object(), name))
    monkeypatch.setattr(sae_pkg, "load_sae", lambda path: FakeSAE())
    monkeypatch.setattr(sae_pkg, "default_sae", lambda model: tmp_path / "sae")

    def fake_run_audit(*a, **kw):
        raise Stop

    monkeypatch.setattr(audit_run, "run_audit", fake_run_audit)
    r = CliRunner().invoke(app, ["audit", "--data", str(data), "--out", str(tmp_path / "a"), "--device", "meta"])
    assert isinstance(r.exception, Stop), r.output
    assert seen == {"model": "meta", "sae": "meta"}


@pytest.mark.parametrize("cmd", [["organism", "build"], ["audit"]])
def test_device_defaults_to_cpu(cmd):
    import typer

    command = typer.main.get_command(app)
    for name in cmd:
        command = command.commands[name]
    assert {p.name: p.default for p in command.params}["device"] == "cpu"
