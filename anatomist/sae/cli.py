"""`anatomist sae train|eval|default`: train SAEs on residual activations, evaluate them."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from anatomist.capture import capture
from anatomist.data.cli import on_bad_row_option
from anatomist.errors import AnatomistError
from anatomist.models.loading import DEFAULT_MODEL
from anatomist.options import default
from anatomist.sae.config import TrainConfig
from anatomist.sae.default import Recipe
from anatomist.sae.train import sae_config

app = typer.Typer(help="Sparse autoencoders on the residual stream (SAELens format).", no_args_is_help=True)
console = Console()


def parse_count(text: str) -> int:
    """'2M' → 2_000_000, '500k' → 500_000, '1e6' → 1_000_000."""
    m = re.fullmatch(r"\s*([0-9.e+]+)\s*([kKmMgG]?)\s*", str(text))
    if not m:
        raise AnatomistError(f"expected a count like 2M, 500K or 100000, got {text!r}")
    try:
        return int(float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[m.group(2).lower()])
    except ValueError:
        raise AnatomistError(f"expected a count like 2M, 500K or 100000, got {text!r}") from None


def is_activation_store(path: Path) -> bool:
    return (path / "capture.json").is_file()


def _items(data: list[Path], max_pairs: int | None, on_bad_row: str):
    from anatomist.capture import items_from_pairs
    from anatomist.data.cli import read_pairs

    items = []
    for path in data:
        pairs = list(read_pairs(path, on_bad_row=on_bad_row))
        items += items_from_pairs(pairs[:max_pairs] if max_pairs else pairs)
    return items


def _capture(model: str, items, folder: Path, layer: int, max_length: int, keep: str, lm=None):
    from anatomist.models import load

    lm = lm or load(model)
    return capture(lm.model, lm.tokenizer, items, folder, layer, model_name=model, max_length=max_length,
                   keep=keep, shard_tokens=1 << 15)


@app.command()
def train(
    data: list[Path] = typer.Option(..., "--data", help="Preference dataset file(s) to capture from, or an "
                                    "activation store folder (from `anatomist capture`). Repeatable."),
    out: Path = typer.Option(Path("runs/sae"), "--out", help="Output folder: SAE (SAELens format), "
                             "training.json, checkpoints; rerun the same command to resume."),
    model: str = typer.Option(DEFAULT_MODEL, "--model", help="HF id, local folder, .gguf, or alias."),
    layer: int = typer.Option(default(Recipe, "layer"), "--layer", help="Residual stream after this block (0-based)."),
    tokens: str = typer.Option(str(default(TrainConfig, "tokens")), "--tokens",
                               help="Training tokens (e.g. 2M; repeats the data if it holds fewer)."),
    width: str = typer.Option(default(sae_config, "width"), "--width",
                              help="Latents: a multiple of d_model ('8x') or a count."),
    k: int = typer.Option(default(sae_config, "k"), "--k", help="Active latents per token (TopK / BatchTopK)."),
    architecture: str = typer.Option(default(sae_config, "architecture"), "--arch",
                                     help="batchtopk | topk | jumprelu | relu."),
    batch_size: int = typer.Option(default(TrainConfig, "batch_size"), "--batch-size",
                                   help="Tokens per optimizer step."),
    lr: float = typer.Option(default(TrainConfig, "lr"), "--lr", help="Adam learning rate."),
    aux_k: int = typer.Option(default(TrainConfig, "aux_k"), "--aux-k",
                              help="Dead latents in the aux-k loss (0: off)."),
    seed: int = typer.Option(default(TrainConfig, "seed"), "--seed"),
    max_pairs: int = typer.Option(None, "--max-pairs", help="Use the first N pairs of each dataset file."),
    max_length: int = typer.Option(default(capture, "max_length"), "--max-length",
                                   help="Tokens per sequence when capturing."),
    keep: str = typer.Option(default(capture, "keep"), "--keep",
                             help="Capture 'all' tokens or only 'response' tokens."),
    ce_sequences: int = typer.Option(0, "--ce-sequences", help="Hold out the last N sequences of the dataset "
                                     "files and report CE loss recovered on them (0: off)."),
    eval_every: int = typer.Option(0, "--eval-every", help="Also report CE loss recovered every N steps."),
    on_bad_row: str = on_bad_row_option(),
) -> None:
    """Train an SAE (capturing activations first when --data is a dataset file).

    Example: anatomist sae train --data runs/acts --out runs/sae --tokens 2M
    """
    from anatomist.sae.train import train_sae

    lm, held = None, []
    if len(data) == 1 and is_activation_store(data[0]):
        from anatomist.capture import ActivationStore

        if ce_sequences:
            raise AnatomistError("--ce-sequences needs dataset files in --data (the store has no text)")
        store = ActivationStore(data[0])
        model, layer = store.settings.get("model") or model, int(store.settings["layer"])
    else:
        from anatomist.models import load

        if any(is_activation_store(p) for p in data):
            raise AnatomistError("pass either one activation store folder or dataset files, not both")
        items = _items(data, max_pairs, on_bad_row)
        if ce_sequences:
            if ce_sequences >= len(items):
                raise AnatomistError(f"--ce-sequences {ce_sequences} leaves no training data ({len(items)} sequences)")
            items, held = items[:-ce_sequences], items[-ce_sequences:]
        lm = load(model)
        store = _capture(model, items, out / "acts", layer, max_length, keep, lm=lm)
    eval_fn = None
    if held:
        from anatomist.sae.evaluate import ce_recovered

        def eval_fn(sae):
            res = ce_recovered(sae, lm.model, lm.tokenizer, held, max_length=max_length, progress=False)
            return {"ce_recovered": res["ce_recovered"], "ce_sae": res["ce_sae"]}
    tc = TrainConfig(tokens=parse_count(tokens), batch_size=batch_size, lr=lr, aux_k=aux_k, seed=seed)
    cfg = sae_config(store.d_model, width=width, k=k, architecture=architecture, model=model, layer=layer)
    train_sae(store, cfg, out, train=tc, eval_fn=eval_fn, eval_every=eval_every)
    final = json.loads((out / "training.json").read_text())["final"]
    ce = f", CE loss recovered {final['ce_recovered']:.1%} (held-out)" if "ce_recovered" in final else ""
    console.print(f"SAE saved to [bold]{out}[/] (SAELens format): fvu {final['fvu']:.3f}, "
                  f"L0 {final['l0']:.1f}, dead {final['dead_frac']:.1%} (last training batch){ce}")


@app.command("eval")
def eval_(
    sae_path: Path = typer.Argument(..., help="SAE folder (anatomist or SAELens format)."),
    data: list[Path] = typer.Option(..., "--data", help="Held-out dataset file(s), or an activation store folder."),
    model: str = typer.Option(None, "--model", help="Model for CE loss recovered (default: the SAE's model)."),
    ce_sequences: int = typer.Option(64, "--ce-sequences", help="Sequences for CE loss recovered (0: skip)."),
    max_pairs: int = typer.Option(None, "--max-pairs", help="Use the first N pairs of each dataset file."),
    max_length: int = typer.Option(default(capture, "max_length"), "--max-length"),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON."),
    on_bad_row: str = on_bad_row_option(),
) -> None:
    """Print FVU, L0, dead latents and CE loss recovered of an SAE on held-out data.

    Example: anatomist sae eval runs/sae --data runs/organism/heldout_pairs.jsonl --ce-sequences 32
    """
    from anatomist.sae.evaluate import evaluate_sae
    from anatomist.sae.io import load_sae

    sae = load_sae(sae_path)
    model = model or sae.cfg.model or DEFAULT_MODEL
    lm, items = None, None
    if ce_sequences or not (len(data) == 1 and is_activation_store(data[0])):
        from anatomist.models import load

        lm = load(model)
    with tempfile.TemporaryDirectory(prefix="anatomist-sae-eval-") as tmp:
        if len(data) == 1 and is_activation_store(data[0]):
            store = data[0]
        else:
            if sae.cfg.layer is None:
                raise AnatomistError(f"{sae_path}: the SAE config names no layer")
            items = _items(data, max_pairs, on_bad_row)
            store = _capture(model, items, Path(tmp) / "acts", sae.cfg.layer, max_length, "all", lm=lm)
        if ce_sequences:
            if items is None:
                raise AnatomistError("CE loss recovered needs dataset files in --data (or pass --ce-sequences 0)")
            items = items[:ce_sequences]
        res = evaluate_sae(sae, store, model=lm.model if ce_sequences else None,
                           tokenizer=lm.tokenizer if lm else None, items=items, max_length=max_length)
    if as_json:
        print(json.dumps(res, indent=2))
        return
    table = Table(title=f"SAE {sae_path.name}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("FVU", f"{res['fvu']:.4f}")
    table.add_row("L0", f"{res['l0']:.1f}")
    table.add_row("dead latents", f"{res['dead_frac']:.1%}")
    table.add_row("tokens", f"{res['n_tokens']:,}")
    if "ce_recovered" in res:
        table.add_row("CE loss recovered", f"{res['ce_recovered']:.1%}")
        table.add_row("CE clean / SAE / zero", f"{res['ce_clean']:.3f} / {res['ce_sae']:.3f} / {res['ce_zero']:.3f}")
    console.print(table)


@app.command("default")
def default_(model: str = typer.Option(DEFAULT_MODEL, "--model")) -> None:
    """Train (once) and print the path of the default SAE for the model.

    Example: anatomist sae default
    """
    from anatomist.sae.default import default_sae

    print(default_sae(model))
