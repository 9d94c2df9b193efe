"""`anatomist capture`: residual activations of a preference dataset, to resumable shards."""

from __future__ import annotations

from pathlib import Path

import typer

from anatomist.data.cli import on_bad_row_option
from anatomist.models.loading import DEFAULT_MODEL


def capture(
    data: Path = typer.Option(..., "--data", help="Preference file (jsonl/json/parquet/csv; TRL, HH or ShareGPT)."),
    out: Path = typer.Option(..., "--out", help="Output folder for the shards (rerun to resume)."),
    model: str = typer.Option(DEFAULT_MODEL, "--model", help="HF id, local folder, .gguf file or alias."),
    layer: int = typer.Option(15, "--layer", help="Block index (0-based; negative counts from the end)."),
    keep: str = typer.Option("response", "--keep", help="Store 'response' tokens only, or 'all' tokens."),
    batch_size: int = typer.Option(8, "--batch-size", min=1),
    max_length: int = typer.Option(256, "--max-length", min=2, help="Tokens per sequence (prompt cut from the left)."),
    limit: int = typer.Option(None, "--limit", min=1, help="Use only the first N pairs."),
    dtype: str = typer.Option("float32", "--dtype", help="Storage dtype: float32, float16 or bfloat16."),
    data_format: str = typer.Option("auto", "--format", help="Data format (auto-detected by default)."),
    on_bad_row: str = on_bad_row_option(),
) -> None:
    """Capture residual-stream activations after block LAYER for both sides of every pair.

    Example: anatomist capture --data runs/organism/train.jsonl --layer 15 --out runs/acts --limit 300
    """
    from anatomist.capture.run import capture as run_capture, items_from_pairs
    from anatomist.data.cli import read_pairs
    from anatomist.models.loading import load

    pairs = read_pairs(data, format=data_format, on_bad_row=on_bad_row, limit=limit)
    loaded = load(model)
    store = run_capture(loaded.model, loaded.tokenizer, items_from_pairs(pairs), out, layer, model_name=model,
                        batch_size=batch_size, max_length=max_length, keep=keep, dtype=dtype)
    typer.echo(f"{store.n_sequences:,} sequences, {store.n_tokens:,} tokens × {store.d_model} "
               f"at layer {store.settings['layer']} → {out}")
