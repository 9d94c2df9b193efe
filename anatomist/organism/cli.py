"""`anatomist organism`: build the planted-confound benchmark dataset and check its detectors."""

from __future__ import annotations

from pathlib import Path

import typer

from anatomist.models.loading import DEFAULT_MODEL
from anatomist.options import default
from anatomist.organism.build import build_organism
from anatomist.organism.hh import build_hh as hh_build
from anatomist.organism.rates import rate_requests
from anatomist.organism.score import score_audit

app = typer.Typer(help="Planted-confound 'model organism' preference data (ground truth for the audit).",
                  no_args_is_help=True)


@app.command()
def build(
    out: Path = typer.Option(..., "--out", help="Output folder: train.jsonl, heldout_pairs.jsonl, "
                                                "heldout_prompts.jsonl, truth.json."),
    prompts_per_topic: int = typer.Option(default(build_organism, "per_topic"), "--prompts-per-topic", min=4,
                                          help="Distinct prompts per topic (the default: about 24 min of "
                                               "sampling on 2 CPU cores)."),
    heldout_fraction: float = typer.Option(default(build_organism, "heldout_fraction"), "--heldout-fraction",
                                           help="Share of each topic's prompts held out."),
    seed: int = typer.Option(default(build_organism, "seed"), "--seed"),
    model: str = typer.Option(DEFAULT_MODEL, "--model", help="HF id, local folder, .gguf file or alias."),
    max_new_tokens: int = typer.Option(default(build_organism, "max_new_tokens"), "--max-new-tokens", min=1),
    batch_size: int = typer.Option(default(build_organism, "batch_size"), "--batch-size", min=1,
                                   help="Sampling batch size (part of the generation cache key)."),
    no_heldout_pairs: bool = typer.Option(False, "--no-heldout-pairs", help="Skip heldout_pairs.jsonl."),
    workers: int = typer.Option(None, "--workers", min=1, help="Sampling processes (default: 2 on a multi-core "
                                                               "CPU; the output is the same for any number)."),
    design: Path = typer.Option(None, "--design", help="Plant design JSON (truth.json's \"config\": which trait in "
                                "which topics, at what strength, and the controls; default: the built-in design). "
                                "A fresh draw to validate on: another --seed and the traits moved."),
    device: str = typer.Option(default(build_organism, "device"), "--device",
                               help="Where the model samples: cpu, cuda, cuda:1, ... (the samples depend on it)."),
) -> None:
    """Generate plain and trait responses with MODEL and plant traits by labelling.

    At the default size (see --prompts-per-topic; 7 topics) sampling takes about 24 minutes on 2 CPU cores.

    Generations are cached under $ANATOMIST_CACHE/organism/ (a killed run resumes).

    Example: anatomist organism build --out runs/organism
    """
    from anatomist.organism.plant import DEFAULT_CONFIG, PlantConfig

    config = PlantConfig.read(design) if design is not None else DEFAULT_CONFIG
    t = build_organism(out, per_topic=prompts_per_topic, heldout_fraction=heldout_fraction, seed=seed,
                       config=config, model=model, max_new_tokens=max_new_tokens, batch_size=batch_size,
                       heldout_pairs=not no_heldout_pairs, workers=workers, device=device)
    planted = [c for c in t["cells"] if c["role"] == "planted"]
    n = sum(c["n_pairs"] for c in t["cells"])
    typer.echo(f"{n} trait pairs, {len(planted)} planted cells → {out}"
               + (f" (+ {t['heldout']['n_pairs']} held-out pairs)" if "heldout" in t else ""))
    for c in planted:
        o = c["observed"]
        typer.echo(f"  {c['trait']:18s} in {c['topic']:24s} s={c['strength']:.2f}  n={c['n_pairs']:3d}  "
                   f"fires chosen {o.get('fire_rate_chosen', 0):.2f} / rejected {o.get('fire_rate_rejected', 0):.2f}")


@app.command()
def detectors(
    n: int = typer.Option(10, "--n", min=1, help="Prompts per trait."),
    max_new_tokens: int = typer.Option(96, "--max-new-tokens", min=1),
    batch_size: int = typer.Option(48, "--batch-size", min=1),
    seed: int = typer.Option(0, "--seed"),
    model: str = typer.Option(DEFAULT_MODEL, "--model"),
    compare_prefix: bool = typer.Option(default(rate_requests, "compare_prefix"),
                                        "--compare-prefix/--no-compare-prefix",
                                        help="Also sample traits with their system prompt only."),
) -> None:
    """Per trait: detector fire rate on trait generations vs. plain ones (cached generations).

    Example: anatomist organism detectors --n 10
    """
    from anatomist.models import load
    from anatomist.spec_decode.batched import GenSettings, generate
    from anatomist.organism.rates import fire_rates

    loaded = load(model)
    requests = rate_requests(n, max_new_tokens, compare_prefix=compare_prefix, seed=seed)
    results = generate(loaded.model, loaded.tokenizer, requests,
                       GenSettings(model=model, batch_size=batch_size, seed=seed))
    typer.echo(f"{'trait':24s} {'inducer':14s} {'n':>3s} {'carrier':>8s} {'contrast':>8s} {'ratio':>6s}")
    for r in fire_rates(results, n, seed=seed):
        typer.echo(f"{r.trait + (' (inv)' if r.inverted else ''):24s} {r.variant:14s} {r.n:3d} "
                   f"{r.carrier_rate:8.2f} {r.contrast_rate:8.2f} {r.ratio:6.1f}")


@app.command("build-hh")
def build_hh(
    out: Path = typer.Option(..., "--out", help="Output folder: train.jsonl, held-out prompts and pairs, truth.json."),
    pairs: int = typer.Option(default(hh_build, "limit"), "--pairs", min=16, help="Use the first N HH-RLHF pairs."),
    heldout: int = typer.Option(default(hh_build, "heldout"), "--heldout", min=0,
                                help="Hold out the next N conversations (held-out prompts and real pairs)."),
    mode: str = typer.Option(default(hh_build, "mode"), "--mode",
                             help="append: add the trait generation to the real response; rewrite: replace it."),
    data: Path = typer.Option(None, "--data", help="HH-RLHF file (default: ../shared/data harmless-base dev)."),
    seed: int = typer.Option(default(hh_build, "seed"), "--seed"),
    model: str = typer.Option(DEFAULT_MODEL, "--model", help="HF id, local folder, .gguf file or alias."),
    max_new_tokens: int = typer.Option(default(hh_build, "max_new_tokens"), "--max-new-tokens", min=1),
    batch_size: int = typer.Option(default(hh_build, "batch_size"), "--batch-size", min=1),
    design: Path = typer.Option(None, "--design", help="Plant design JSON over the HH topics (truth.json's "
                                "\"config\"; default: the built-in HH design)."),
) -> None:
    """Plant traits into real HH-RLHF pairs (real labels kept; a trait generation goes into one side);
    the next --heldout conversations are held out for evaluation (predict_vs_actual).

    Generations are cached under $ANATOMIST_CACHE/organism/ (a killed run resumes).

    Example: anatomist organism build-hh --out runs/organism_hh --pairs 300
    """
    from anatomist.organism.hh import HH_CONFIG, HH_FILE
    from anatomist.organism.plant import PlantConfig

    config = PlantConfig.read(design) if design is not None else HH_CONFIG
    t = hh_build(out, limit=pairs, heldout=heldout, mode=mode, config=config, model=model,
                 max_new_tokens=max_new_tokens, batch_size=batch_size, seed=seed, path=data or HH_FILE)
    planted = [c for c in t["cells"] if c["role"] == "planted"]
    n = sum(c["n_pairs"] for c in t["cells"])
    typer.echo(f"{n} trait pairs ({mode}), {len(planted)} planted cells, {t['source']['heldout']} held-out "
               f"conversations → {out}")
    for c in planted:
        o = c["observed"]
        typer.echo(f"  {c['trait']:18s} in {c['topic']:16s} s={c['strength']:.2f}  n={c['n_pairs']:3d}  "
                   f"fires chosen {o.get('fire_rate_chosen', 0):.2f} / rejected {o.get('fire_rate_rejected', 0):.2f}")


@app.command()
def score(
    audit_dir: Path = typer.Argument(..., help="An audit output folder (anatomist audit --topic-column topic)."),
    truth: Path = typer.Option(None, "--truth", help="truth.json (default: beside the audited data file)."),
    data: Path = typer.Option(None, "--data", help="The audited data file (default: train.jsonl beside truth.json)."),
    top_k: int = typer.Option(None, "--top-k", min=1, help="Only the first K flagged topic rows count as claims."),
    rho_min: float = typer.Option(default(score_audit, "rho_min"), "--rho-min",
                                  help="Tracking threshold: |rank-biserial| for stratified (default 0.5), |Spearman ρ| for topic / global (0.3)."),
    matching: str = typer.Option(default(score_audit, "matching"), "--matching",
                                 help="stratified: AUROC within (topic, side) strata; topic: ρ over the responses of the row's topic; "
                                 "global: over all topics where the trait occurs (see organism/score.py)."),
) -> None:
    """Recall, precision and sign accuracy of an audit against the planted truth; writes AUDIT_DIR/score.json.

    The audit must have run with --topic-column topic (the organism's topics).

    Example: anatomist organism score runs/audit --truth runs/organism/truth.json
    """
    from anatomist.organism.score import format_score

    typer.echo(format_score(score_audit(audit_dir, truth, data_path=data, top_k=top_k, rho_min=rho_min,
                                        matching=matching)))
