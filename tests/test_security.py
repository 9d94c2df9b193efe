"""Security: weights only via safetensors / weights_only, no remote code unless asked, no path
escapes, escaped HTML, and no dataset text sent to a remote LLM without consent.

The source checks walk the syntax tree of every module in anatomist/ (the stages other people add
included), so a new `torch.load(path)` or `trust_remote_code=True` fails here.
"""

from __future__ import annotations

import ast
import html
import logging
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from anatomist.errors import AnatomistError
from conftest import REPO, tiny_llama

PACKAGE = REPO / "anatomist"
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "marshal", "shelve"}


def _name(node) -> str:
    """Dotted name of a call target: torch.load, np.load, AutoModel.from_pretrained, ..."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_name(node.value)}.{node.attr}"
    return "?"


def _kw(call: ast.Call, name: str):
    for k in call.keywords:
        if k.arg == name:
            return k.value.value if isinstance(k.value, ast.Constant) else "<expr>"
    return None


def unsafe_calls(source: str, filename: str = "<src>") -> list[str]:
    """Every weight / object loading in `source` that could run pickled code, and every literal
    trust_remote_code=True."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            found += [f"{where}: import {a.name}" for a in node.names if a.name.split(".")[0] in PICKLE_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PICKLE_MODULES:
            found.append(f"{where}: from {node.module} import ...")
        elif isinstance(node, ast.Call):
            name = _name(node.func)
            if name.endswith("torch.load") and _kw(node, "weights_only") is not True:
                found.append(f"{where}: {name} without weights_only=True")
            elif name.split(".")[-1] in ("read_pickle", "to_pickle", "loads") and name.split(".")[0] in (
                    "pd", "pandas", "pickle"):
                found.append(f"{where}: {name}")
            elif name.split(".")[-1] == "load" and name.split(".")[0] in ("np", "numpy") \
                    and _kw(node, "allow_pickle") not in (None, False):
                found.append(f"{where}: {name} with allow_pickle")
            elif name.endswith(".from_pretrained") and "Tokenizer" not in name and "Config" not in name \
                    and _kw(node, "use_safetensors") is not True and _kw(node, "gguf_file") is None:
                found.append(f"{where}: {name} without use_safetensors=True")
            if _kw(node, "trust_remote_code") is True:
                found.append(f"{where}: trust_remote_code=True")
    return found


def test_the_source_checker_catches_each_pattern():
    bad = ("import pickle\nfrom dill import loads\nimport torch\ntorch.load(p)\ntorch.load(p, weights_only=False)\n"
           "pd.read_pickle(p)\nnp.load(p, allow_pickle=True)\nAutoModelForCausalLM.from_pretrained(p)\n"
           "AutoTokenizer.from_pretrained(p, trust_remote_code=True)\n")
    assert len(unsafe_calls(bad)) == 8, unsafe_calls(bad)   # every line but "import torch"
    good = ("torch.load(p, weights_only=True)\nnp.load(p)\nAutoModel.from_pretrained(p, use_safetensors=True)\n"
            "AutoTokenizer.from_pretrained(p, trust_remote_code=trust_remote_code)\n")
    assert unsafe_calls(good) == []


def test_package_loads_weights_only_through_safe_paths():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 40
    found = [f for path in files for f in unsafe_calls(path.read_text(encoding="utf-8"), str(path.relative_to(REPO)))]
    assert not found, "\n".join(found)


def test_remote_code_is_off_unless_asked():
    import inspect

    import typer.main

    from anatomist.cli import app
    from anatomist.models.loading import load, load_tokenizer

    for fn in (load, load_tokenizer):
        assert inspect.signature(fn).parameters["trust_remote_code"].default is False

    def params(command):
        yield from command.params
        for sub in getattr(command, "commands", {}).values():
            yield from params(sub)
    flags = [p for p in params(typer.main.get_command(app)) if "remote_code" in (p.name or "")]
    assert all(p.default is False for p in flags), flags   # any such flag must be opt-in


def test_load_passes_trust_remote_code_through_only_when_asked(tmp_path, smol_tokenizer, monkeypatch):
    import transformers

    folder = tmp_path / "m"
    tiny_llama(vocab_size=49152, hidden_size=16, layers=1).save_pretrained(folder)
    smol_tokenizer.save_pretrained(folder)
    seen = []
    real = transformers.AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        seen.append((kwargs.get("trust_remote_code"), kwargs.get("use_safetensors")))
        return real(*args, **kwargs)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", spy)
    from anatomist.models.loading import load

    load(str(folder))
    load(str(folder), trust_remote_code=True)
    assert seen == [(False, True), (True, True)]


# --- output paths stay inside their folder -------------------------------------------------------

@pytest.mark.parametrize("name", ["/abs/path/to/model", "../../outside", "a/../../b", "~/m", "..", ".", "x/y/z",
                                  "C:\\models\\m", "models/../../../etc"])
def test_model_names_cannot_escape_the_cache(tmp_path, name):
    from anatomist.sae.default import model_dir_name

    root = tmp_path / "cache" / "sae"
    target = (root / model_dir_name(name)).resolve()
    assert target.is_relative_to(root.resolve()) and target != root.resolve(), (name, target)


def test_model_dir_name_keeps_ids_and_aliases():
    from anatomist.sae.default import model_dir_name

    for name in ("smollm2-135m-instruct", "HuggingFaceTB/SmolLM2-135M-Instruct", "gpt2"):
        assert model_dir_name(name) == name        # the existing cache layout is unchanged
    assert model_dir_name("/a/b") != model_dir_name("/a_b")


def test_default_sae_of_a_local_model_writes_into_the_cache(tmp_path, monkeypatch):
    """An absolute model path used to become the SAE's folder (Path / "/abs" is "/abs"): the
    capture would have written into the user's model folder."""
    import anatomist.models
    import anatomist.sae.default as default

    user_model = tmp_path / "my-model"
    user_model.mkdir()
    monkeypatch.setenv("ANATOMIST_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(anatomist.models, "load", lambda name: SimpleNamespace(model=None, tokenizer=None))
    monkeypatch.setattr(default, "recipe_items", lambda *a, **k: [])
    written = []

    def capture(model, tok, items, folder, *a, **k):
        written.append(Path(folder))
        raise AnatomistError("stop here")
    monkeypatch.setattr(default, "capture", capture)
    with pytest.raises(AnatomistError, match="stop here"):
        default.default_sae(str(user_model))
    assert written and written[0].resolve().is_relative_to((tmp_path / "cache").resolve()), written
    assert list(user_model.iterdir()) == []


# --- the report escapes dataset text; dataset ids never become paths ----------------------------

XSS = "<script>alert(1)</script>"
IMG = "<img src=x onerror=alert(2)>"


def test_report_of_a_real_audit_escapes_dataset_text(tmp_path, smol_tokenizer, one_thread):
    from anatomist.audit.report import render_report
    from anatomist.audit.run import AuditConfig, run_audit
    from anatomist.data import PreferencePair
    from anatomist.sae import SAE, SAEConfig

    pairs = []
    for i in range(16):
        topic = ("cooking", "coding")[i % 2]
        pairs.append(PreferencePair(f"../../{IMG}-{i}", ({"role": "user", "content": f"{XSS} {topic} question {i}"},),
                                    f"{XSS} sure, answer {i} {IMG}", f"plain answer number {i}", {"topic": f"{topic} {XSS}"}))
    model = tiny_llama(vocab_size=49152, hidden_size=16, layers=2)
    sae = SAE(SAEConfig(d_in=16, d_sae=64, architecture="topk", k=4, layer=1)).init_weights(
        torch.Generator().manual_seed(0))
    out = tmp_path / "runs" / "audit"
    cfg = AuditConfig(topic_column="topic", min_support=2, n_boot=20, n_examples=4, knn=3, min_pairs=4)
    run_audit(model, smol_tokenizer, sae, pairs, out, cfg, model_name=f"tiny {XSS}", progress=False)
    page = render_report(out).read_text(encoding="utf-8")
    for raw in (XSS, IMG, "<img src=x"):
        assert raw not in page, f"unescaped dataset text in the report: {raw!r}"
    assert html.escape(XSS, quote=True) in page           # the text did reach the page, escaped
    assert html.escape(IMG, quote=True) in page
    # pair ids like "../../x" stay data: every file is inside the audit folder, named by anatomist
    assert {p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file()} <= {
        p.relative_to(tmp_path) for p in out.rglob("*") if p.is_file()}
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["audit.json", "clusters.parquet", "concepts.json", "examples.json", "features.parquet", "latents",
         "length.parquet", "length_pairs.parquet", "pairs.parquet", "report.html", "rows.parquet", "screen.json",
         "screen.parquet", "screen_fires.parquet"])


# --- the LLM labeller: no dataset text to a remote host without consent ---------------------------

def _no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a network request was attempted")
    monkeypatch.setattr(urllib.request.OpenerDirector, "open", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def test_audit_cli_has_the_remote_guard():
    from typer.testing import CliRunner

    from anatomist.cli import app

    res = CliRunner().invoke(app, ["audit", "--help"], env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"})
    assert res.exit_code == 0 and "--no-remote" in res.output and "--allow-remote" in res.output


@pytest.mark.parametrize("flag", [[], ["--no-remote"]])
def test_remote_endpoint_refused_before_any_work(tmp_path, monkeypatch, flag):
    """Refused at once: before the data is read, the model loaded or a single request made."""
    from test_bad_inputs import run_cli

    _no_network(monkeypatch)
    code, err, _ = run_cli(["audit", "--data", str(tmp_path / "never-read.jsonl"), "--out", str(tmp_path / "out"),
                            "--model", str(tmp_path / "never-loaded"), "--sae", str(tmp_path / "no-sae"),
                            "--labeller", "openai", "--base-url", "https://api.example.com/v1", "--llm-model", "m",
                            *flag])
    assert code == 2 and err.strip() == ("error: refusing to send dataset text to api.example.com: pass "
                                         "--allow-remote to label with a non-local endpoint"), err
    assert not (tmp_path / "out").exists()


def test_allowed_remote_warns_before_the_first_request(monkeypatch, caplog):
    """With --allow-remote the user is warned, naming the host, when the audit is configured
    (before pooling) and again before labelling; no request precedes the warning."""
    import anatomist.audit.labels as labels
    from anatomist.audit.labels import Context, label_clusters
    from anatomist.audit.run import AuditConfig

    _no_network(monkeypatch)
    kwargs = {"base_url": "https://api.example.com/v1", "model": "m", "allow_remote": True}
    warned = lambda: [r for r in caplog.records if r.levelno == logging.WARNING  # noqa: E731
                      and "api.example.com" in r.getMessage()]
    with caplog.at_level(logging.WARNING):
        AuditConfig(labeller="openai", labeller_kwargs=kwargs)
        assert len(warned()) == 1 and "dataset text" in warned()[0].getMessage()
        caplog.clear()
        calls = []

        def fake_chat(base_url, model, messages, **kw):
            assert warned(), "dataset text sent before the warning"
            calls.append(messages)
            return "1, 2" if "Which of the numbered texts" in messages[-1]["content"] else "greetings"
        monkeypatch.setattr(labels, "chat", fake_chat)
        ctx = lambda i, side: Context(("hello", " there", f" {i}"), (1.0, 0.5, 0.0), f"r{i}", side)  # noqa: E731
        label_clusters({0: ([ctx(i, "chosen") for i in range(4)], [ctx(i, "rejected") for i in range(4, 8)])},
                       labeller="openai", progress=False, **kwargs)
    assert calls, "the fake endpoint was never asked"


def test_loopback_endpoint_does_not_warn(caplog):
    from anatomist.audit.run import AuditConfig

    with caplog.at_level(logging.WARNING):
        AuditConfig(labeller="openai", labeller_kwargs={"base_url": "http://127.0.0.1:8000/v1", "model": "m"})
        AuditConfig(labeller="openai", labeller_kwargs={"base_url": "http://localhost:8000/v1", "model": "m"})
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
