"""The loop's stages from training on: train (DPO per variant), eval (the base once, each policy),
verify (predicted vs measured shift per variant).

`train_policy` and `eval_policy` are also what the benchmarks call (benchmarks/shaping.py,
benchmarks/predict_vs_actual.py), so a benchmark's run is a loop run: DPO a copy of the base on
shaped pairs; sample it on held-out prompts with the base's seeds, score the generations with the
audit's instrument; rank held-out pairs by the implicit reward against the base.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import pandas as pd

from anatomist.fileio import atomic_write_parquet, atomic_write_text
from anatomist.loop.config import EvalConfig, section
from anatomist.loop.context import Ctx
from anatomist.loop.steps import dumps

POLICY = "policy"                  # train/<variant>/policy: the trained model (train_dpo's save_model)
TRAIN_PAIRS = "train_pairs.json"   # the pairs a run trained on, with text hashes (verify reads it)
REF_LOGPS = "reference_logps.parquet"


# -- shared with the benchmarks ------------------------------------------------------------------

def train_policy(base_model, tok, shaped, cfg, out_dir, *, cache_dir=None, save_model: bool = True,
                 progress: bool = False):
    """DPO a fresh copy of `base_model` on `shaped` (pairs or `Shaped`) into out_dir (resumes after a
    kill); returns (policy in eval mode, seconds)."""
    from anatomist.train import train_dpo

    policy = copy.deepcopy(base_model)
    t = time.perf_counter()
    train_dpo(policy, tok, shaped, cfg, out_dir, cache_dir=cache_dir, save_model=save_model, progress=progress)
    return policy.eval(), time.perf_counter() - t


def eval_base(base_model, tok, prompts, out_dir, *, scorer, settings: EvalConfig, progress: bool = False):
    """The base model's generations on the held-out prompts, scored (out_dir/behaviour.parquet)."""
    from anatomist.evaluate.behaviour import evaluate_behaviour

    return evaluate_behaviour(base_model, tok, prompts, out_dir=out_dir, scorer=scorer,
                              samples_per_prompt=settings.samples, max_new_tokens=settings.max_new_tokens,
                              seed=settings.seed, temperature=settings.temperature, batch_size=settings.batch_size,
                              model_name="base", progress=progress)


def eval_policy(policy, tok, prompts, heldout, run_dir, *, scorer, settings: EvalConfig, beta: float, name: str,
                ref_logps=None, reference=None, progress: bool = False) -> dict:
    """The policy's generations under the base's seeds (run_dir/post/behaviour.parquet) and its
    held-out preference accuracy against the base (run_dir/preference.parquet; skipped without
    held-out pairs). ref_logps: the base's (chosen, rejected) log-probs of `heldout` (`pair_logps`),
    shared by every policy; else `reference` (the base model)."""
    from anatomist.evaluate.behaviour import evaluate_behaviour
    from anatomist.evaluate.preference import preference_accuracy

    run_dir = Path(run_dir)
    post = evaluate_behaviour(policy, tok, prompts, out_dir=run_dir / "post", scorer=scorer,
                              samples_per_prompt=settings.samples, max_new_tokens=settings.max_new_tokens,
                              seed=settings.seed, temperature=settings.temperature, batch_size=settings.batch_size,
                              model_name=name, progress=progress)
    out = {"post": run_dir / "post", "post_frame": post, "heldout_acc": None, "preference": None}
    if heldout:
        ref = {"reference": reference} if ref_logps is None else {"reference_logps": ref_logps}
        frame, acc = preference_accuracy(policy, tok, heldout, **ref, beta=beta, progress=progress)
        atomic_write_parquet(frame, run_dir / "preference.parquet")
        out.update(heldout_acc=acc["accuracy"], preference=frame, preference_summary=acc)
    return out


# -- train -----------------------------------------------------------------------------------------

def train_inputs(ctx: Ctx, unit: str) -> dict:
    inputs = {"train": section(ctx.cfg, "train"), "data": ctx.digest("data"), "model": ctx.cfg.model}
    if unit == "shaped":   # plain DPO does not depend on the audit: a new λ leaves the baseline alone
        inputs.update(shape=ctx.digest("shape"), plan=ctx.digest("predict"))
    return inputs


def run_train(ctx: Ctx, unit: str, folder: Path) -> None:
    from anatomist.data import text_hash
    from anatomist.loop.steps import shaped_pairs
    from anatomist.shape.pairs import plain

    shaped = shaped_pairs(ctx) if unit == "shaped" else plain(ctx.pairs)
    pairs = shaped.pairs if unit == "shaped" else shaped
    by_id = {p.id: p for p in ctx.pairs}
    # with each pair's text hash, so verify refuses an audit that scored other texts under these ids
    atomic_write_text(folder / TRAIN_PAIRS, json.dumps([{"id": p.id, "text_hash": text_hash(by_id[p.id])}
                                                        for p in pairs]))
    ctx.echo(f"train {unit}: DPO on {len(pairs)} pairs ({ctx.cfg.train.steps or f'{ctx.cfg.train.epochs:g} epoch of'} "
             "steps)")
    model, tok = ctx.loaded
    _, seconds = train_policy(model, tok, shaped, ctx.cfg.train, folder, progress=ctx.progress)
    ctx.echo(f"train {unit}: {seconds:.0f} s")


TRAIN_OUTPUTS = ("summary.json", TRAIN_PAIRS)


# -- eval ------------------------------------------------------------------------------------------

def eval_units(ctx: Ctx) -> list[str]:
    return [*(["pre"] if ctx.pre_unit == ("eval", "pre") else []), *ctx.variants()]


def base_units(ctx: Ctx) -> list[str]:
    return [""] if ctx.pre_unit == ("base", "") else []


def eval_inputs(ctx: Ctx, unit: str) -> dict:
    inputs = {"eval": section(ctx.cfg, "eval"), "audit": ctx.digest("audit"), "data": ctx.digest("data"),
              "model": ctx.cfg.model}
    if unit not in ("pre", ""):
        inputs.update(train=ctx.digest("train", unit), pre=ctx.digest(*ctx.pre_unit), beta=ctx.cfg.train.beta)
    return inputs


def run_eval_unit(ctx: Ctx, unit: str, folder: Path) -> None:
    from anatomist.evaluate.preference import pair_logps

    model, tok = ctx.loaded
    if unit in ("pre", ""):     # the base: the eval stage's "pre", or the base stage's own folder
        ctx.echo(f"eval base: {len(ctx.prompts)} prompts × {ctx.cfg.eval.samples} samples")
        eval_base(model, tok, ctx.prompts, folder, scorer=ctx.scorer, settings=ctx.cfg.eval, progress=ctx.progress)
        if ctx.heldout_pairs:   # the base's log-probs of the held-out pairs, once for every policy
            lp_c, lp_r = pair_logps(model, tok, ctx.heldout_pairs, max_length=512, batch_size=4)[:2]
            atomic_write_parquet(pd.DataFrame({"pair_id": [p.id for p in ctx.heldout_pairs], "chosen": lp_c,
                                               "rejected": lp_r}), folder / REF_LOGPS)
        return
    from anatomist.models import load

    policy = load(str(ctx.folder("train", unit) / POLICY)).model.to(ctx.device).eval()
    ref = None
    if ctx.heldout_pairs:
        table = pd.read_parquet(ctx.pre_dir / REF_LOGPS)
        assert list(table.pair_id) == [p.id for p in ctx.heldout_pairs], "the base ranked the same held-out pairs"
        ref = (table["chosen"].to_numpy(), table["rejected"].to_numpy())
    ctx.echo(f"eval {unit}: {len(ctx.prompts)} prompts × {ctx.cfg.eval.samples} samples"
             + (f", {len(ctx.heldout_pairs)} held-out pairs" if ctx.heldout_pairs else ""))
    out = eval_policy(policy, tok, ctx.prompts, ctx.heldout_pairs, folder, scorer=ctx.scorer, settings=ctx.cfg.eval,
                      beta=ctx.cfg.train.beta, name=unit, ref_logps=ref, progress=ctx.progress)
    atomic_write_text(folder / "summary.json", dumps({"variant": unit, "heldout_acc": out["heldout_acc"],
                                                       "preference": out.get("preference_summary")}))


EVAL_OUTPUTS = ("behaviour.parquet", REF_LOGPS, "post/behaviour.parquet", "preference.parquet", "summary.json")


# -- verify ----------------------------------------------------------------------------------------

def verify_units(ctx: Ctx) -> list[str]:
    return ctx.variants()


def sweep_cluster(ctx: Ctx) -> tuple[int, float] | None:
    """(cluster, λ) when the shaped run differs from plain by λ on one concept alone: verify then
    scores the shaped run's prediction as a two-point λ sweep (verify.sweep_table)."""
    r = ctx.plan["recipe"]
    if len(r["lam"]) != 1 or r["token_filter"] or r["inoculate"] or r["drop_extreme"] is not None:
        return None
    (k, lam), = r["lam"].items()
    return int(k), float(lam)


def verify_inputs(ctx: Ctx, unit: str) -> dict:
    inputs = {"audit": ctx.digest("audit"), "pre": ctx.digest(*ctx.pre_unit), "post": ctx.digest("eval", unit),
              "train": ctx.digest("train", unit), "n_boot": ctx.cfg.eval.n_boot, "seed": ctx.cfg.eval.seed,
              "spread": ctx.cfg.predict.spread}
    if ctx.cfg.predict.first_order:
        inputs["forecast"] = ctx.digest("predict")
    if unit == "plain" and "shaped" in ctx.variants() and sweep_cluster(ctx):
        inputs["sweep"] = ctx.digest("eval", "shaped")
    return inputs


def run_verify(ctx: Ctx, unit: str, folder: Path) -> None:
    """`verify_run` on the run: the data-only predictors against the measured ΔB per (topic,
    concept) and per concept (verify.json, verify.html)."""
    import shutil

    from anatomist.evaluate.predict import PredictConfig
    from anatomist.evaluate.verify import verify_run

    shutil.copyfile(ctx.folder("train", unit) / TRAIN_PAIRS, folder / TRAIN_PAIRS)
    sweep = sweep_cluster(ctx) if unit == "plain" and "shaped" in ctx.variants() else None
    if sweep is not None:
        accs = {v: json.loads((ctx.folder("eval", v) / "summary.json").read_text())["heldout_acc"]
                for v in ("plain", "shaped")}
        runs = [{"lam": 0.0, "post": "../../eval/plain/post", "heldout_acc": accs["plain"]},
                {"lam": sweep[1], "post": "../../eval/shaped/post", "heldout_acc": accs["shaped"]}]
        atomic_write_text(folder / "sweep.json", dumps({"cluster": sweep[0], "runs": runs}))
    forecast = ctx.folder("predict") / "first_order" / unit
    result = verify_run(ctx.audit_dir, folder, pre=ctx.pre_dir, post=ctx.folder("eval", unit) / "post",
                        cfg=PredictConfig(spread=ctx.cfg.predict.spread), n_boot=ctx.cfg.eval.n_boot,
                        seed=ctx.cfg.eval.seed, first_order=forecast if forecast.is_dir() else None)
    s = result.summary
    ctx.echo(f"verify {unit}: {s['n_rows']} (topic, concept) rows, feature R² {s['predictors']['feature']['r2']:.3f}, "
             f"noise ceiling {s['r2_ceiling']:.3f}")


VERIFY_OUTPUTS = ("verify.json", "verify_rows.parquet", "verify_concepts.parquet")
