"""`anatomist dpo`: thin over `anatomist.train.train_dpo` (and `anatomist.shape.recipe` for the
interventions read from an audit)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from anatomist.data.cli import on_bad_row_option
from anatomist.errors import AnatomistError
from anatomist.monitor import cli as mon
from anatomist.models.loading import DEFAULT_MODEL
from anatomist.options import default
from anatomist.train.dpo import DPOConfig


def dpo(
    data: Path = typer.Option(..., "--data", help="Preference pairs (TRL standard/conversational, HH, ...)."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder: checkpoint, metrics.jsonl, summary.json, policy/."),
    model: str = typer.Option(DEFAULT_MODEL, "--model", help="HF id, local folder, .gguf file or alias."),
    beta: float = typer.Option(default(DPOConfig, "beta"), "--beta",
                               help="DPO β (strength of the KL anchor to the reference)."),
    loss_type: str = typer.Option(default(DPOConfig, "loss_type"), "--loss", help="sigmoid (DPO) | ipo."),
    lr: float = typer.Option(default(DPOConfig, "lr"), "--lr", help="Peak learning rate (AdamW, warmup then decay)."),
    schedule: str = typer.Option(default(DPOConfig, "schedule"), "--schedule",
                                 help="cosine | linear | constant after warmup."),
    warmup_ratio: float = typer.Option(default(DPOConfig, "warmup_ratio"), "--warmup",
                                       help="Warmup as a fraction of the steps."),
    epochs: float = typer.Option(default(DPOConfig, "epochs"), "--epochs",
                                 help="Passes over the data (ignored when --steps is given)."),
    steps: int = typer.Option(default(DPOConfig, "steps"), "--steps", min=1,
                              help="Optimizer steps (overrides --epochs)."),
    batch_size: int = typer.Option(default(DPOConfig, "batch_size"), "--batch-size", min=1,
                                   help="Pairs per micro-batch."),
    grad_accum: int = typer.Option(default(DPOConfig, "grad_accum"), "--grad-accum", min=1,
                                   help="Micro-batches per optimizer step."),
    train_layers: int = typer.Option(default(DPOConfig, "train_layers"), "--train-layers", min=0,
                                     help="Train the top N blocks (+ final norm); the rest is run once and cached. 0 = all."),
    lora_r: int = typer.Option(default(DPOConfig, "lora_r"), "--lora-r", min=0,
                               help="LoRA rank on the trained blocks (0 = full weights)."),
    max_length: int = typer.Option(default(DPOConfig, "max_length"), "--max-length", min=8,
                                   help="Max tokens of prompt + response."),
    max_response_tokens: int = typer.Option(default(DPOConfig, "max_response_tokens"), "--max-response-tokens", min=0,
                                            help="Cut responses here (0 = no cut)."),
    audit_dir: Path = typer.Option(None, "--audit", help="Audit folder for --lam / --token-filter / --inoculate / --steer."),
    lam: list[str] = typer.Option([], "--lam", help="Reward shaping CONCEPT=λ (cluster id, label, or length: the audit's response length); repeat. λ < 0 suppresses."),
    token_filter: str = typer.Option(None, "--token-filter", help="CONCEPT:TAU — drop response tokens with c_t >= τ."),
    token_filter_sides: str = typer.Option("both", "--token-filter-sides", help="chosen | rejected | both."),
    inoculate: str = typer.Option(None, "--inoculate", help="CONCEPT — system prompt asking for it where Δc > 0."),
    inoculate_text: str = typer.Option(None, "--inoculate-text", help="Inoculation prompt (default: from the label)."),
    drop_extreme: float = typer.Option(None, "--drop-extreme", help="Drop this fraction of pairs with the largest |Δc|."),
    steer: str = typer.Option(None, "--steer", help="CONCEPT:ALPHA — preventative steering at the audit's layer."),
    limit: int = typer.Option(None, "--limit", min=1, help="Use only the first N pairs."),
    seed: int = typer.Option(default(DPOConfig, "seed"), "--seed"),
    ckpt_every: int = typer.Option(default(DPOConfig, "ckpt_every"), "--ckpt-every", min=1,
                                   help="Checkpoint every N steps (resume by rerunning)."),
    cache_dir: Path = typer.Option(None, "--cache-dir", help="Where cached states and reference log-probs go."),
    data_format: str = typer.Option("auto", "--format", help="Data format (auto-detected by default)."),
    on_bad_row: str = on_bad_row_option(),
    skip_bad_rows: bool = typer.Option(False, "--skip-bad-rows", hidden=True,
                                       help="Deprecated: --on-bad-row skip."),
    monitor: Path = mon.AUDIT, monitor_every: int = mon.EVERY, monitor_budget: float = mon.BUDGET,
    monitor_prompts: Path = mon.PROMPTS,
    monitor_per_topic: int = mon.PER_TOPIC, monitor_samples: int | None = mon.SAMPLES,
    monitor_estimator: str = mon.ESTIMATOR,
    monitor_max_new_tokens: int = mon.TOKENS, monitor_concept: list[str] = mon.CONCEPTS,
    monitor_detector: list[str] = mon.DETECTORS, alarm: list[str] = mon.ALARMS, stop_on_alarm: bool = mon.STOP,
) -> None:
    """Train a policy with DPO (optionally shaped by an audit); rerunning the same command resumes.

    Example: anatomist dpo --data runs/organism/train.jsonl --out runs/dpo --train-layers 4

    Shaped: anatomist dpo --data runs/organism/train.jsonl --out runs/dpo_shaped --audit runs/audit --lam 3=-1.0 --token-filter 3:2.0

    Monitored: anatomist dpo --data runs/organism/train.jsonl --out runs/dpo --monitor runs/audit --monitor-every 10 --alarm over_formatting>0.5
    """
    from anatomist.data.cli import read_pairs
    from anatomist.models.loading import load
    from anatomist.shape.pairs import plain
    from anatomist.shape.recipe import Recipe, apply
    from anatomist.train.dpo import train_dpo

    cfg = DPOConfig(beta=beta, loss_type=loss_type, lr=lr, schedule=schedule, warmup_ratio=warmup_ratio, epochs=epochs,
                    steps=steps, batch_size=batch_size, grad_accum=grad_accum, train_layers=train_layers or None,
                    lora_r=lora_r, max_length=max_length, max_response_tokens=max_response_tokens or None,
                    ckpt_every=ckpt_every, seed=seed)
    recipe = Recipe.from_cli(lam=lam, token_filter=token_filter, token_filter_sides=token_filter_sides,
                             inoculate=inoculate, inoculate_text=inoculate_text, drop_extreme=drop_extreme, steer=steer)
    if not recipe.is_plain and audit_dir is None:
        raise AnatomistError("--lam, --token-filter, --inoculate, --drop-extreme and --steer need --audit DIR")
    def prompts():
        from anatomist.audit.folder import AuditFolder

        return monitor_prompts or mon.default_prompts(data, AuditFolder(monitor).data_file if monitor else None)

    watch = mon.build(monitor, monitor_every, prompts, monitor_per_topic, monitor_samples, monitor_max_new_tokens,
                      monitor_concept, monitor_detector, alarm, stop_on_alarm, seed=seed,
                      budget=monitor_budget, estimator=monitor_estimator)
    pairs = read_pairs(data, format=data_format, limit=limit, on_bad_row="skip" if skip_bad_rows else on_bad_row)
    loaded = load(model)
    # With an audit, the Shaped value carries the steering and the leakage deltas (anatomist.train.dpo doc).
    shaped = plain(pairs) if audit_dir is None else apply(recipe, pairs, audit_dir, tokenizer=loaded.tokenizer,
                                                          max_length=max_length)
    result = train_dpo(loaded.model, loaded.tokenizer, shaped, cfg, out, cache_dir=cache_dir, monitor=watch)
    if result.stopped_at is not None:
        typer.echo(f"stopped at step {result.stopped_at}: a monitor alarm fired (see {out}/monitor.html); "
                   "rerun to resume")
        return
    summary = json.loads((out / "summary.json").read_text())
    typer.echo(json.dumps({k: round(v, 4) for k, v in next(iter(
        v for k, v in summary.items() if k.startswith("final"))).items()}))
    typer.echo(f"wrote {result.out_dir}" + (f" (monitor: {out}/monitor.html)" if watch else ""))
