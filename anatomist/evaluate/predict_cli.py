"""`anatomist predict AUDIT_DIR` and `anatomist verify AUDIT_DIR RUN_DIR` (thin over predict.py / verify.py)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from anatomist.data.cli import on_bad_row_option
from anatomist.errors import AnatomistError
from anatomist.options import default
from anatomist.train.dpo import DPOConfig


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
    first_order: Path = typer.Option(None, "--first-order", help="Also the first-order forecast from the base "
                                     "model's generations in this eval folder (anatomist eval --audit, ≥ 4 samples "
                                     "per prompt); writes first_order.parquet there."),
    train_layers: int = typer.Option(default(DPOConfig, "train_layers"), "--train-layers", min=0,
                                     help="--first-order: the top blocks the run will train (0: all), as in dpo."),
    beta: float = typer.Option(default(DPOConfig, "beta"), "--beta", help="--first-order: the run's DPO β."),
    grad_share: float = typer.Option(1.0, "--grad-share", help="--first-order: share of the pairs in the "
                                     "gradient pass (seeded subsample; 1 = all)."),
    temperature: float = typer.Option(None, "--temperature", help="--first-order: the generations' sampling "
                                      "temperature (default: the eval's summary.json)."),
    attribute: str = typer.Option(None, "--attribute", help="--first-order: list the pairs that drive this "
                                  "concept's forecast (cluster id or label); writes attribution_<k>.parquet."),
    on_bad_row: str = on_bad_row_option(),
) -> None:
    """Predict, from the data alone, how DPO will move each concept per topic; writes predictions.parquet.

    Example: anatomist predict runs/audit --top 20

    Before training, the first-order forecast: anatomist predict runs/audit --first-order runs/base_eval --train-layers 4
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
    if first_order is not None:
        cfg = DPOConfig(beta=beta, train_layers=train_layers or None)
        _first_order(audit_dir, first_order, cfg, parse_lam(lam), grad_share, temperature, attribute, on_bad_row, top)


def _first_order(audit_dir: Path, base_eval: Path, cfg, lam, grad_share, temperature, attribute, on_bad_row,
                 top) -> None:
    from anatomist.audit.folder import AuditFolder
    from anatomist.data.cli import read_pairs
    from anatomist.evaluate.forecast import forecast, read_generations
    from anatomist.models import load

    audit = AuditFolder(audit_dir)
    if audit.data_file is None or not audit.data_file.is_file():
        raise AnatomistError(f"{audit_dir}: its preference file {audit.data_file} is not found (audit.json records it)")
    pairs = read_pairs(audit.data_file, on_bad_row=on_bad_row)          # bad rows refused before any model loads
    cluster = audit.resolve_concept(attribute) if attribute is not None else None
    lm = load(audit.model_name)
    fc = forecast(audit_dir, base_eval, cfg=cfg, lam=lam, temperature=temperature, grad_share=grad_share, pairs=pairs,
                  loaded=(lm.model, lm.tokenizer))
    rows = fc.rows[fc.rows.topic == "all"].copy()
    rows = rows.reindex(rows["x_first_adam"].abs().sort_values(ascending=False).index).head(top)
    typer.echo(f"\nfirst-order forecast ({fc.meta['half']} base samples, {fc.meta['grad_pairs']} pairs, "
               f"{fc.meta['seconds']:.0f} s): unscaled — sign and ranking; verify fits the run's scale")
    typer.echo(f"{'cluster':>7} {'x_first_adam':>13} {'x_first_plain':>14}  name")
    for r in rows.itertuples():
        typer.echo(f"{r.cluster:>7} {r.x_first_adam:>13.4g} {r.x_first_plain:>14.4g}  {str(r.label)[:50]}")
    typer.echo(f"forecast: {fc.path}")
    if cluster is not None:
        _attribution(audit, fc, pairs, cfg, lam, cluster, (lm.model, lm.tokenizer), read_generations(base_eval)[0], top)


def _attribution(audit, fc, pairs, cfg, lam, cluster, loaded, base, top) -> None:
    from anatomist.evaluate.attribution import run_attribution
    from anatomist.evaluate.paired import sample_halves
    from anatomist.fileio import atomic_write_parquet
    from anatomist.shape.pairs import plain
    from anatomist.shape.shaping import shape_pairs

    pairs = audit.check_data(list(pairs))
    shaped = shape_pairs(pairs, audit, lam=lam) if lam else plain(pairs)
    gens = sample_halves(base)[0] if fc.meta["half"] == "even" else base
    frame = run_attribution(*loaded, shaped, cfg, gens, cluster, temperature=float(fc.meta["temperature"]),
                            precondition="adam")
    path = fc.path.with_name(f"attribution_{cluster}.parquet")
    atomic_write_parquet(frame, path)
    sign = 1.0 if frame["attribution"].mean() >= 0 else -1.0      # the pairs pushing the forecast's way
    show = frame.reindex((sign * frame["attribution"]).sort_values(ascending=False).index).head(top)
    typer.echo(f"\npairs driving cluster {cluster} ({audit.name(cluster)[:40]}), Adam direction; mean "
               f"{frame['attribution'].mean():.4g}:")
    for r in show.itertuples():
        typer.echo(f"  {r.pair_id:<24} {r.attribution:>11.4g}  topic {audit.topic(r.pair_id)}")
    typer.echo(f"attribution: {path}")


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
    first_order: Path = typer.Option(None, "--first-order", help="A forecast (anatomist predict --first-order); "
                                     "default: first_order.parquet beside the pre table, if any."),
    policy: str = typer.Option(None, "--policy", help="The trained model: the paired ΔB (base samples weighed by "
                               "policy/base log-probs) replaces the direct difference of means."),
    n_boot: int = typer.Option(1000, "--n-boot", min=10),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Score the audit's predictions against a DPO run (R², Spearman ρ); writes verify.json and verify.html.

    Example: anatomist verify runs/audit runs/eval

    (RUN_DIR: the folder `anatomist eval --out` wrote, with --base, so it holds pre/ and post/. A first-order
    forecast is scored per concept and per (topic, concept) on the base samples it did not read.)
    """
    from anatomist.evaluate.predict import PredictConfig
    from anatomist.evaluate.verify import level_lines, verify_run

    result = verify_run(audit_dir, run_dir, pre=pre, post=post, cfg=PredictConfig(spread=spread),
                        calibration=calibration, n_boot=n_boot, seed=seed, tested_only=not all_rows,
                        first_order=first_order, policy=policy)
    s = result.summary
    typer.echo(f"target: {s['target']}")
    for line in [*level_lines("per (topic, concept)", s),
                 *(level_lines("per concept", s["concept"]) if "concept" in s else [])]:
        typer.echo(line)
    typer.echo(f"report: {run_dir / 'verify.html'}")
