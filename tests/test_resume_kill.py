"""Kill -9 every resumable job at random points, resume it, and compare with an uninterrupted run.

Jobs: `anatomist capture` (CLI), capture with a shard per sequence, the audit's pooling (latents
store), `anatomist sae train` (CLI), MTP head training, organism generation, `anatomist dpo` (CLI), `anatomist grpo` (CLI:
plain rollouts, speculative ones with a tiny MTP head, and with that head refreshed online). All on tiny random
models saved to a temporary folder; see tests/killharness.py for how kills and checks work. The
last test prints the summary line (`pytest -s` shows it; it is also in the assertion message
should anything go wrong).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import tiny_llama
from killharness import Harness, Job, Zygote, compare_dirs, parse_problem, scan

SEEDS = (0,)            # the slow test below runs six more seeds per job


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, smol_tokenizer):
    root = tmp_path_factory.mktemp("kill-inputs")
    torch.manual_seed(0)
    chat = root / "tiny-chat"                      # the real tokenizer (chat template) on a random Llama
    tiny_llama(vocab_size=49152, hidden_size=16, layers=2).save_pretrained(chat)
    smol_tokenizer.save_pretrained(chat)
    small = root / "tiny-small"                    # a small vocabulary for MTP training
    tiny_llama(vocab_size=64, hidden_size=32, layers=2, seed=1).save_pretrained(small)
    prompts = root / "heldout_prompts.jsonl"       # what a monitored run samples on
    prompts.write_text("".join(json.dumps({"id": f"h{i}", "topic": f"t{i % 2}", "prompt": [
        {"role": "user", "content": f"Why is the sea salty, take {i}?"}]}) + "\n" for i in range(4)))
    data = root / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Question {i}: why is the sky blue at {i} o'clock?",
                                        "chosen": f"Because of scattering, reason {i}.",
                                        "rejected": f"No idea about {i}, sorry."}) + "\n" for i in range(16)))
    from anatomist.capture import ShardWriter
    from anatomist.sae import SAE, SAEConfig, save_sae

    sae = root / "sae"
    save_sae(SAE(SAEConfig(d_in=16, d_sae=64, architecture="topk", k=4, layer=1, model="tiny")).init_weights(
        torch.Generator().manual_seed(0)), sae)
    store = root / "store"
    g = torch.Generator().manual_seed(0)
    w = ShardWriter(store, {"model": "tiny", "layer": 1, "d_model": 16}, shard_rows=300)
    for s in range(40):
        acts = torch.randn(30, 16, generator=g) * torch.rand(16, generator=g)
        acts[0] *= 100.0  # an attention-sink-like first token
        w.add(s, str(s), "text", acts=acts, pos=torch.arange(30), token=torch.zeros(30, dtype=torch.long),
              response=torch.ones(30, dtype=torch.bool))
    w.close(40)
    from transformers import AutoModelForCausalLM

    from anatomist.spec_decode.head import MTPConfig, MTPHead, save_head

    head = root / "head"                           # an untrained head on tiny-chat: drafts, some accepted
    save_head(MTPHead(AutoModelForCausalLM.from_pretrained(chat), MTPConfig(gamma=2)), head)
    return {"chat": str(chat), "small": str(small), "data": str(data), "sae": str(sae), "store": str(store),
            "head": str(head), "root": root, "prompts": str(prompts)}


JOBS = {
    "capture-cli": lambda i: Job("capture-cli", "job_capture_cli", {"data": i["data"], "model": i["chat"]},
                                 immutable=("shard_*.safetensors", "capture.json")),
    "capture": lambda i: Job("capture", "job_capture", {"data": i["data"], "model": i["chat"]},
                             immutable=("shard_*.safetensors", "capture.json")),
    "pool": lambda i: Job("pool", "job_pool", {"data": i["data"], "model": i["chat"], "sae": i["sae"]},
                          immutable=("shard_*.safetensors", "capture.json")),
    "sae-train-cli": lambda i: Job("sae-train-cli", "job_sae_train", {"store": i["store"]},
                                   normalise=("training.json",)),
    "mtp-train": lambda i: Job("mtp-train", "job_mtp_train", {"model": i["small"]}),
    "organism-generate": lambda i: Job("organism-generate", "job_organism", {"model": i["chat"]},
                                       immutable=("settings.json",), journals=("generations.jsonl",),
                                       append_only=("generations.jsonl",)),
    "organism-workers": lambda i: Job("organism-workers", "job_organism", {"model": i["chat"], "workers": 2},
                                      immutable=("settings.json",), journals=("generations.jsonl",),
                                      append_only=("generations.jsonl",)),
    "dpo-cli": lambda i: Job("dpo-cli", "job_dpo", {"data": i["data"], "model": i["chat"]},
                             # metrics.jsonl: lines after the last checkpoint are recomputed on resume
                             immutable=("cache/*/shard-*.safetensors",), journals=("metrics.jsonl",),
                             normalise=("metrics.jsonl", "summary.json")),
    "dpo-monitor": lambda i: Job("dpo-monitor", "job_dpo", {"data": i["data"], "model": i["chat"],
                                                             "prompts": i["prompts"]},
                                 immutable=("cache/*/shard-*.safetensors",), journals=("metrics.jsonl",),
                                 normalise=("metrics.jsonl", "summary.json", "monitor.jsonl")),
    "grpo-monitor": lambda i: Job("grpo-monitor", "job_grpo", {"model": i["chat"], "monitor": True},
                                  journals=("metrics.jsonl",), normalise=("metrics.jsonl", "monitor.jsonl"),
                                  skip=("plot.html",)),
    "grpo-cli": lambda i: Job("grpo-cli", "job_grpo", {"model": i["chat"]}, journals=("metrics.jsonl",),
                              normalise=("metrics.jsonl",), skip=("plot.html",)),
    "grpo-spec": lambda i: Job("grpo-spec", "job_grpo", {"model": i["chat"], "head": i["head"]},
                               journals=("metrics.jsonl",), normalise=("metrics.jsonl",), skip=("plot.html",)),
    "grpo-refresh": lambda i: Job("grpo-refresh", "job_grpo", {"model": i["chat"], "head": i["head"],
                                                                "refresh_every": 2},
                                  journals=("metrics.jsonl",), normalise=("metrics.jsonl",), skip=("plot.html",)),
}


@pytest.fixture(scope="module")
def harness(inputs, tmp_path_factory):
    z = Zygote(env={"ANATOMIST_CACHE": str(inputs["root"] / "cache"), "HF_HUB_OFFLINE": "1",
                    "TRANSFORMERS_OFFLINE": "1"})
    h = Harness(z, tmp_path_factory.mktemp("kill-runs"))
    yield h
    z.close()


# --- the checkers themselves must catch what they are meant to catch ---------------------------

def test_scan_flags_half_written_files(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.arange(100.0)}, str(tmp_path / "a.safetensors"))
    full = (tmp_path / "a.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(full[:len(full) - 7])
    (tmp_path / "b.json").write_text('{"a": 1')
    (tmp_path / "c.jsonl").write_text('{"a": 1}\n{"b"')
    (tmp_path / "g.jsonl").write_text('{"a": 1}\n{"b"')
    (tmp_path / ".d.json.tmp123").write_text("{")
    problems, tmps = scan(tmp_path, journals=("g.jsonl",))
    assert sorted(p.split(":")[0] for p in problems) == ["b.json", "c.jsonl", "cut.safetensors"]
    assert [t.name for t in tmps] == [".d.json.tmp123"]
    assert parse_problem(tmp_path / "a.safetensors") is None


def test_compare_dirs_sees_one_changed_byte(tmp_path):
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "x.bin").write_bytes(b"\x00" * 10)
        (tmp_path / d / "t.json").write_text(json.dumps({"loss": 1.0, "wall_s": 3.0 if d == "a" else 4.0,
                                                           "head_refresh/s": 1.0 if d == "a" else 2.0}))
    assert compare_dirs(tmp_path / "a", tmp_path / "b", normalise=("t.json",)) == []
    (tmp_path / "b" / "x.bin").write_bytes(b"\x00" * 9 + b"\x01")
    assert compare_dirs(tmp_path / "a", tmp_path / "b", normalise=("t.json",)) == ["differs x.bin"]
    assert compare_dirs(tmp_path / "a", tmp_path / "b") == ["differs t.json", "differs x.bin"]


def test_atomic_write_removes_a_dead_writers_temp_file(tmp_path):
    """A kill between write and rename leaves `.NAME.tmpPID`; the next write of NAME removes it
    when PID is gone, and leaves a live writer's alone."""
    import os
    import subprocess
    import sys

    from anatomist.fileio import atomic_write_text

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    (tmp_path / f".x.json.tmp{dead}").write_text("{half")
    (tmp_path / f".x.json.tmp{os.getppid()}").write_text("{")   # a live process's
    (tmp_path / f".y.json.tmp{dead}").write_text("{")           # another file's: not touched here
    atomic_write_text(tmp_path / "x.json", "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["x.json", f".x.json.tmp{os.getppid()}", f".y.json.tmp{dead}"])


class FinishingZygote:
    """A child that writes its one file and exits before any kill point: a job the harness never kills."""

    def start(self, job, kwargs, log):
        self.out = Path(kwargs["out"])
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "x.json").write_text("{}")
        return 0

    def wait(self, timeout):
        return 0


def test_harness_flags_a_job_that_was_never_killed(tmp_path):
    """A job that finishes before its kill point passed unchecked (its resume was never exercised);
    now every seed must see at least one SIGKILL that left partial state, or the run is a problem."""
    h = Harness(FinishingZygote(), tmp_path)
    h.run(Job("never", "job_none", {}), seed=0, max_kills=2)
    assert h.tally.kills == 0 and h.tally.finished_early == 2       # its random point, then its first change
    assert h.tally.killed_mid_run == {"never": 0}
    assert [p for p in h.tally.problems if "never killed mid-run" in p] == [
        "never seed 0: never killed mid-run (no SIGKILL left partial state, even at its first changes): the resume "
        "was not tested"]


class LateWriterZygote:
    """A job that writes a.json, then b.json and exits at once: random kill points after its first
    change come too late; a kill the moment a.json shows catches it mid-run. Each child is a
    real `sleep` process, so the harness's SIGKILL is real."""

    def start(self, job, kwargs, log):
        import subprocess

        self.out, self.calls = Path(kwargs["out"]), 0
        self.proc = subprocess.Popen(["sleep", "60"])
        return self.proc.pid

    def wait(self, timeout):
        import subprocess

        self.calls += 1
        try:                                        # sleep 60 ends only by the harness's SIGKILL
            return self.proc.wait(timeout=0.05)
        except subprocess.TimeoutExpired:
            pass
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / ("a.json" if self.calls == 1 else "b.json")).write_text("{}")
        if self.calls == 1:
            return None
        self.proc.kill()
        self.proc.wait()
        return 0


def test_a_job_that_outruns_its_kill_points_is_killed_at_its_first_change(tmp_path):
    h = Harness(LateWriterZygote(), tmp_path)
    h.run(Job("late-writer", "job_none", {}), seed=0, max_kills=2)
    assert h.tally.kills == 1 and h.tally.killed_mid_run == {"late-writer": 1}, h.tally.line()
    assert h.tally.problems == [] and h.tally.mismatches == []


def test_partial_state_needs_committed_files_short_of_the_result(tmp_path):
    """A kill before the first commit (temp files only), or after the last write, leaves nothing to resume."""
    from killharness import partial_state

    job = Job("j", "job_none", {}, normalise=("m.jsonl",))
    ref, out = tmp_path / "ref", tmp_path / "out"
    ref.mkdir()
    (ref / "a.json").write_text("{}")
    (ref / "m.jsonl").write_text('{"step": 0}\n{"step": 1}\n')
    assert not partial_state(ref, out, job)                     # nothing written
    out.mkdir()
    (out / ".a.json.tmp12").write_text("{")
    assert not partial_state(ref, out, job)                     # only a writer's temporary
    (out / "m.jsonl").write_text('{"step": 0}\n{"st')
    assert partial_state(ref, out, job)                         # a journal cut mid-line
    (out / "m.jsonl").write_text('{"step": 0}\n')
    assert partial_state(ref, out, job)                         # a committed prefix
    (out / "m.jsonl").write_text('{"step": 0}\n{"step": 1}\n')
    (out / "a.json").write_text("{}")
    (out / ".a.json.tmp12").unlink()
    assert not partial_state(ref, out, job)                     # the finished result


def test_harness_survives_a_child_that_exits_just_before_its_kill(tmp_path):
    """The race CI hit: the poll sees no exit message, the child exits and the zygote reaps it, then
    the harness kills a pid that is gone. The run counts as finished (code 0), and its exit message
    is consumed, so the next start reads a pid, not a stale exit."""
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()

    class LateZygote:               # the exit message arrives only after the poll that timed out
        def __init__(self):
            self.messages = []

        def start(self, job, kwargs, log):
            self.out, self.messages = Path(kwargs["out"]), [None, 0]
            return int(gone)

        def wait(self, timeout):
            if len(self.messages) == 2:           # the child's one write: the harness's kill point
                self.out.mkdir(parents=True)
                (self.out / "x.json").write_text("{}")
            return self.messages.pop(0)

    h = Harness(LateZygote(), tmp_path)
    job = Job("late", "job_none", {})
    assert h._run(job, tmp_path / "out", tmp_path / "log", kill_at=(1, 0.0)) == (0, 1)
    assert h.z.messages == []


# --- kill -9 and resume ------------------------------------------------------------------------

# Known gaps in other stages, found by this harness; the rows stay so a fix shows up as XPASS.
KNOWN_GAPS: dict[str, str] = {}


def _params(names):
    return [pytest.param(n, marks=pytest.mark.xfail(reason=KNOWN_GAPS[n], strict=False)) if n in KNOWN_GAPS else n
            for n in names]


@pytest.mark.parametrize("name", _params(JOBS))
def test_kill_and_resume(harness, inputs, name):
    job = JOBS[name](inputs)
    before = len(harness.tally.problems), len(harness.tally.mismatches)
    for seed in SEEDS:
        harness.run(job, seed, max_kills=2)
    new = harness.tally.problems[before[0]:] + harness.tally.mismatches[before[1]:]
    assert not new, "\n".join(new)


def test_summary(harness):
    t = harness.tally
    print("\n" + t.line())
    assert t.kills >= len(JOBS), t.line()
    assert all(t.killed_mid_run.get(n, 0) >= 1 for n in JOBS), t.line()   # each job was resumed mid-run
    findings = [f for f in t.problems + t.mismatches if not f.startswith(tuple(KNOWN_GAPS))]
    assert t.bytes_lost == 0 and t.half_written == 0 and not findings, t.line() + "\n" + "\n".join(findings)


@pytest.mark.slow
@pytest.mark.parametrize("name", _params(JOBS))
def test_kill_and_resume_many_seeds(harness, inputs, name):
    job = JOBS[name](inputs)
    before = len(harness.tally.problems), len(harness.tally.mismatches)
    for seed in range(10, 16):
        harness.run(job, seed, max_kills=3)
    new = harness.tally.problems[before[0]:] + harness.tally.mismatches[before[1]:]
    assert not new, "\n".join(new)
    print("\n" + harness.tally.line())


def test_atomic_save_safetensors_round_trips_and_leaves_one_file(tmp_path):
    """Tensors and metadata come back; the folder holds only the target (no safetensors `.tmpXXXXXX`)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from anatomist.fileio import atomic_save_safetensors

    t = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.tensor([1, 2], dtype=torch.int64)}
    atomic_save_safetensors(tmp_path / "x.safetensors", t, {"k": "v"})
    back = load_file(str(tmp_path / "x.safetensors"))
    assert torch.equal(back["a"], t["a"]) and torch.equal(back["b"], t["b"])
    with safe_open(str(tmp_path / "x.safetensors"), framework="pt") as f:
        assert f.metadata() == {"k": "v"}
    assert [p.name for p in tmp_path.iterdir()] == ["x.safetensors"]
