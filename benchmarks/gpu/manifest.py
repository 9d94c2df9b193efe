"""Bookkeeping for the GPU scripts (truth.sh, bebop.sh): the manifest of what came back, and the
samples-per-prompt plan of the truth run. Standard library + torch only (imported lazily).

    python benchmarks/gpu/manifest.py --out $OUT --stages stages.tsv --seed 7 --kind truth --started T0
    python benchmarks/gpu/manifest.py --plan-samples ORGANISM_DIR --seconds 300     # prints "S P"
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FROZEN_AT = "bf69a15"   # the commit that froze the first-order predictor first_adam (issue 21)
SCRIPTS = ("benchmarks/gpu/truth.sh", "benchmarks/gpu/bebop.sh", "benchmarks/gpu/setup.sh",
           "benchmarks/predict_vs_actual.py", "benchmarks/spec_speed.py", "benchmarks/entropy_slope.py",
           "benchmarks/grpo_step.py", "benchmarks/spec_heads.py")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None   # the device's copy of the tree may have no .git


def plan_samples(organism: Path, seconds: float, share: float = 0.45, lo: int = 4, hi: int = 32) -> tuple[int, int]:
    """(base, post) samples per held-out prompt so that the evaluation's sampling takes about `share`
    of `seconds` at the organism build's measured rate (generations per second, model load
    included, so the plan errs short); base is even (two disjoint halves), post half of it."""
    build = json.loads((organism / "build.json").read_text())
    rate = (build["n_generations"] + build.get("n_heldout_generations", 0)) / max(build["seconds"], 1e-9)
    n_prompts = sum(1 for line in (organism / "heldout_prompts.jsonl").open() if line.strip())
    base = int(share * seconds * rate / (1.5 * n_prompts))      # base + post = 1.5 × base generations
    base = max(lo, min(hi, base - base % 2))
    return base, max(2, base // 2)


def read_stages(path: Path) -> list[dict]:
    rows = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        name, rc, secs, budget = (line.split("\t") + ["", "", ""])[:4]
        rows.append({"stage": name, "exit": rc, "seconds": secs, "budget_s": budget})
    return rows


def manifest(out: Path, stages: Path, *, seed: int, kind: str, tiny: bool, device: str, started: float) -> dict:
    import torch

    head = git("rev-parse", "HEAD")
    frozen = git("merge-base", "--is-ancestor", FROZEN_AT, "HEAD") is not None if head else None
    if kind == "truth":
        run = ("rehearsal (tiny sizes; measures nothing)" if tiny else
               f"validation run of the frozen first-order predictor first_adam (frozen at {FROZEN_AT})"
               if frozen is not False else "design run (the predictor is not frozen in this tree)")
    else:
        run = "rehearsal (tiny sizes; measures nothing)" if tiny else "measurement run"
    files = {p.name: {"sha256": sha256(p), "bytes": p.stat().st_size}
             for p in sorted(out.iterdir()) if p.is_file() and p.name != "manifest.json"}
    return {
        "kind": kind, "run": run, "seed": seed, "device": device,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__, "cuda": torch.version.cuda, "python": sys.version.split()[0],
        "transformers": __import__("transformers").__version__,
        "commit": head, "dirty": bool(git("status", "--porcelain")) if head else None,
        "scripts_sha256": {s: sha256(REPO / s) for s in SCRIPTS if (REPO / s).is_file()},
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "elapsed_s": round(time.time() - started, 1), "stages": read_stages(stages), "files": files,
        "env": {k: os.environ[k] for k in ("SAMPLES", "POST_SAMPLES", "TOTAL", "TINY") if k in os.environ},
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plan-samples", type=Path, metavar="ORGANISM_DIR")
    ap.add_argument("--seconds", type=float, default=300.0)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--stages", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kind", choices=("truth", "bebop"), default="truth")
    ap.add_argument("--tiny", type=int, default=0)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--started", type=float, default=time.time())
    args = ap.parse_args(argv)
    if args.plan_samples is not None:
        print(*plan_samples(args.plan_samples, args.seconds))
        return
    m = manifest(args.out, args.stages, seed=args.seed, kind=args.kind, tiny=bool(args.tiny), device=args.device,
                 started=args.started)
    tmp = args.out / ".manifest.json.tmp"
    tmp.write_text(json.dumps(m, indent=1))
    os.replace(tmp, args.out / "manifest.json")   # atomic: a cut-off run leaves the last whole manifest
    print(json.dumps(m, indent=1))


if __name__ == "__main__":
    main()
