"""`anatomist model …`: inspect the models anatomist can load."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from anatomist.models.loading import DEFAULT_MODEL

app = typer.Typer(help="Inspect models (HF ids, local folders, .gguf files, or the offline default).",
                  no_args_is_help=True)


def describe(model, tokenizer, source: str) -> dict:
    """Facts a user checks before a run: size, shape, template, where the weights are."""
    cfg = model.config
    return {
        "source": source,
        "class": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "layers": cfg.num_hidden_layers,
        "d_model": cfg.hidden_size,
        "heads": f"{cfg.num_attention_heads} ({getattr(cfg, 'num_key_value_heads', cfg.num_attention_heads)} kv)",
        "vocab": cfg.vocab_size,
        "tied_embeddings": bool(getattr(cfg, "tie_word_embeddings", False)),
        "chat_template": bool(getattr(tokenizer, "chat_template", None)),
        "eos_token": tokenizer.eos_token,
    }


@app.command()
def info(name: str = typer.Argument(DEFAULT_MODEL, help="HF id, local folder, .gguf file or alias.")) -> None:
    """Load a model and print its architecture facts.

    Example: anatomist model info smollm2-135m-instruct

    (the offline default, SmolLM2-135M-Instruct; the same as `anatomist model info`)
    """
    from anatomist.models.loading import load

    facts = describe(*load(name))
    table = Table(title=name, show_header=False)
    for key, value in facts.items():
        table.add_row(key, f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value))
    Console().print(table)
