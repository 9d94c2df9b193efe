"""Predicted-vs-actual scoring (anatomist/evaluate/verify.py): math, CIs, and a synthetic run."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from anatomist.errors import AnatomistError
from anatomist.evaluate.predict import predict_rows
from anatomist.evaluate.fit import bootstrap_r2, cross_fit, fit_coef, group_means_r2, r2_score, spearman
from anatomist.evaluate.verify import (
    SweepRun,
    actual_shifts,
    paired_shift,
    resolve_run,
    score,
    sweep_table,
    verify_run,
)
from tests.test_evaluate_predict import write_audit


def test_r2_spearman_hand_computed():
    assert r2_score([1, 2, 3], [1, 2, 4]) == pytest.approx(0.5)          # 1 − 1/2
    assert r2_score([1, 2, 3], [2, 2, 2]) == pytest.approx(0.0)          # predicting the mean
    assert r2_score([1, 2, 3], [3, 2, 1]) == pytest.approx(-3.0)         # 1 − 8/2
    assert np.isnan(r2_score([1, 1], [0, 1]))
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)    # 1 − 6·2/(4·15)
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_group_means_r2_hand_computed():
    # y = [1, 3, 5, 7], groups a,a,b,b: means 2, 2, 6, 6; SS_res = 4·1 = 4, SS_tot = 9+1+1+9 = 20
    assert group_means_r2([1.0, 3, 5, 7], np.array(["a", "a", "b", "b"])) == pytest.approx(0.8)
    assert group_means_r2([1.0, 3, 5, 7], np.array([0, 1, 0, 1])) == pytest.approx(1 - 16 / 20)   # means 3, 5
    assert group_means_r2([1.0, 3, 5, 7], np.arange(4)) == pytest.approx(1.0)                     # one row each


def test_cross_fit_hand_computed():
    X = np.array([[1.0], [2.0], [3.0], [4.0]])
    y = np.array([2.0, 4.0, 6.0, 9.0])
    # group 0 from rows 2,3: coef = (18 + 36)/(9 + 16) = 2.16; group 1 from rows 0,1: (2 + 8)/5 = 2
    np.testing.assert_allclose(cross_fit(X, y, np.array([0, 0, 1, 1])), [2.16, 4.32, 6.0, 8.0])
    np.testing.assert_allclose(fit_coef(np.array([[1.0, 0], [0, 1], [1, 1]]), np.array([1.0, 2, 3])), [1, 2])


def test_paired_shift_hand_computed_and_matches_summary():
    pre = np.array([[1.0, 0.0], [3.0, 2.0]])          # per-prompt sums over samples [P, C]
    post = np.array([[4.0, 0.0], [3.0, 6.0]])
    n = np.array([2.0, 2.0])
    shift, lo, hi, se = paired_shift(pre, post, n, n, n_boot=200)
    np.testing.assert_allclose(shift, [(7 - 4) / 4, (6 - 2) / 4])
    assert (lo <= shift).all() and (shift <= hi).all() and (se > 0).all()
    # the same ΔB as the eval helper's summary (per-prompt means, equal samples per prompt)
    rng = np.random.default_rng(1)
    frames = [pd.DataFrame({"prompt_id": np.repeat([f"q{i}" for i in range(6)], 3), "topic": np.repeat(list("aabbbb"), 3),
                            "sample": np.tile(range(3), 6), "c_0": rng.normal(size=18) + m}) for m in (0.0, 0.5)]
    mine = actual_shifts(frames[0], frames[1], [0], n_boot=50).set_index("topic")["actual"]
    for topic in ("a", "b", "all"):
        p = frames[0][(frames[0].topic == topic) | (topic == "all")]
        q = frames[1][(frames[1].topic == topic) | (topic == "all")]
        assert mine[topic] == pytest.approx(q.c_0.mean() - p.c_0.mean())
    try:
        from anatomist.evaluate.behaviour import summarize
    except ImportError:
        return
    ref = summarize(frames[1], frames[0], n_boot=50)
    ref = ref[ref.metric == "c_0"].set_index("topic")["delta"]
    np.testing.assert_allclose(mine.reindex(ref.index), ref, atol=1e-12)


def test_paired_shift_ci_coverage():
    """95% prompt-bootstrap CI of ΔB covers the true shift in ~95% of simulated runs."""
    rng = np.random.default_rng(0)
    reps, P, true = 300, 40, 0.3
    hits = 0
    for _ in range(reps):
        base = rng.normal(size=(P, 1))                                    # prompt effects, shared pre/post
        pre = base + rng.normal(size=(P, 1))
        post = base + true + rng.normal(size=(P, 1))
        _, lo, hi, _ = paired_shift(pre, post, np.ones(P), np.ones(P), n_boot=300, seed=int(rng.integers(1 << 30)))
        hits += bool(lo[0] <= true <= hi[0])
    # binomial sd at 0.95 over 300 runs ≈ 0.013; percentile bootstrap runs slightly narrow for n = 40
    assert 0.89 <= hits / reps <= 0.99


def test_bootstrap_r2_ci():
    rng = np.random.default_rng(0)
    x = rng.normal(size=400)
    y = x + rng.normal(size=400)                       # population R² of ŷ = x: 1 − 1/2 = 0.5
    lo, hi = bootstrap_r2(y, x, n_boot=500)
    assert lo < r2_score(y, x) < hi and lo < 0.5 < hi and hi - lo < 0.3


def test_score_recovers_known_r2():
    """actual = a·x_own + b·x_leak + noise, noise sized so that the population R² is 0.8."""
    rng = np.random.default_rng(0)
    K, C = 8, 60
    rows = pd.DataFrame({"topic": np.repeat([f"t{k}" for k in range(K)], C), "cluster": np.tile(range(C), K),
                         "x_own": rng.normal(size=K * C), "x_leak": np.repeat(rng.normal(size=C)[None], K, 0).ravel(),
                         "x_prompt": rng.normal(size=K * C), "x_naive": 0.0, "se": 0.1})
    signal = 2.0 * rows.x_own + 0.5 * rows.x_leak                        # variance 4 + 0.25
    rows["actual"] = signal + rng.normal(scale=np.sqrt(4.25 / 4), size=K * C)   # R² = 4.25/(4.25 + 4.25/4) = 0.8
    rows["x_naive"] = rows["x_leak"]
    summary, scored = score(rows, n_boot=200)
    feat = summary["predictors"]["feature"]
    assert feat["r2"] == pytest.approx(0.8, abs=0.05)
    assert feat["r2_ci"][0] < feat["r2"] < feat["r2_ci"][1]
    np.testing.assert_allclose(feat["coef_all_rows"], [2.0, 0.5], atol=0.15)
    assert summary["predictors"]["prompt"]["r2"] < 0.05                  # pure noise input
    assert summary["predictors"]["naive"]["r2"] == pytest.approx(0.25 / 5.3125, abs=0.05)
    assert summary["n_rows"] == K * C and scored["yhat_feature"].notna().all()
    assert summary["r2_cluster_means"] == pytest.approx(group_means_r2(rows.actual, rows.cluster))
    assert summary["r2_topic_means"] == pytest.approx(group_means_r2(rows.actual, rows.topic))
    # a given calibration is applied as is, without cross-fitting
    fixed, _ = score(rows, coefs={"feature": [2.0, 0.5]}, n_boot=50)
    assert fixed["predictors"]["feature"]["calibration"] == "given"
    assert fixed["predictors"]["feature"]["r2"] == pytest.approx(r2_score(rows.actual, signal))


def synthetic_run(tmp_path, *, a: float = 40.0, noise: float = 0.02, lam_runs=()):
    """An audit + pre/post eval tables whose true shift is a·x_own (the model's first-order form)."""
    rng = np.random.default_rng(0)
    K, C, P = 4, 6, 120
    names = [f"topic{k}" for k in range(K)]
    topics = rng.integers(0, K, P)
    # each topic pushes a different pair of concepts, with varying strength
    push = rng.normal(scale=1.0, size=(K, C)) * (rng.random((K, C)) < 0.5)
    cr = rng.normal(size=(P, C))
    cc = rng.normal(size=(P, C)) + push[topics]
    audit = write_audit(tmp_path / "audit", cc, cr, topics, names)
    pred = predict_rows(audit).set_index(["topic", "cluster"])
    run = tmp_path / "run"

    def eval_table(shift_of):
        out = []
        for k, name in enumerate(names):
            for q in range(10):
                for s in range(2):
                    row = {"prompt_id": f"{name}-{q}", "topic": name, "sample": s}
                    for c in range(C):
                        row[f"c_{c}"] = shift_of(name, c) + rng.normal(scale=noise) + 0.1 * q
                    out.append(row)
        return pd.DataFrame(out)

    for split, f in (("pre", lambda t, c: 0.0), ("post", lambda t, c: a * pred.loc[(t, c), "x_own"])):
        (run / split).mkdir(parents=True)
        eval_table(f).to_parquet(run / split / "scores.parquet")
    return audit, run, pred, eval_table


def test_verify_run_end_to_end(tmp_path):
    audit, run, pred, _ = synthetic_run(tmp_path)
    result = verify_run(audit, run, n_boot=100)
    s = json.loads((run / "verify.json").read_text())
    assert s["predictors"]["feature"]["r2"] > 0.97 and s["predictors"]["feature"]["rho"] > 0.9
    assert s["predictors"]["feature"]["coef_all_rows"][0] == pytest.approx(40.0, rel=0.05)
    assert s["n_rows"] == len(result.rows) == pred["tested"].sum()
    assert s["predictors"]["naive"]["r2"] < s["predictors"]["feature"]["r2"]
    page = (run / "verify.html").read_text()
    assert "plotly_click" in page and "Content-Security-Policy" in page and "topic0 \\u00b7 cluster" in page
    assert (run / "verify_rows.parquet").is_file() and not list(run.glob(".*tmp*"))


def test_the_first_order_predictor_is_scored_when_its_rows_are_given(tmp_path):
    """A run whose true shift is 3·x_first: verify cross-fits the one scale and finds it; without
    first-order rows the predictor is simply absent, and a calibration naming it is refused."""
    from anatomist.evaluate.predict import apply_calibration
    from anatomist.evaluate.verify import verify

    audit, run, pred, eval_table = synthetic_run(tmp_path)
    rng = np.random.default_rng(5)
    x = {key: rng.normal() for key in pred.index}
    first = pd.DataFrame([{"topic": t, "cluster": c, "x_first_plain": v} for (t, c), v in x.items()]
                         + [{"topic": "all", "cluster": 0, "x_first_plain": 9.9}])
    pre, post = eval_table(lambda t, c: 0.0), eval_table(lambda t, c: 3.0 * x[(t, c)])
    got = verify(audit, pre, post, n_boot=50, tested_only=False, first_order=first).summary["predictors"]
    assert got["first_plain"]["r2"] > 0.95 and got["first_plain"]["coef_all_rows"][0] == pytest.approx(3.0, rel=0.05)
    assert got["first_plain"]["r2"] > got["feature"]["r2"]
    assert "first_plain" not in verify(audit, pre, post, n_boot=50, tested_only=False).summary["predictors"]
    # a topic the first-order rows do not cover (NaN) is left unpredicted; the other topics keep their fit
    gap = first.assign(x_first_plain=np.where(first.topic == "topic0", np.nan, first.x_first_plain))
    part = verify(audit, pre, post, n_boot=50, tested_only=False, first_order=gap).summary["predictors"]["first_plain"]
    assert part["coef_all_rows"][0] == pytest.approx(3.0, rel=0.05) and part["r2"] > 0.95
    assert part["n_rows"] == got["first_plain"]["n_rows"] - (pred.reset_index().topic == "topic0").sum()
    with pytest.raises(AnatomistError, match="x_first_plain"):
        apply_calibration(pred.reset_index(), {"first_plain": [3.0]})


def test_sweep_prediction_and_manifest(tmp_path):
    audit, run, pred, eval_table = synthetic_run(tmp_path)
    a = 40.0
    # shaped runs whose truth follows the shaped first-order form with the plain calibration
    lams = (-4.0, 0.0, 4.0)
    for lam in lams:
        shaped = predict_rows(audit, lam={2: lam} if lam else None).set_index(["topic", "cluster"])
        (run / f"lam{lam}").mkdir()
        eval_table(lambda t, c, shaped=shaped: a * shaped.loc[(t, c), "x_own"]).to_parquet(run / f"lam{lam}" / "scores.parquet")
    (run / "sweep.json").write_text(json.dumps({"cluster": 2, "runs": [
        {"lam": lam, "post": f"lam{lam}", "heldout_acc": 0.7} for lam in lams]}))
    result = verify_run(audit, run, n_boot=100)
    sw = result.sweep
    assert list(sw.lam) == list(lams)
    np.testing.assert_allclose(sw.predicted, sw.actual, atol=0.02 + 0.05 * sw.actual.abs().max())
    assert sw.actual.iloc[0] < sw.actual.iloc[1] < sw.actual.iloc[2]     # λ < 0 suppresses
    assert "λ sweep" in (run / "verify.html").read_text()
    assert result.summary["sweep_check"]["rho"] == pytest.approx(1.0)
    pre = pd.read_parquet(run / "pre" / "scores.parquet")
    one = sweep_table(audit, pre, [SweepRun(0.0, pd.read_parquet(run / "post" / "scores.parquet"))], 2,
                      [a, 0.0], topic="topic1", n_boot=50)
    assert one.topic.iloc[0] == "topic1" and one.predicted.iloc[0] == pytest.approx(a * pred.loc[("topic1", 2), "x_own"])


def test_resolve_run_forms(tmp_path):
    audit, run, _, _ = synthetic_run(tmp_path)
    pre, post = resolve_run(run)
    both = pd.concat([pre.assign(role="pre"), post.assign(role="post")])
    single = tmp_path / "single"
    single.mkdir()
    both.to_parquet(single / "scores.parquet")
    p2, q2 = resolve_run(single)
    assert len(p2) == len(pre) and len(q2) == len(post)
    with pytest.raises(AnatomistError, match="no scores.parquet"):
        resolve_run(tmp_path / "audit")
    wrong = post.assign(topic="elsewhere")
    with pytest.raises(AnatomistError, match="topic"):
        from anatomist.evaluate.verify import verify
        verify(audit, pre.assign(topic="elsewhere"), wrong, n_boot=20)


def test_cli_predict_and_verify(tmp_path):
    from typer.testing import CliRunner

    from anatomist.cli import app

    audit, run, _, _ = synthetic_run(tmp_path)
    runner = CliRunner()
    res = runner.invoke(app, ["predict", str(audit), "--top", "3"])
    assert res.exit_code == 0, res.output
    assert "predictions:" in res.output and (audit / "predictions.parquet").is_file()
    assert len([ln for ln in res.output.splitlines() if ln.startswith("topic")]) == 4   # header + 3 rows
    res = runner.invoke(app, ["verify", str(audit), str(run), "--n-boot", "50"])
    assert res.exit_code == 0, res.output
    assert "feature" in res.output and (run / "verify.html").is_file()
    # a calibration from another run, applied as given
    res = runner.invoke(app, ["predict", str(audit), "--calibration", str(run / "verify.json")])
    assert res.exit_code == 0 and "pred_feature" in res.output
    res = runner.invoke(app, ["predict", str(audit), "--lam", "2"])
    assert res.exit_code != 0


def test_report_escapes_dataset_text(tmp_path):
    rng = np.random.default_rng(0)
    cc, cr = rng.normal(size=(40, 2)) + 1, rng.normal(size=(40, 2))
    topics = np.repeat([0, 1], 20)
    audit = write_audit(tmp_path / "a", cc, cr, topics, ["<b>x</b>", "y&z"], labels=["<script>alert(1)</script>", "ok"])
    frames = []
    for shift in (0.0, 1.0):
        frames.append(pd.DataFrame({"prompt_id": [f"q{i}" for i in range(8)], "topic": ["<b>x</b>"] * 4 + ["y&z"] * 4,
                                    "c_0": rng.normal(size=8) + shift, "c_1": rng.normal(size=8)}))
    run = tmp_path / "run"
    for name, f in zip(("pre", "post"), frames):
        (run / name).mkdir(parents=True)
        f.to_parquet(run / name / "scores.parquet")
    verify_run(audit, run, n_boot=20)
    page = (run / "verify.html").read_text()
    assert "<script>alert" not in page and "<b>x</b>" not in page


def test_train_pairs_are_checked_against_the_audit(tmp_path):
    """RUN_DIR/train_pairs.json joins the run's pairs to the audit by id; with text hashes a pair the
    audit scored under other texts is refused, as everywhere an id is looked up in an audit."""
    audit, run, _, _ = synthetic_run(tmp_path)
    table = pd.read_parquet(audit / "pairs.parquet")
    table["text_hash"] = "h-" + table["pair_id"]
    table.to_parquet(audit / "pairs.parquet")
    ids = list(dict.fromkeys(table["pair_id"]))
    (run / "train_pairs.json").write_text(json.dumps([{"id": i, "text_hash": f"h-{i}"} for i in ids[:-3]]))
    assert verify_run(audit, run, n_boot=20).summary["n_rows"] > 0
    (run / "train_pairs.json").write_text(json.dumps([{"id": i, "text_hash": "other"} for i in ids[:-3]]))
    with pytest.raises(AnatomistError, match=f"train_pairs.json: pair '{ids[0]}' holds other texts than the audit"):
        verify_run(audit, run, n_boot=20)
    (run / "train_pairs.json").write_text(json.dumps([*ids[:2], "zz"]))       # bare ids (older runs)
    with pytest.raises(AnatomistError, match="pair 'zz' is not in the audit"):
        verify_run(audit, run, n_boot=20)


def test_row_bootstrap_pairs_predictors_and_sign_accuracy_counts_sure_rows():
    from anatomist.evaluate.fit import row_bootstrap, sign_accuracy

    rng = np.random.default_rng(0)
    y = rng.normal(size=200)
    good, bad = y + 0.3 * rng.normal(size=200), rng.normal(size=200)
    out = row_bootstrap(y, {"good": good, "bad": bad}, baselines=("bad",), n_boot=300)
    est, lo, hi = out["good"]["r2_minus_bad"]
    assert est == pytest.approx(r2_score(y, good) - r2_score(y, bad)) and 0 < lo < est < hi
    assert "r2_minus_bad" not in out["bad"]
    assert out["good"]["r2_ci"][0] < r2_score(y, good) < out["good"]["r2_ci"][1]
    assert out["good"]["rho_ci"][0] > 0.8 and out["bad"]["rho_ci"][0] < 0 < out["bad"]["rho_ci"][1]
    # sign accuracy: only rows marked sure count; by hand 2 of 3
    acc, n = sign_accuracy(np.array([1.0, -2.0, 3.0, 0.1]), np.array([0.5, 1.0, 2.0, -9.0]),
                           np.array([True, True, True, False]))
    assert (acc, n) == (pytest.approx(2 / 3), 3)
    assert np.isnan(sign_accuracy(y[:2], y[:2], np.zeros(2, bool))[0])


def test_per_concept_level_is_scored_leave_one_concept_out(tmp_path):
    """The dataset-wide level: y = 2·x_first_plain(all) per concept, recovered across concepts."""
    from anatomist.evaluate.verify import verify

    audit, run, pred, eval_table = synthetic_run(tmp_path)
    clusters = sorted({c for _, c in pred.index})
    x_all = {c: float(i) - 1.0 for i, c in enumerate(clusters)}
    first = pd.DataFrame([{"topic": t, "cluster": c, "x_first_plain": x_all[c]} for t, c in pred.index]
                         + [{"topic": "all", "cluster": c, "x_first_plain": v} for c, v in x_all.items()])
    pre, post = eval_table(lambda t, c: 0.0), eval_table(lambda t, c: 2.0 * x_all[c])
    res = verify(audit, pre, post, n_boot=50, tested_only=False, first_order=first)
    got = res.summary["concept"]
    assert got["calibrated_across"] == "cluster" and got["n_rows"] == len(clusters)
    assert got["predictors"]["first_plain"]["coef_all_rows"][0] == pytest.approx(2.0, rel=0.05)
    assert set(res.concepts.topic) == {"all"} and "yhat_first_plain" in res.concepts
