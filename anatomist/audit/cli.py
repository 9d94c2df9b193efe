"""`anatomist audit` (what will this preference dataset teach? tables + HTML report) and `anatomist report`."""

from __future__ import annotations

from pathlib import Path

import typer

from anatomist.audit.run import AuditConfig
from anatomist.data.cli import on_bad_row_option
from anatomist.models.loading import DEFAULT_MODEL
from anatomist.options import default


def audit(
    data: Path = typer.Option(..., "--data", help="Preference file (jsonl/json/parquet/csv; TRL, HH or ShareGPT)."),
    out: Path = typer.Option(..., "--out", help="Output folder (rerun to resume pooling)."),
    model: str = typer.Option(DEFAULT_MODEL, "--model", help="HF id, local folder, .gguf file or alias."),
    sae: str = typer.Option("default", "--sae", help="SAE folder (SAELens format) or 'default' (trained once, cached)."),
    limit: int = typer.Option(None, "--limit", min=2, help="Audit only the first N pairs."),
    pooling: str = typer.Option(default(AuditConfig, "pooling"), "--pooling",
                                help="Latents over a response: 'mean', 'max', 'topk' (mean of the k largest) or "
                                     "'calmax' (the largest, as the chance that a response of that length gets a "
                                     "lower one: keeps a short span such as a flattering opener, leaves length out)."),
    topk: int = typer.Option(default(AuditConfig, "topk"), "--topk", min=1, help="k of --pooling topk."),
    topics: int = typer.Option(default(AuditConfig, "topics"), "--topics", min=1,
                               help="Number of prompt topics (default: by silhouette)."),
    topic_method: str = typer.Option(default(AuditConfig, "topic_method"), "--topic-method",
                                     help="'kmeans' or 'leiden'."),
    topic_embedder: str = typer.Option(default(AuditConfig, "topic_embedder"), "--topic-embedder",
                                       help="Prompt embeddings for topics: 'model' (its own residual) or 'minilm'."),
    topic_column: str = typer.Option(default(AuditConfig, "topic_column"), "--topic-column",
                                     help="Take topics from this data column instead."),
    leiden_backend: str = typer.Option(default(AuditConfig, "leiden_backend"), "--leiden-backend",
                                       help="'sknetwork' (BSD) or 'leidenalg' (GPL; pip install leidenalg)."),
    resolution: float = typer.Option(default(AuditConfig, "resolution"), "--resolution",
                                     help="Leiden resolution for concept clusters (higher: smaller)."),
    min_support: int = typer.Option(default(AuditConfig, "min_support"), "--min-support",
                                    help="Responses a feature must fire in to be clustered."),
    alpha: float = typer.Option(default(AuditConfig, "alpha"), "--alpha", help="FDR level for a predicted direction."),
    labeller: str = typer.Option(default(AuditConfig, "labeller"), "--labeller",
                                 help="'offline' (no LLM) or 'openai' (any compatible endpoint)."),
    base_url: str = typer.Option(None, "--base-url", help="OpenAI-compatible endpoint for --labeller openai."),
    llm_model: str = typer.Option(None, "--llm-model", help="Model name for --labeller openai."),
    allow_remote: bool = typer.Option(False, "--allow-remote/--no-remote",
                                      help="Allow sending dataset text to a non-local endpoint."),
    seed: int = typer.Option(default(AuditConfig, "seed"), "--seed"),
    data_format: str = typer.Option("auto", "--format"),
    on_bad_row: str = on_bad_row_option(),
    device: str = typer.Option("cpu", "--device", help="Where the model and the SAE pool latents: cpu, cuda, ... "
                                                       "(the statistics run on the CPU either way)."),
) -> None:
    """Find the latent concepts that separate chosen from rejected responses, per prompt topic.

    The screen runs first (`anatomist screen`'s default detectors and pair hygiene, on the audit's
    topics, in seconds) and is printed before the model pools; each concept then lists the
    detectors it tracks (AUROC with CI) beside its label.

    Example: anatomist audit --data runs/organism/train.jsonl --out runs/audit --topic-column topic

    (--topic-column topic: the organism's topics, which `anatomist organism score` needs.)
    """
    from anatomist.audit.report import render_report
    from anatomist.audit.run import run_audit
    from anatomist.data.cli import read_pairs
    from anatomist.models.loading import load
    from anatomist.sae import default_sae, load_sae

    kwargs = {}
    if labeller == "openai":
        kwargs = {"base_url": base_url, "model": llm_model, "allow_remote": allow_remote}
    cfg = AuditConfig(pooling=pooling, topk=topk, topics=topics, topic_method=topic_method,
                      topic_embedder=topic_embedder, topic_column=topic_column, leiden_backend=leiden_backend,
                      resolution=resolution, min_support=min_support, alpha=alpha, labeller=labeller,
                      labeller_kwargs=kwargs, seed=seed)
    pairs = read_pairs(data, format=data_format, on_bad_row=on_bad_row, limit=limit)
    sae_path = str(default_sae(model)) if sae == "default" else sae
    loaded = load(model, device=device)
    folder = run_audit(loaded.model, loaded.tokenizer, load_sae(sae_path).to(device), pairs, out, cfg,
                       model_name=model, sae_path=sae_path, data_path=str(data))
    typer.echo(f"report: {render_report(folder)}")


def report(audit_dir: Path = typer.Argument(..., metavar="DIR",
                                            help="An audit folder written by `anatomist audit --out`.")) -> None:
    """Re-render DIR/report.html from the tables in an audit folder (no model needed).

    Example: anatomist report runs/audit
    """
    from anatomist.audit.report import render_report

    typer.echo(str(render_report(audit_dir)))
