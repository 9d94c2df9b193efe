"""Shared fixtures: real data beside the repo, tiny random Llamas for units, the real default model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# No hub here or in CI: fail fast instead of waiting on network timeouts.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
HH_FILE = SHARED_DATA / "hh-rlhf-harmless-base-test-dev.jsonl.gz"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    assert SHARED_DATA.is_dir(), f"{SHARED_DATA} is missing: ../shared must sit beside the repository"
    return SHARED_DATA


def tiny_llama(vocab_size: int = 128, hidden_size: int = 32, layers: int = 4, seed: int = 0):
    """A random Llama small enough for unit tests (eval mode, fp32)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=512, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="session")
def smol_tokenizer():
    """The default model's real tokenizer (converts the GGUF into the cache on first use)."""
    from anatomist.models import load_tokenizer

    return load_tokenizer()


@pytest.fixture(scope="session")
def smol():
    """The real default model, SmolLM2-135M-Instruct (fp32)."""
    from anatomist.models import load

    return load()


@pytest.fixture
def one_thread():
    """Tiny models: OpenMP threads only add barrier stalls (badly so on a busy shared host)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


BROWSER_TESTS = "test_report_browser.py"


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Say loudly when the report's browser checks were skipped (no chromium on PATH): "N skipped"
    does not tell a reader that the HTML report went unchecked. The outermost wrapper, so the line
    comes after the short test summary, just above the final counts. CI (.ci/run) installs
    chromium, so there they run."""
    yield
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if BROWSER_TESTS in r.nodeid]
    if skipped:
        terminalreporter.write_line(
            f"NOTE: the HTML report was not checked in a browser ({len(skipped)} tests in tests/{BROWSER_TESTS} "
            "skipped: chromium is not on PATH); install it (Debian/Ubuntu: apt-get install -y chromium) and rerun",
            yellow=True, bold=True)
