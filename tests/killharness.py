"""Kill-and-resume harness: SIGKILL long jobs at random points, resume them, compare with a clean run.

A job runs in a real child process and is killed with a real SIGKILL, so nothing in the job
(no `finally`, no atexit) softens the kill. Starting Python + torch + transformers costs seconds
per process on this machine, so children are forked from a *zygote*: this file run as a script
imports everything once, then forks one child per request (no torch work runs in the zygote
before a fork, so the fork is safe). The test process talks to the zygote over a pipe:

    {"job": name, "kwargs": {...}, "log": path}  →  {"pid": pid}  …  {"exit": status}

For each job, `Harness.run(job, seed)`:
  1. runs it uninterrupted into `ref/` (once per job), counting the changes it makes to its folder,
  2. on a fresh folder: starts it, SIGKILLs it a random time after a random one of those changes
     (progress, not wall clock: this host's speed varies), scans the folder (every committed file must parse; only temp files may be
     partial), remembers what was committed, and repeats up to `max_kills` times,
  3. lets a last run finish, then checks the result equals `ref/` (bytes, or a job's normaliser),
     that no temp file is left, and that every committed append-only artifact seen after a kill is
     still there byte for byte ("bytes lost" counts what is not),
  4. and that the job was really killed mid-run at least once: a SIGKILL exit that left committed
     files differing from `ref/` for the resume to start from. A job whose kill points are never
     reached (it finishes first, or writes everything at the end) would otherwise pass untested;
     when no random point hit, the seed starts over and kills the job at its first changes.

Jobs (child side) are the `job_*` functions below; each takes paths only.
"""

from __future__ import annotations

import json
import os
import random
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
TMP_RE = re.compile(r"^\..+\.tmp\d*$")   # anatomist.fileio.atomic_path's temporary names
VOLATILE = {"wall_s", "tokens_per_s", "steps_this_call", "elapsed_s", "seconds"}


# ---------------------------------------------------------------- scanning a folder

def is_tmp(path: Path) -> bool:
    """A writer's temporary: `.NAME.tmpPID` files, or anything inside a hidden `.NAME.tmp` folder
    (a folder written whole, then renamed, e.g. DPO's `.policy.tmp`)."""
    return bool(TMP_RE.match(path.name)) or any(p.startswith(".") and p.endswith(".tmp") for p in path.parts[:-1])


def parse_problem(path: Path, journal: bool = False) -> str | None:
    """Why `path` is not a complete file of its kind (None: it parses).

    `journal`: an append-only .jsonl whose last piece may be an unterminated line (the resume
    cuts it off); every terminated line must still parse."""
    data = path.read_bytes()
    name = path.name
    try:
        if name.endswith(".json"):
            json.loads(data)
        elif name.endswith(".jsonl"):
            lines = data.split(b"\n")
            if lines[-1] and not journal:
                return "last line is not terminated"
            for line in lines[:-1]:
                json.loads(line)
        elif name.endswith(".safetensors"):
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                for k in f.keys():
                    f.get_tensor(k)
        elif name.endswith(".parquet"):
            import pyarrow.parquet as pq

            pq.read_table(path)
        elif name.endswith(".pt"):
            import torch

            torch.load(path, weights_only=True)
        elif name.endswith(".html"):
            if not data.rstrip().endswith(b"</html>"):
                return "html does not end with </html>"
    except Exception as e:  # noqa: BLE001 — any failure to parse is the finding
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return None


def scan(folder: Path, journals: tuple[str, ...] = ()) -> tuple[list[str], list[Path]]:
    """(problems, temp files) of every file under `folder`."""
    problems, tmps = [], []
    if not folder.exists():
        return problems, tmps
    for p in sorted(folder.rglob("*")):
        if not p.is_file():
            continue
        if is_tmp(p):
            tmps.append(p)
            continue
        why = parse_problem(p, journal=p.name in journals)
        if why:
            problems.append(f"{p.relative_to(folder)}: {why}")
    return problems, tmps


def committed(folder: Path, patterns: tuple[str, ...], journals: tuple[str, ...]) -> dict[str, bytes]:
    """Bytes that must survive any later kill: immutable files (glob patterns) in full, and the
    terminated-lines prefix of append-only journals."""
    out = {}
    for pat in patterns:
        for p in folder.glob(pat):
            if p.is_file() and not is_tmp(p):
                out[str(p.relative_to(folder))] = p.read_bytes()
    for name in journals:
        for p in folder.rglob(name):
            data = p.read_bytes()
            out[str(p.relative_to(folder)) + "#prefix"] = data[:data.rfind(b"\n") + 1]
    return out


def is_volatile(key: str) -> bool:
    """A wall-clock field: `wall_s`, `grpo/rollout_s`, `head_refresh/s`, …"""
    return isinstance(key, str) and (key in VOLATILE or key.endswith(("seconds", "_s", "/s")))


def strip_volatile(obj):
    """JSON minus timing fields (wall clock differs between runs; nothing else may)."""
    if isinstance(obj, dict):
        return {k: strip_volatile(v) for k, v in obj.items() if not is_volatile(k)}
    if isinstance(obj, list):
        return [strip_volatile(v) for v in obj]
    return obj


def load_any(path: Path):
    """A .pt (weights_only) or .safetensors file as nested Python objects and tensors."""
    if path.name.endswith(".safetensors"):
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return {"metadata": f.metadata(), "tensors": {k: f.get_tensor(k) for k in f.keys()}}
    import torch

    return torch.load(path, weights_only=True)


def same_obj(a, b) -> bool:
    """Equal nested containers of tensors and JSON values (tensors: same dtype, shape and bits)."""
    import torch

    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        a, b = strip_volatile(a), strip_volatile(b)
        return a.keys() == b.keys() and all(same_obj(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_obj(x, y) for x, y in zip(a, b))
    return a == b


def compare_dirs(ref: Path, got: Path, skip: tuple[str, ...] = (), normalise: tuple[str, ...] = ()) -> list[str]:
    """Differences between two finished output folders: same files, same bytes (files named in
    `normalise` are compared as JSON without timing fields; files in `skip` only must exist)."""
    diffs = []
    names = lambda d: {str(p.relative_to(d)) for p in d.rglob("*") if p.is_file()}  # noqa: E731
    a, b = names(ref), names(got)
    diffs += [f"missing {n}" for n in sorted(a - b)] + [f"extra {n}" for n in sorted(b - a)]
    for n in sorted(a & b):
        if Path(n).name in skip:
            continue
        if n.endswith((".pt", ".safetensors")):  # torch.save's zip and safetensors' header order vary
            if not same_obj(*(load_any(d / n) for d in (ref, got))):
                diffs.append(f"differs {n}")
            continue
        x, y = (ref / n).read_bytes(), (got / n).read_bytes()
        if Path(n).name in normalise:   # the run folder's own path may appear inside: it differs by design
            x, y = x.replace(str(ref).encode(), b"<out>"), y.replace(str(got).encode(), b"<out>")
            x, y = ([json.dumps(strip_volatile(json.loads(line)), sort_keys=True) for line in v.splitlines()]
                    if n.endswith(".jsonl") else json.dumps(strip_volatile(json.loads(v)), sort_keys=True)
                    for v in (x, y))
        if x != y:
            diffs.append(f"differs {n}")
    return diffs


# ---------------------------------------------------------------- jobs (run inside a forked child)

def _cli(*argv: str) -> None:
    from anatomist.cli import main

    sys.argv = ["anatomist", *argv]
    main()


def job_capture_cli(data: str, model: str, out: str) -> None:
    """`anatomist capture` as a user types it (one shard at the end: coarse kill points)."""
    _cli("capture", "--data", data, "--model", model, "--layer", "1", "--out", out, "--batch-size", "2",
         "--keep", "all")


def job_capture(data: str, model: str, out: str) -> None:
    """Capture with a shard per sequence and batches of 3, so kills land between shards and
    inside a batch (the resumed run then starts mid-batch)."""
    from anatomist.capture import capture, items_from_pairs
    from anatomist.data import load_pairs
    from anatomist.models import load

    lm = load(model)
    capture(lm.model, lm.tokenizer, items_from_pairs(load_pairs(data)), out, 1, batch_size=3, shard_tokens=1,
            keep="all", progress=False)


def job_pool(data: str, model: str, sae: str, out: str) -> None:
    """The audit's pooling step (the latents store), a shard per sequence, batches of 3."""
    from anatomist.audit.pool import pool_features
    from anatomist.capture import items_from_pairs
    from anatomist.data import load_pairs
    from anatomist.models import load
    from anatomist.sae import load_sae

    lm = load(model)
    pool_features(lm.model, lm.tokenizer, load_sae(sae), items_from_pairs(load_pairs(data)), out,
                  batch_size=3, shard_rows=1, progress=False)


def job_sae_train(store: str, out: str) -> None:
    """`anatomist sae train` on an activation store: 300 steps, a checkpoint every 50."""
    _cli("sae", "train", "--data", store, "--out", out, "--tokens", "30K", "--batch-size", "100", "--width", "4x",
         "--k", "4", "--aux-k", "8", "--lr", "3e-3", "--seed", "3")


def job_mtp_train(model: str, out: str) -> None:
    """MTP head training (trunk frozen) on fixed token sequences: 60 steps, a checkpoint every 3."""
    import torch
    from transformers import AutoModelForCausalLM

    from anatomist.spec_decode.train import Samples, TrainConfig, train_head

    m = AutoModelForCausalLM.from_pretrained(model).eval()
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(0, m.config.vocab_size, (24,), generator=g).tolist() for _ in range(12)]
    samples = Samples(seqs, [6] * len(seqs))
    cfg = TrainConfig(loss="e2e_tv", gamma=2, steps=60, batch_size=4, lr=3e-3, warmup=5, draft_vocab=0, seed=1,
                      ckpt_every=3, chains_per_seq=6)
    train_head(m, samples, cfg, out, progress=False)


def job_organism(model: str, out: str, workers: int = 1) -> None:
    """Organism generation: the resumable generations cache, batches of 2 (sampled in `workers`
    processes, which a kill of this one orphans)."""
    from anatomist.models import load
    from anatomist.spec_decode.batched import GenRequest, GenSettings, generate

    lm = load(model)
    requests = [GenRequest(f"r{i}", ({"role": "user", "content": f"Tell me about topic {i}."},),
                           prefix="Sure" if i % 3 == 0 else "", max_new_tokens=6 + 2 * (i % 2)) for i in range(12)]
    generate(lm.model, lm.tokenizer, requests, GenSettings(model="tiny", temperature=1.0, batch_size=2, seed=5),
             cache_dir=out, progress=False, workers=workers)


MONITOR_ARGS = ("--monitor-every", "3", "--monitor-detector", "length", "--monitor-detector", "emoji",
                "--monitor-samples", "4", "--monitor-max-new-tokens", "4")   # paired (the default): anchors resume too


def job_dpo(data: str, model: str, out: str, prompts: str = "") -> None:
    """`anatomist dpo`: 12 steps on the top block, a checkpoint every 2; its state cache inside `out`;
    with `prompts`, monitored every 3 steps (screen detectors: the tiny model has no SAE)."""
    monitor = ("--monitor-prompts", prompts, *MONITOR_ARGS) if prompts else ()
    _cli("dpo", "--data", data, "--out", out, "--model", model, "--steps", "12", "--batch-size", "2",
         "--grad-accum", "1", "--train-layers", "1", "--ckpt-every", "2", "--cache-dir", f"{out}/cache",
         "--max-length", "64", *monitor)


def job_grpo(model: str, out: str, head: str = "", refresh_every: int = 0, monitor: bool = False) -> None:
    """`anatomist grpo`: 6 steps of 2 problems × 2 samples on the top block; plain rollouts, or with
    `head` speculative ones (MTP draft + rejection sampling), the head fine-tuned every
    `refresh_every` steps (its weights then live in the checkpoint); `monitor`: watched every 3 steps
    on held-out task problems."""
    spec = ["--spec", "mtp", "--head", head, "--gamma", "2"] if head else ["--spec", "none"]
    _cli("grpo", "--out", out, "--model", model, *spec, "--steps", "6", "--prompts", "2", "--group", "2",
         "--max-new-tokens", "8", "--train-layers", "1", "--lr", "1e-3", "--refresh-head-every", str(refresh_every),
         *(("--monitor-per-topic", "1", *MONITOR_ARGS) if monitor else ()))


@dataclass(frozen=True)
class Job:
    name: str
    fn: str                                   # a job_* function above
    kwargs: dict                              # paths; "out" is added per run
    immutable: tuple[str, ...] = ()           # glob patterns of files never rewritten once written
    journals: tuple[str, ...] = ()            # .jsonl files appended line by line (may end in a partial line)
    append_only: tuple[str, ...] = ()         # journals whose terminated lines are never rewritten
    normalise: tuple[str, ...] = ()           # JSON files compared without timing fields
    skip: tuple[str, ...] = ()                # files whose bytes may differ (must exist)


# ---------------------------------------------------------------- the zygote (this file as a script)

def _child(req: dict) -> int:
    log = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.environ.update(req.get("env", {}))
    import torch

    torch.set_num_threads(1)
    try:
        globals()[req["job"]](**req["kwargs"])
        return 0
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: BLE001
        import traceback

        traceback.print_exc()
        return 1


def zygote() -> None:
    import torch  # noqa: F401 — imported once here, inherited by every fork
    import transformers  # noqa: F401
    import transformers.models.llama.modeling_llama  # noqa: F401 — transformers imports these lazily
    from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast  # noqa: F401

    import anatomist.audit.pool  # noqa: F401
    import anatomist.capture  # noqa: F401
    import anatomist.cli  # noqa: F401
    import anatomist.spec_decode.batched  # noqa: F401
    import anatomist.sae.train  # noqa: F401
    import anatomist.spec_decode.train  # noqa: F401
    try:
        import anatomist.train.dpo  # noqa: F401 — a newer stage; the harness runs without it
    except ImportError:
        pass

    out = sys.stdout
    out.write(json.dumps({"ready": True}) + "\n")
    out.flush()
    for line in sys.stdin:
        req = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = _child(req)
            finally:
                os._exit(code)
        out.write(json.dumps({"pid": pid}) + "\n")
        out.flush()
        _, status = os.waitpid(pid, 0)
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        out.write(json.dumps({"exit": code}) + "\n")
        out.flush()


class Zygote:
    """The test side of the zygote: start children, kill them, collect exit codes."""

    def __init__(self, env: dict | None = None, start_timeout: float = 120.0):
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--zygote"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, env={**os.environ, **(env or {})})
        self._buf = b""
        msg = self._read(start_timeout)
        assert msg == {"ready": True}, msg

    def _read(self, timeout: float | None) -> dict | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                return None
            chunk = os.read(fd, 4096)
            if not chunk:
                raise RuntimeError(f"zygote exited (code {self.proc.poll()})")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def start(self, job: str, kwargs: dict, log: Path) -> int:
        self.proc.stdin.write((json.dumps({"job": job, "kwargs": kwargs, "log": str(log)}) + "\n").encode())
        self.proc.stdin.flush()
        return self._read(60.0)["pid"]

    def wait(self, timeout: float | None) -> int | None:
        """The child's exit code (negative: killed by that signal), or None on timeout."""
        msg = self._read(timeout)
        return None if msg is None else msg["exit"]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


# ---------------------------------------------------------------- the harness

@dataclass
class Tally:
    jobs: int = 0
    runs: int = 0
    kills: int = 0
    resumes: int = 0            # runs that started on a folder a kill had left behind
    finished_early: int = 0     # runs that ended before their kill time
    killed_mid_run: dict[str, int] = field(default_factory=dict)   # per job: kills that left partial state
    bytes_lost: int = 0
    half_written: int = 0       # committed files that did not parse after a kill
    mismatches: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)   # wall time per job, all its runs

    def line(self) -> str:
        return (f"kill-and-resume: {self.jobs} job runs, {self.kills} SIGKILLs, {self.resumes} resumes, "
                f"{self.finished_early} runs finished before their kill, kills leaving partial state per job "
                f"{self.killed_mid_run}, bytes lost {self.bytes_lost}, "
                f"half-written files {self.half_written}, results differing from an uninterrupted run "
                f"{len(self.mismatches)}; seconds per job: "
                + ", ".join(f"{k} {v:.1f}" for k, v in self.seconds.items()))


def folder_state(folder: Path) -> frozenset:
    """What a poll can see of a folder: (path, size, mtime) of every file."""
    if not folder.exists():
        return frozenset()
    out = set()
    # os.walk, not rglob: a folder renamed away mid-scan (e.g. .policy.tmp → policy) is skipped,
    # where rglob raises
    for root, _, files in os.walk(folder):
        for name in files:
            p = os.path.join(root, name)
            try:
                st = os.stat(p)
            except FileNotFoundError:  # renamed away between listing and stat
                continue
            out.add((p, st.st_size, st.st_mtime_ns))
    return frozenset(out)


def partial_state(ref: Path, out: Path, job: "Job") -> bool:
    """Did a kill leave something to resume from: committed (non-temp) files that are not yet the
    finished result? A kill after the last write, or before the first commit, tests no resume."""
    if not out.exists() or all(is_tmp(p) for p in out.rglob("*") if p.is_file()):
        return False
    try:
        return bool(compare_dirs(ref, out, skip=job.skip, normalise=job.normalise))
    except Exception:  # noqa: BLE001 — unreadable (a journal's unterminated line): not the finished result
        return True


def _kill(pid: int) -> None:
    """SIGKILL a child the zygote may already have reaped: it can exit between the harness's poll and
    the kill. Its exit message is still in the zygote's pipe, so the caller reads it next either way
    (leaving it there would hand it to the next `start` as if it were a pid)."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class Harness:
    """Kill points are chosen by progress, not wall clock (this host's speed varies several-fold
    under load): a run is killed a random time after the k-th change the harness sees in its
    output folder, k drawn from the changes an uninterrupted run showed."""

    def __init__(self, zygote: Zygote, root: Path, timeout: float = 120.0):
        self.z, self.root, self.timeout = zygote, root, timeout
        self.tally = Tally()
        self.refs: dict[str, tuple[Path, int, float]] = {}   # job → (folder, changes seen, mean gap in s)

    def _run(self, job: Job, out: Path, log: Path, kill_at: tuple[int, float] | None = None) -> tuple[int, int]:
        """Run `job` into `out`; with kill_at = (k, extra), SIGKILL it `extra` s after the k-th folder
        change. Returns (exit code: negative for a signal, changes seen)."""
        t0 = time.monotonic()
        pid = self.z.start(job.fn, {**job.kwargs, "out": str(out)}, log)
        self.tally.runs += 1
        state, changes, deadline = folder_state(out), 0, None
        try:
            while True:
                code = self.z.wait(0.005)
                now = folder_state(out)
                if now != state:
                    state, changes = now, changes + 1
                    if kill_at is not None and deadline is None and changes >= kill_at[0]:
                        deadline = time.monotonic() + kill_at[1]
                if code is not None:
                    return code, changes
                if deadline is not None and time.monotonic() >= deadline:
                    _kill(pid)
                    return self.z.wait(30.0), changes
                if time.monotonic() - t0 > self.timeout:
                    _kill(pid)
                    self.z.wait(30.0)
                    raise AssertionError(f"{job.name}: no result within {self.timeout} s (log: {log})")
        finally:
            self.tally.seconds[job.name] = self.tally.seconds.get(job.name, 0.0) + time.monotonic() - t0

    def reference(self, job: Job) -> tuple[Path, int, float]:
        if job.name not in self.refs:
            out = self.root / job.name / "ref"
            log = self.root / job.name / "ref.log"
            out.parent.mkdir(parents=True, exist_ok=True)
            t0 = time.monotonic()
            code, changes = self._run(job, out, log)
            total = time.monotonic() - t0
            assert code == 0, f"{job.name}: reference run failed ({code}): {log.read_text()[-2000:]}"
            self.refs[job.name] = (out, changes, total / (changes + 1))
            print(f"{job.name}: reference {total:.2f} s, {changes} folder changes seen")
        return self.refs[job.name]

    def _kills(self, job: Job, ref: Path, out: Path, log: Path, kill_points: list[tuple[int, float]], label: str
               ) -> tuple[int, dict[str, bytes]]:
        """Run `job` into `out`, SIGKILLed at each of `kill_points` in turn that it reaches, then let a
        last run finish. → (kills that left partial state, committed bytes seen after kills)."""
        seen: dict[str, bytes] = {}
        resumed, mid_run = False, 0
        for kill_at in kill_points:
            code, _ = self._run(job, out, log, kill_at=kill_at)
            self.tally.resumes += resumed
            if code == -signal.SIGKILL:
                self.tally.kills += 1
                resumed = True
                mid_run += partial_state(ref, out, job)
                problems, _ = scan(out, job.journals)
                self.tally.half_written += len(problems)
                self.tally.problems += [f"{label}: after a kill: {p}" for p in problems]
                seen.update(committed(out, job.immutable, job.append_only))
                continue
            assert code == 0, f"{job.name}: run failed with exit code {code}: {log.read_text()[-3000:]}"
            self.tally.finished_early += 1
            break
        else:
            code, _ = self._run(job, out, log)
            self.tally.resumes += resumed
            assert code == 0, f"{job.name}: resumed run failed ({code}): {log.read_text()[-3000:]}"
        return mid_run, seen

    def run(self, job: Job, seed: int, max_kills: int = 2) -> None:
        """Kill `job` up to `max_kills` times at random points (under `seed`), resume, compare."""
        ref, n_changes, gap = self.reference(job)
        rng = random.Random(f"{job.name}:{seed}")
        out = self.root / job.name / f"seed{seed}"
        log = self.root / job.name / f"seed{seed}.log"
        self.tally.jobs += 1
        # After the k-th change (k ≥ 1: not during start-up, where a kill tests nothing), plus a
        # random part of a typical gap between changes, so kills land mid-write as well as between.
        # k stays in the first half of the reference run's changes: on a fast, quiet machine a later
        # kill point is often reached only as the job exits, and the kill then tests nothing.
        points = [(rng.randint(1, max(1, n_changes // 2)), rng.uniform(0.0, gap)) for _ in range(max_kills)]
        mid_run, seen = self._kills(job, ref, out, log, points, f"{job.name} seed {seed}")
        if not mid_run:
            # Every random point came too late: after the last write of a job that writes little and
            # late (one shard at the end), or during its shutdown (organism workers). Start over on a
            # fresh folder and kill it the moment its 1st change shows, then its 2nd, its 3rd (the 1st
            # may be a temp file only).
            shutil.rmtree(out, ignore_errors=True)
            early = [(k, 0.0) for k in range(1, max(1, min(3, n_changes)) + 1)]
            mid_run, seen = self._kills(job, ref, out, log, early, f"{job.name} seed {seed}")
        self.tally.killed_mid_run[job.name] = self.tally.killed_mid_run.get(job.name, 0) + mid_run
        if not mid_run:
            self.tally.problems.append(f"{job.name} seed {seed}: never killed mid-run (no SIGKILL left partial "
                                       f"state, even at its first changes): the resume was not tested")
        problems, tmps = scan(out, job.journals)
        self.tally.problems += [f"{job.name} seed {seed}: final: {p}" for p in problems]
        self.tally.problems += [f"{job.name} seed {seed}: temp file left: {p.name}" for p in tmps]
        for name, data in seen.items():
            path = out / name.removesuffix("#prefix")
            now = path.read_bytes() if path.is_file() else b""
            if not (now.startswith(data) if name.endswith("#prefix") else now == data):
                self.tally.bytes_lost += len(data)
                self.tally.problems.append(f"{job.name} seed {seed}: committed {name} changed after resume")
        diffs = compare_dirs(ref, out, skip=job.skip, normalise=job.normalise)
        self.tally.mismatches += [f"{job.name} seed {seed}: {d}" for d in diffs]
        for d in diffs:
            if d.startswith("differs "):
                self.tally.bytes_lost += (ref / d.removeprefix("differs ")).stat().st_size


if __name__ == "__main__" and sys.argv[1:] == ["--zygote"]:
    zygote()
