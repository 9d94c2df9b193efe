"""`anatomist eval`: thin over `anatomist.evaluate.run.run_eval` (the output folder is described there)."""

from __future__ import annotations

from pathlib import Path

import typer

from anatomist.data.cli import on_bad_row_option, read_pairs
from anatomist.evaluate.run import run_eval
from anatomist.models.loading import DEFAULT_MODEL
from anatomist.options import default


def evaluate(
    model: str = typer.Option(DEFAULT_MODEL, "--model", help="The model to evaluate (HF id, folder, .gguf, alias)."),
    prompts: Path = typer.Option(..., "--prompts", help="Held-out prompts (jsonl: id, topic, prompt messages)."),
    out: Path = typer.Option(..., "--out", help="Output folder (rerun to resume)."),
    audit: Path = typer.Option(None, "--audit", help="Audit folder: adds its concept scores c_<k> (its model + SAE)."),
    base: str = typer.Option(None, "--base", help="The model before training: evaluated under the same seeds; "
                                                  "reference of the implicit reward."),
    pairs: Path = typer.Option(None, "--pairs", help="Held-out preference pairs for preference accuracy."),
    on_bad_row: str = on_bad_row_option(),
    safety: bool = typer.Option(default(run_eval, "safety"), "--safety/--no-safety",
                                help="Harmful compliance (StrongREJECT, HarmBench) and XSTest over-refusal."),
    safety_exclude: Path = typer.Option(None, "--safety-exclude",
                                        help="Preference file (the training data) whose prompts --safety skips."),
    samples_per_prompt: int = typer.Option(default(run_eval, "samples_per_prompt"), "--samples", min=1,
                                           help="Generations per prompt."),
    max_new_tokens: int = typer.Option(default(run_eval, "max_new_tokens"), "--max-new-tokens", min=1),
    temperature: float = typer.Option(default(run_eval, "temperature"), "--temperature"),
    batch_size: int = typer.Option(default(run_eval, "batch_size"), "--batch-size", min=1),
    seed: int = typer.Option(default(run_eval, "seed"), "--seed"),
    limit: int = typer.Option(None, "--limit", min=1, help="Only the first N prompts of each topic."),
    safety_n: int = typer.Option(default(run_eval, "safety_n"), "--safety-n", min=1, help="Prompts per safety set."),
    beta: float = typer.Option(default(run_eval, "beta"), "--beta",
                               help="β of the implicit reward (scales margins, not accuracy)."),
    n_boot: int = typer.Option(default(run_eval, "n_boot"), "--n-boot", min=10),
) -> None:
    """Sample from MODEL (and --base) on held-out prompts; score concepts, traits, refusals.

    Example: anatomist eval --model runs/dpo/policy --base smollm2-135m-instruct --prompts runs/organism/heldout_prompts.jsonl --audit runs/audit --pairs runs/organism/heldout_pairs.jsonl --out runs/eval

    Add --safety --safety-exclude runs/organism/train.jsonl for harmful compliance and over-refusal.
    """
    held_pairs = None if pairs is None else read_pairs(pairs, on_bad_row=on_bad_row)   # before any model loads
    folder = run_eval(model, prompts, out, audit=audit, base=base, pairs=held_pairs, safety=safety,
                      safety_exclude=safety_exclude,
                      samples_per_prompt=samples_per_prompt, max_new_tokens=max_new_tokens, temperature=temperature,
                      batch_size=batch_size, seed=seed, limit=limit, safety_n=safety_n, beta=beta, n_boot=n_boot)
    typer.echo(f"report: {folder / 'eval.html'}")
