"""`anatomist shape export` (a shaped TRL dataset) and `anatomist steer` (generate along a concept)."""

from __future__ import annotations

from pathlib import Path

import typer

from anatomist.data.cli import on_bad_row_option
from anatomist.errors import AnatomistError
from anatomist.models.loading import DEFAULT_MODEL

app = typer.Typer(help="Shape what DPO learns from an audit (reward shaping, inoculation, TRL export).\n\n"
                       "Example: anatomist shape export --audit runs/audit --data runs/organism/train.jsonl "
                       "--concept 3 --lam -1 --out runs/shaped.jsonl", no_args_is_help=True)


@app.command("export")
def export(
    audit_dir: Path = typer.Option(..., "--audit", help="Audit folder (from `anatomist audit`)."),
    data: Path = typer.Option(..., "--data", help="The audited preference file (matched by id, texts checked)."),
    out: Path = typer.Option(..., "--out", help="Output: a .jsonl / .parquet file, or a `datasets` folder."),
    concept: list[str] = typer.Option([], "--concept", help="Cluster id, label, or length (response length); repeat."),
    lam: list[float] = typer.Option([], "--lam", help="λ per --concept: < 0 suppresses, > 0 amplifies."),
    beta: float = typer.Option(0.1, "--beta", help="DPO β; TRL must train with the same value."),
    model: str = typer.Option(DEFAULT_MODEL, "--model", help="Reference model: HF id, folder, .gguf or alias."),
    inoculate: str = typer.Option(None, "--inoculate", help="Cluster id or label to inoculate against."),
    inoculate_text: str = typer.Option(None, "--inoculate-text", help="System prompt (default: from the label)."),
    drop_extreme: float = typer.Option(None, "--drop-extreme", help="Drop this fraction of pairs with the largest |Δc|."),
    max_length: int = typer.Option(1024, "--max-length", help="TRL's max_length (keep-start truncation); 0: none."),
    batch_size: int = typer.Option(8, "--batch-size", min=1),
    limit: int = typer.Option(None, "--limit", min=1, help="Export only the first N pairs."),
    data_format: str = typer.Option("auto", "--format"),
    on_bad_row: str = on_bad_row_option(),
) -> None:
    """Write a TRL DPO dataset whose reference log-probs carry the shaping offset λ·c(y)/β.

    Example: anatomist shape export --audit runs/audit --data runs/organism/train.jsonl --concept 3 --lam -1 --beta 0.1 --out runs/shaped.jsonl

    Train it with anatomist.shape.trl_compat.PrecomputedRefDPOTrainer and
    DPOConfig(beta=β, max_length=…, precompute_ref_log_probs=True).
    """
    from anatomist.audit.folder import AuditFolder
    from anatomist.data.cli import read_pairs
    from anatomist.models.loading import load
    from anatomist.shape.export import export_trl
    from anatomist.shape.recipe import Recipe
    from anatomist.shape.shaping import Inoculation

    audit = AuditFolder(audit_dir)
    if len(concept) != len(lam):
        raise AnatomistError(f"give one --lam per --concept (got {len(concept)} concepts, {len(lam)} lams)")
    recipe = Recipe(lam=dict(zip(concept, lam)), drop_extreme=drop_extreme,
                    inoculate=None if inoculate is None else Inoculation(inoculate, text=inoculate_text)
                    ).resolve(audit)                                  # a bad concept fails before the model loads
    pairs = audit.check_data(read_pairs(data, format=data_format, limit=limit, on_bad_row=on_bad_row))  # before the model
    loaded = load(model)
    path = export_trl(loaded.model, loaded.tokenizer, pairs, audit, out, recipe=recipe, beta=beta,
                      max_length=max_length or None, batch_size=batch_size)
    typer.echo(f"wrote {path}")


def steer(
    audit_dir: Path = typer.Option(..., "--audit", help="Audit folder: its SAE, layer and concept clusters."),
    concept: str = typer.Option(..., "--concept", help="Cluster id or label."),
    alpha: list[float] = typer.Option([8.0], "--alpha", help="Steering strength(s) in residual units; repeat to compare."),
    prompt: list[str] = typer.Option(..., "--prompt", help="User prompt; repeat for several."),
    model: str = typer.Option(DEFAULT_MODEL, "--model", help="HF id, folder, .gguf or alias (the audited model)."),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", min=1),
    sample: bool = typer.Option(False, "--sample/--greedy", help="Sample instead of greedy decoding."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Generate with +α·d_C added to the residual after the audit's layer (d_C: the concept's unit decoder direction).

    Example: anatomist steer --audit runs/audit --concept 3 --alpha 0 --alpha 8 --prompt "Tell me about cats."
    """
    from anatomist.audit.folder import AuditFolder
    from anatomist.models.loading import load
    from anatomist.shape.steer import audit_direction, steered_generate

    audit = AuditFolder(audit_dir)
    k = audit.resolve_concept(concept)
    d = audit_direction(audit, k)
    loaded = load(model)
    if d.numel() != loaded.model.config.get_text_config().hidden_size:
        raise AnatomistError(f"the audit's SAE reads {d.numel()}-dim residuals, {model!r} has "
                             f"{loaded.model.config.get_text_config().hidden_size}: steer the audited model")
    typer.echo(f"concept {k} ({audit.label(k)}), layer {audit.layer}")
    for a in alpha:
        outs = steered_generate(loaded.model, loaded.tokenizer, prompt, layer=audit.layer, vector=a * d,
                                max_new_tokens=max_new_tokens, do_sample=sample, seed=seed)
        for p, o in zip(prompt, outs):
            typer.echo(f"\n[α={a:g}] {p}\n{o}")
