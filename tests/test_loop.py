"""`anatomist loop`: the recipe reader, skip/rerun by input hash, and both example recipes run end
to end at tiny size (a tiny random Llama, a tiny SAE, organism sampling stubbed as in
test_cli_chain.py), including a kill mid-run and the resumed run's tables."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from conftest import REPO, tiny_llama
from test_organism import _fake_results
from test_organism_score import _stub_results

from anatomist.errors import AnatomistError
from anatomist.loop import read_config, run_loop
from anatomist.loop.units import RECORD, read_record, run_unit

pytestmark = pytest.mark.usefixtures("one_thread")

EXAMPLES = REPO / "examples"


# -- the recipe ------------------------------------------------------------------------------------

def write(tmp_path: Path, obj, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(obj if isinstance(obj, str) else yaml.safe_dump(obj))
    return path


def test_examples_read_with_their_comments_meaning_what_they_say():
    org = read_config(EXAMPLES / "organism-shaped.yaml")
    assert org.data.source == "organism" and org.data.per_topic == 80
    assert org.shape.lam == {"flagged:over_formatting": -4.0, "flagged:flattery": -4.0} and org.shape.baseline
    assert org.train.lr == 5e-5 and org.train.train_layers == 4 and org.eval.samples == 4
    hh = read_config(EXAMPLES / "hh-plain-vs-shaped.yaml", out="elsewhere")
    assert hh.data.source == "organism-hh" and hh.out == "elsewhere"
    assert (REPO / hh.data.path).resolve() == (REPO.parent / "shared" / "data" /
                                               "hh-rlhf-harmless-base-test-dev.jsonl.gz").resolve()


def test_defaults_types_and_the_default_run_folder(tmp_path):
    cfg = read_config(write(tmp_path, {"train": {"lr": "5e-5", "steps": 3}, "shape": {"lam": {3: -1}}}, "my.yaml"))
    assert cfg.train.lr == 5e-5 and cfg.train.steps == 3 and cfg.train.beta == 0.1   # a default kept
    assert cfg.shape.lam == {"3": -1.0}                    # a cluster id key is a concept name
    assert cfg.out == str(Path("runs") / "loop" / "my") and cfg.data.source == "organism"
    cfg = read_config(write(tmp_path, {"audit": {"topic_range": [2, 5]}, "shape": {"token_filter": {
        "concepts": ["flagged"], "tau": 2}}}))
    assert cfg.audit.topic_range == (2, 5) and cfg.shape.token_filter.tau == 2.0


@pytest.mark.parametrize("recipe, message", [
    ({"modle": "x"}, r"recipe.yaml: unknown field 'modle'"),
    ({"train": {"stpes": 3}}, r"recipe.yaml: unknown field 'train.stpes'"),
    ({"train": {"steps": "three"}}, r"recipe.yaml: field 'train.steps' must be int or null, got str 'three'"),
    ({"train": {"steps": 2.5}}, r"field 'train.steps' must be int"),
    ({"shape": {"baseline": "yes"}}, r"field 'shape.baseline' must be bool"),
    ({"shape": {"lam": {"3": "strong"}}}, r"field 'shape.lam.3' must be float"),
    ({"shape": {"token_filter": {"tau": 1, "sidez": "both"}}}, r"unknown field 'shape.token_filter.sidez'"),
    ({"audit": {"topic_range": [2]}}, r"field 'audit.topic_range' must be a list of 2 int, got list \[2\]"),
    ({"audit": {"alpha": 2.0}}, r"recipe.yaml: audit: alpha must be in \(0, 1\)"),
    ({"data": {"source": "file"}}, r"recipe.yaml: data: data.path"),
    ({"eval": 3}, r"recipe.yaml: eval must be a mapping of fields, got int 3"),
    ({"predict": {"first_order": True}, "eval": {"samples": 2}}, r"recipe.yaml: predict.first_order needs eval"),
    ("model: [unclosed", r"recipe.yaml \(line 1\): not valid YAML"),
])
def test_bad_recipes_fail_in_one_line_naming_file_and_field(tmp_path, recipe, message):
    with pytest.raises(AnatomistError, match=message) as e:
        read_config(write(tmp_path, recipe))
    assert "\n" not in str(e.value)


# -- skip / rerun by input hash --------------------------------------------------------------------

def test_units_skip_on_same_inputs_rerun_from_scratch_on_new_ones_and_resume_after_a_kill(tmp_path):
    folder, calls = tmp_path / "unit", []

    def body(value):
        def run():
            calls.append(value)
            (folder / "part").write_text("kept")        # what a resumable stage leaves behind
            if value == "kill":
                raise KeyboardInterrupt
            (folder / "result.txt").write_text(value)
        return run

    assert run_unit(folder, {"x": 1}, body("a"), outputs=("result.txt",)) == "ran"
    first = read_record(folder)
    assert first["done"] and first["inputs"] == {"x": 1}
    assert run_unit(folder, {"x": 1}, body("b"), outputs=("result.txt",)) == "skipped"
    assert calls == ["a"] and (folder / "result.txt").read_text() == "a"
    (folder / "stale").write_text("from the old inputs")
    assert run_unit(folder, {"x": 2}, body("c"), outputs=("result.txt",)) == "reran"
    assert not (folder / "stale").exists() and (folder / "result.txt").read_text() == "c"
    assert read_record(folder)["outputs_hash"] != first["outputs_hash"]      # downstream units see the change
    with pytest.raises(KeyboardInterrupt):
        run_unit(folder, {"x": 3}, body("kill"), outputs=("result.txt",))
    assert not read_record(folder)["done"] and (folder / "part").is_file()
    assert run_unit(folder, {"x": 3}, body("d"), outputs=("result.txt",)) == "resumed"
    assert calls == ["a", "c", "kill", "d"] and read_record(folder)["done"]


def test_flagged_selectors_pick_flagged_rows_in_rank_order_and_by_tracked_detector():
    from types import SimpleNamespace

    from anatomist.loop.plan import expand, flagged_concepts

    rows = pd.DataFrame({"cluster": [2, 0, 2, 1, 3, -1], "topic": ["a", "all", "all", "b", "a", "a"],
                         "direction": ["amplify", "suppress", "amplify", "none", "amplify", "amplify"]})
    tracks = {0: [{"detector": "urls"}], 2: [{"detector": "over_formatting"}, {"detector": "urls"}], 3: []}
    audit = SimpleNamespace(rows=rows, tracks=tracks)
    assert flagged_concepts(audit) == [2, 0, 3]                 # 1: not flagged; -1 (length) is not a cluster
    assert flagged_concepts(audit, "urls") == [2, 0]
    assert expand(audit, "flagged:over_formatting") == ([2], "flagged:over_formatting")
    assert expand(audit, "7") == (["7"], "named")


# -- the examples at tiny size ---------------------------------------------------------------------

TINY = {"train": {"steps": 2, "train_layers": 1, "max_length": 64, "max_response_tokens": 32, "batch_size": 2,
                  "grad_accum": 1, "lr": 1e-3, "ckpt_every": 1},
        "eval": {"prompts_per_topic": 2, "samples": 4, "max_new_tokens": 4, "heldout_limit": 12, "n_boot": 20,
                 "batch_size": 8},
        "audit": {"min_support": 2, "n_boot": 20, "label_contexts": 4, "n_examples": 2, "batch_size": 16}}


def tiny_recipe(tmp_path: Path, example: str, **changes) -> Path:
    """The example recipe with the tiny model and SAE, and sizes that keep the test short."""
    recipe = yaml.safe_load((EXAMPLES / example).read_text())
    recipe.update(model=str(tmp_path / "tiny"), sae=str(tmp_path / "sae"))
    for key, values in {**TINY, **changes}.items():
        recipe[key] = {**recipe.get(key, {}), **values}
    return write(tmp_path, recipe, example)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, smol_tokenizer):
    """A tiny random Llama with the real tokenizer, a tiny SAE on its last block, and organism
    sampling stubbed (a random model's text plants no traits)."""
    from anatomist.organism import build as B
    from anatomist.sae import SAE, SAEConfig, save_sae

    tmp = tmp_path_factory.mktemp("loop")
    tiny_llama(vocab_size=49152, hidden_size=16, layers=2).save_pretrained(tmp / "tiny")
    smol_tokenizer.save_pretrained(tmp / "tiny")
    save_sae(SAE(SAEConfig(d_in=16, d_sae=64, architecture="topk", k=4, layer=1, model=str(tmp / "tiny")))
             .init_weights(torch.Generator().manual_seed(0)), tmp / "sae")
    import importlib

    batched = importlib.import_module("anatomist.spec_decode.batched")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)     # as every test here runs (one_thread): sums, and so the runs, do not differ
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(B, "generate", lambda model, tok, requests, settings, **kw: _stub_results(requests))
        mp.setattr(batched, "generate", _hh_or_real(batched.generate))
        mp.setenv("ANATOMIST_CACHE", str(tmp / "cache"))
        yield tmp
    torch.set_num_threads(threads)


def _hh_or_real(real):
    """build_hh's trait generations are stubbed; evaluation samples the tiny model for real."""
    def generate(model, tok, requests, *a, **k):
        if model is None or all("/" in r.key for r in requests):
            return _fake_results(requests)
        return real(model, tok, requests, *a, **k)
    return generate


def tables(out: Path) -> dict[str, pd.DataFrame]:
    """Every table the loop's result rests on (generations are scored; texts compared too)."""
    names = ["audit/rows.parquet", "predict/plain.parquet", "base/behaviour.parquet",
             *[f"predict/first_order/{v}/first_order.parquet" for v in ("plain", "shaped")],
             *[f"eval/{v}/post/behaviour.parquet" for v in ("plain", "shaped")],
             *[f"eval/{v}/preference.parquet" for v in ("plain", "shaped")],
             *[f"verify/{v}/verify_rows.parquet" for v in ("plain", "shaped")]]
    return {n: pd.read_parquet(out / n) for n in names}


@pytest.fixture(scope="module")
def organism_run(tiny):
    """The organism example, shaped on cluster 0 (a random model flags nothing reliably), whole, with
    the first-order forecast (the HH test runs without it)."""
    recipe = tiny_recipe(tiny, "organism-shaped.yaml", data={"per_topic": 16}, shape={"lam": {"0": -2.0}},
                         predict={"first_order": True, "grad_share": 0.5})
    lines: list[str] = []
    ctx = run_loop(read_config(recipe, out=tiny / "org"), config_path=str(recipe), echo=lines.append)
    return ctx, recipe, lines


def test_organism_example_runs_end_to_end_and_writes_the_report(organism_run):
    ctx, _, lines = organism_run
    out = ctx.out
    assert ctx.variants() == ["plain", "shaped"]
    for stage in ("data", "screen", "audit", "base", "predict", "shape", "train/plain", "train/shaped",
                  "eval/plain", "eval/shaped", "verify/plain", "verify/shaped", "report"):
        assert read_record(out / stage)["done"], stage
    assert not (out / "eval" / "pre").exists()                # the base eval ran before predict, once
    for v, lam in (("plain", {}), ("shaped", {"0": -2.0})):
        meta = json.loads((out / "predict" / "first_order" / v / "first_order.json").read_text())
        assert meta["lam"] == lam and meta["half"] == "even" and meta["grad_pairs"] == 42   # half of 84 pairs
        verify = json.loads((out / "verify" / v / "verify.json").read_text())
        assert "first_adam" in verify["predictors"] and verify["first_order"].endswith("base samples it did not read")
    plan = json.loads((out / "predict" / "plan.json").read_text())
    assert plan["recipe"]["lam"] == {"0": -2.0} and plan["concepts"][0]["how"] == "named"
    shaped = pd.read_parquet(out / "shape" / "pairs.parquet")
    delta = pd.read_parquet(out / "audit" / "pairs.parquet").query("cluster == 0").set_index("pair_id")
    # offset = λ·Δc of cluster 0, pair by pair (DESIGN.md: L = −log σ(β·Δθ − λ·Δc))
    assert (shaped.set_index("pair_id")["offset"] - (-2.0) * delta["delta"]).abs().max() < 1e-6
    # the shaped run trained on offsets, the plain one not: different policies, different generations
    texts = {v: pd.read_parquet(out / "eval" / v / "post" / "behaviour.parquet")["text"] for v in ("plain", "shaped")}
    assert len(texts["plain"]) == 7 * 2 * 4
    sweep = json.loads((out / "verify" / "plain" / "verify.json").read_text())["sweep"]
    assert sorted(r["lam"] for r in sweep) == [-2.0, 0.0]     # the shaped run scored as a two-point λ sweep
    html = (out / "report" / "report.html").read_text()
    for heading in ("Screen", "Audit", "What was shaped and why", "Predicted vs measured behaviour shift",
                    "Held-out preference accuracy", "Run: shaped"):
        assert f">{heading}<" in html, heading
    assert html.count("<td>shaped</td>") >= 2            # C0's predicted vs measured rows, in both runs
    assert any(line.startswith("plan: C0") for line in lines)
    assert any("predicted shifts, shaped DPO" in line for line in lines)


def test_a_rerun_skips_every_stage_and_a_new_lambda_retrains_only_the_shaped_run(organism_run, monkeypatch):
    from anatomist.loop import runs

    ctx, recipe, _ = organism_run
    out = ctx.out.parent / "org-rerun"         # a copy: the other tests read the original
    shutil.copytree(ctx.out, out)
    before = tables(out)
    monkeypatch.setattr(runs, "train_policy", lambda *a, **k: pytest.fail("a finished run was retrained"))
    lines: list[str] = []
    run_loop(read_config(recipe, out=out), echo=lines.append)
    assert all("skipped" in line for line in lines if line.startswith("["))
    assert sum(line.startswith("[") for line in lines) == 13
    for name, frame in tables(out).items():
        pd.testing.assert_frame_equal(frame, before[name])

    trained = []
    monkeypatch.setattr(runs, "train_policy", lambda base, tok, shaped, cfg, out, **k: (
        trained.append(Path(out).name), pytest.skip("stop before training: what reruns is decided")))
    changed = yaml.safe_load(recipe.read_text())
    changed["shape"]["lam"] = {"0": -3.0}
    with pytest.raises(pytest.skip.Exception):
        run_loop(read_config(write(recipe.parent, changed, "changed.yaml"), out=out), echo=lines.append)
    assert trained == ["shaped"]                               # plain DPO does not read λ: kept


def reuse_audit(src: Path, out: Path) -> None:
    """Start `out` from `src`'s finished data, screen and audit folders. scikit-network's Leiden
    draws from C's unseeded rand() (leiden_core.pyx), so a second audit in the same process can
    cluster differently; in a fresh process (each CLI run) it repeats. The audit's own resume after
    a kill is tests/test_resume_kill.py's."""
    for stage in ("data", "screen", "audit"):
        shutil.copytree(src / stage, out / stage)


def test_killed_mid_run_the_rerun_resumes_and_gives_the_same_tables(organism_run, monkeypatch):
    import anatomist.train as T
    from anatomist.loop import runs

    ctx, recipe, _ = organism_run
    out = ctx.out.parent / "org-killed"
    reuse_audit(ctx.out, out)
    real_dpo, real_eval = T.train_dpo, runs.eval_policy

    def dpo_killed(*a, **k):                  # the shaped run dies after its first step's checkpoint
        if Path(a[4]).name == "shaped":
            real_dpo(*a, **{**k, "stop_after": 1})
            raise KeyboardInterrupt
        return real_dpo(*a, **k)

    def eval_killed(*a, name, **k):
        if name == "shaped":
            raise KeyboardInterrupt
        return real_eval(*a, name=name, **k)
    monkeypatch.setattr(T, "train_dpo", dpo_killed)
    with pytest.raises(KeyboardInterrupt):
        run_loop(read_config(recipe, out=out), echo=lambda s: None)
    assert read_record(out / "train" / "plain")["done"] and not read_record(out / "train" / "shaped")["done"]
    assert (out / "train" / "shaped" / "checkpoint.pt").is_file() and not (out / "eval").exists()
    monkeypatch.setattr(T, "train_dpo", real_dpo)
    monkeypatch.setattr(runs, "eval_policy", eval_killed)
    with pytest.raises(KeyboardInterrupt):
        run_loop(read_config(recipe, out=out), echo=lambda s: None)
    assert read_record(out / "eval" / "plain")["done"] and not read_record(out / "eval" / "shaped")["done"]
    assert not (out / "verify").exists()
    monkeypatch.setattr(runs, "eval_policy", real_eval)
    lines: list[str] = []
    run_loop(read_config(recipe, out=out), echo=lines.append)
    assert "[train/shaped] done earlier, skipped: DPO per variant" in lines
    assert any(line.startswith("[eval/shaped] running") for line in lines)
    want = tables(ctx.out)
    for name, frame in tables(out).items():
        pd.testing.assert_frame_equal(frame, want[name], obj=name)
    assert "first_adam" in json.loads((out / "verify" / "shaped" / "verify.json").read_text())["predictors"]


def test_hh_example_plain_vs_shaped_at_tiny_size(tiny, monkeypatch):
    monkeypatch.chdir(REPO)                    # the example's data path is relative to the repository root
    recipe = tiny_recipe(tiny, "hh-plain-vs-shaped.yaml", data={"limit": 60, "heldout": 40},
                         shape={"lam": {"flagged:flattery": -4.0, "flagged:no_such_detector": 2.0, "1": -1.0}})
    lines: list[str] = []
    ctx = run_loop(read_config(recipe, out=tiny / "hh"), echo=lines.append)
    plan = json.loads((ctx.out / "predict" / "plan.json").read_text())
    assert plan["selectors"]["flagged:no_such_detector"] == []
    assert "plan: flagged:no_such_detector: the audit flagged no such concept (nothing shaped for it)" in lines
    assert plan["recipe"]["lam"]["1"] == -1.0 and ctx.variants() == ["plain", "shaped"]
    assert all(c["how"] in ("named", "flagged:flattery") for c in plan["concepts"])
    prompts = pd.read_parquet(ctx.out / "eval" / "pre" / "behaviour.parquet")   # no forecast: the base in eval/
    assert set(prompts.topic) <= {"violence", "theft_fraud", "drugs_alcohol", "insults_bias", "other"}
    assert json.loads((ctx.out / "eval" / "shaped" / "summary.json").read_text())["preference"]["n"] == 12
    assert (ctx.out / "report" / "report.html").is_file()


def test_until_predict_stops_before_training(tiny):
    recipe = tiny_recipe(tiny, "organism-shaped.yaml", data={"per_topic": 16}, shape={"lam": {"0": -2.0}},
                         predict={"first_order": True})
    out = tiny / "org-until"
    if (tiny / "org" / "audit" / RECORD).is_file():        # the organism is audited already: reuse it
        reuse_audit(tiny / "org", out)
    lines: list[str] = []
    run_loop(read_config(recipe, out=out), until="predict", echo=lines.append)
    assert (out / "predict" / "plan.json").is_file() and not (out / "shape").exists()
    assert not (out / "train").exists() and read_record(out / "base")["done"]
    assert any("predicted shifts, plain DPO" in line for line in lines)
    assert any("first-order forecast, shaped DPO, per concept" in line for line in lines)
    assert (out / "data" / RECORD).is_file()


def test_the_shaping_benchmark_runs_its_variants_as_loop_units(organism_run, tmp_path, monkeypatch):
    import sys
    from types import SimpleNamespace

    from anatomist.shape.pairs import plain

    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    sys.modules.pop("shaping", None)
    import predict_vs_actual as pva
    import shaping

    ctx = organism_run[0]
    model, tok = ctx.loaded
    args = SimpleNamespace(work=tmp_path, steps=1, lr=1e-3, beta=0.1, train_layers=1, seed=0, samples=1,
                           max_new_tokens=4)
    call = ("plain", plain(ctx.pairs[:8]), {}, args, model, tok, ctx.scorer, ctx.prompts[:3], ctx.heldout_pairs[:4],
            {"pairs": "first 8"}, 0.0, None)
    first = shaping.run_variant(*call)
    run = Path(first["run"])
    assert run.name == f"plain-{shaping.settings_key({'pairs': 'first 8', 'variant': 'plain'})}"
    assert read_record(run)["done"] and len(first["preference"]) == 4 and len(first["frame"]) == 3
    monkeypatch.setattr(pva, "train_and_eval", lambda *a, **k: pytest.fail("a finished variant was rerun"))
    again = shaping.run_variant(*call)
    pd.testing.assert_frame_equal(again["frame"], first["frame"])
    (run / RECORD).unlink()                   # a run finished before stage records: adopted, not redone
    pd.testing.assert_frame_equal(shaping.run_variant(*call)["preference"], first["preference"])


def test_a_preference_file_runs_to_the_plan_and_an_edited_file_reruns_what_reads_it(organism_run, tmp_path):
    ctx = organism_run[0]
    data = tmp_path / "pairs.jsonl"
    shutil.copyfile(ctx.data["train"], data)
    recipe = write(tmp_path, {"model": ctx.cfg.model, "sae": ctx.cfg.sae, "audit": TINY["audit"],
                              "data": {"source": "file", "path": str(data), "topic_column": "topic",
                                       "prompts": ctx.data["prompts"]},
                              "shape": {"lam": {"flagged": -1.0}}})
    out = tmp_path / "run"
    run_loop(read_config(recipe, out=out), until="predict", echo=lambda s: None)
    record = json.loads((out / "data" / "data.json").read_text())
    assert record["train"] == str(data) and record["heldout_pairs"] is None and record["truth"] is None
    screen = pd.read_parquet(out / "screen" / "screen.parquet")
    assert set(screen.topic) >= {"all", "coding"}                       # per-topic rows from the column
    plan = json.loads((out / "predict" / "plan.json").read_text())
    flagged = pd.read_parquet(out / "audit" / "rows.parquet").query("direction != 'none'").cluster.unique()
    assert sorted(int(k) for k in plan["recipe"]["lam"]) == sorted(int(k) for k in flagged)
    assert all(c["how"] == "flagged" and c["flagged_rows"] for c in plan["concepts"])

    lines: list[str] = []
    run_loop(read_config(recipe, out=out), until="predict", echo=lines.append)
    assert all("skipped" in line for line in lines if line.startswith("["))
    data.write_text("".join(data.read_text().splitlines(keepends=True)[:-1]))       # one pair fewer
    lines.clear()
    run_loop(read_config(recipe, out=out), until="predict", echo=lines.append)
    assert [line.split("]")[0][1:] for line in lines if "inputs changed" in line] == ["data", "screen", "audit",
                                                                                      "predict"]
    assert json.loads((out / "audit" / "audit.json").read_text())["data"]["n_pairs"] == len(ctx.pairs) - 1


@pytest.mark.slow
def test_organism_example_on_the_real_model_at_small_size(tmp_path):
    """The organism recipe as shipped (the default model and SAE, shaping the flagged concepts that track
    over_formatting or flattery),
    only smaller: 16 prompts per topic, 4 DPO steps, 2 held-out prompts per topic."""
    recipe = yaml.safe_load((EXAMPLES / "organism-shaped.yaml").read_text())
    recipe["data"]["per_topic"] = 16
    recipe["train"].update(steps=4, train_layers=2)
    recipe["eval"].update(prompts_per_topic=2, max_new_tokens=32, n_boot=200)
    path = write(tmp_path, recipe, "organism-shaped.yaml")
    ctx = run_loop(read_config(path, out=tmp_path / "run"), config_path=str(path), echo=lambda s: None)
    plan = json.loads((ctx.out / "predict" / "plan.json").read_text())
    for c in plan["concepts"]:
        trait = c["how"].partition(":")[2]
        assert trait in ("over_formatting", "flattery") and any(t["detector"] == trait for t in c["tracks"])
    assert ctx.variants() == (["plain"] if plan["recipe_is_plain"] else ["plain", "shaped"])
    for v in ctx.variants():
        assert json.loads((ctx.out / "verify" / v / "verify.json").read_text())["n_rows"] > 0
    assert (ctx.out / "report" / "report.html").is_file()
