"""`anatomist predict AUDIT_DIR` and `anatomist verify AUDIT_DIR RUN_DIR` (thin over predict.py / verify.py)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from anatomist.errors import AnatomistError


def parse_lam(values: list[str] | None) -> dict[int, float]:
    """["3=-2", "7=0.5"] → {3: -2.0, 7: 0.5}."""
    out = {}
    for v in values or []:
        key, sep, val = v.partition("=")
        try:
            out[int(key)] = float(val)
        except ValueError:
            sep = ""
        if not sep:
            raise AnatomistError(f"--lam expects CLUSTER=VALUE (e.g. 3=-2), got {v!r}")
    return out


def predict(
    audit_dir: Path = typer.Argument(..., metavar="AUDIT_DIR", help="An audit folder (anatomist audit --out)."),
    spread: str = typer.Option("pairs", "--spread", help="s² of a concept per topic: 'pairs' (the dataset's "
                               "responses), 'base' (needs --base-scores) or 'none'."),
    base_scores: Path = typer.Option(None, "--base-scores", help="The base model's eval table (scores.parquet)."),
    calibration: Path = typer.Option(None, "--calibration", help="A verify.json whose coefficients turn the "
                                     "predictors into ΔB units (calibrated on another run)."),
    lam: list[str] = typer.Option(None, "--lam", help="Predict a shaped run: CLUSTER=λ (repeatable)."),
    top: int = typer.Option(15, "--top", min=1, help="Rows to print."),
) -> None:
    """Predict, from the data alone, how DPO will move each concept per topic; writes predictions.parquet.

    Example: anatomist predict runs/audit --top 20
    """
    from anatomist.evaluate.predict import PredictConfig, write_predictions
    from anatomist.evaluate.verify import read_eval

    coefs = None
    if calibration is not None:
        coefs = {k: v["coef_all_rows"] for k, v in json.loads(calibration.read_text())["predictors"].items()}
    base = read_eval(base_scores) if base_scores is not None else None
    path, pred = write_predictions(audit_dir, PredictConfig(spread=spread), base_scores=base, calibration=coefs,
                                   lam=parse_lam(lam))
    col = "pred_feature" if "pred_feature" in pred else "score"
    show = pred.reindex(pred[col].abs().sort_values(ascending=False).index).head(top)
    typer.echo(f"{'topic':<22} {'cluster':>7}  {'Δ̄':>7} {'s²':>6} {col:>12}  audit     label")
    for r in show.itertuples():
        typer.echo(f"{str(r.topic)[:22]:<22} {r.cluster:>7}  {r.dbar:>7.3f} {r.spread:>6.2f} {getattr(r, col):>12.4f}  "
                   f"{r.direction:<9} {str(r.label)[:40]}")
    typer.echo(f"predictions: {path}")


def verify(
    audit_dir: Path = typer.Argument(..., metavar="AUDIT_DIR", help="The audit whose predictions are checked."),
    run_dir: Path = typer.Argument(..., metavar="RUN_DIR", help="Run folder: pre/ and post/ eval tables (or one "
                                   "scores.parquet with a role column); optional sweep.json."),
    pre: Path = typer.Option(None, "--pre", help="Eval table of the base model (overrides RUN_DIR/pre)."),
    post: Path = typer.Option(None, "--post", help="Eval table of the trained model (overrides RUN_DIR/post)."),
    spread: str = typer.Option("pairs", "--spread", help="'pairs', 'base' (the pre table) or 'none'."),
    calibration: Path = typer.Option(None, "--calibration", help="Score with another run's verify.json "
                                     "coefficients instead of cross-fitting."),
    all_rows: bool = typer.Option(False, "--all-rows", help="Also score untested rows (fewer pairs than min_pairs)."),
    n_boot: int = typer.Option(1000, "--n-boot", min=10),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Score the audit's predictions against a DPO run (R², Spearman ρ); writes verify.json and verify.html.

    Example: anatomist verify runs/audit runs/eval

    (RUN_DIR: the folder `anatomist eval --out` wrote, with --base, so it holds pre/ and post/.)
    """
    from anatomist.evaluate.predict import PredictConfig
    from anatomist.evaluate.verify import verify_run

    result = verify_run(audit_dir, run_dir, pre=pre, post=post, cfg=PredictConfig(spread=spread),
                        calibration=calibration, n_boot=n_boot, seed=seed, tested_only=not all_rows)
    s = result.summary
    typer.echo(f"{s['n_rows']} rows, {s['n_topics']} topics; R² noise ceiling {s['r2_ceiling']:.3f}")
    for name, p in s["predictors"].items():
        typer.echo(f"  {name:<8} R² {p['r2']:7.3f}  [{p['r2_ci'][0]:.3f}, {p['r2_ci'][1]:.3f}]  ρ {p['rho']:6.3f}  "
                   f"ρ uncalibrated {p['rho_raw']:6.3f}")
    typer.echo(f"report: {run_dir / 'verify.html'}")
