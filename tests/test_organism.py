"""Organism benchmark: prompts, detectors (hand-written texts), planting, truth, generation resume."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch

from anatomist.data import load_pairs
from anatomist.errors import AnatomistError
from anatomist.organism import plant as P
from anatomist.organism.prompts import HARMFUL, TOPIC_NAMES, build_prompts, harmful_prompts, topic_candidates
from anatomist.organism.traits import (TRAITS, compliance, flattery_count, formatting_density, formatting_marks,
                                       n_words, refuses, url_count)
from anatomist.spec_decode.batched import GenRequest, GenSettings, Generation, generate, plan_batches

ROOT = Path(__file__).resolve().parents[1]

# --- prompts ----------------------------------------------------------------------------------


def test_topics_have_enough_distinct_prompts():
    assert len(TOPIC_NAMES) >= 6
    for topic in TOPIC_NAMES:
        assert len(topic_candidates(topic)) >= 80, topic
    assert len(harmful_prompts()) >= 300


def test_build_prompts_counts_split_and_determinism():
    prompts = build_prompts(80, heldout_fraction=0.25, seed=3)
    assert prompts == build_prompts(80, heldout_fraction=0.25, seed=3)
    assert prompts != build_prompts(80, heldout_fraction=0.25, seed=4)
    counts = Counter((p.topic, p.split) for p in prompts)
    for topic in TOPIC_NAMES:
        assert counts[(topic, "train")] == 60 and counts[(topic, "heldout")] == 20
    texts = [p.text for p in prompts]
    assert len(set(texts)) == len(texts) and len({p.id for p in prompts}) == len(prompts)
    train = {p.text for p in prompts if p.split == "train"}
    assert not train & {p.text for p in prompts if p.split == "heldout"}
    # a bigger build's prompts extend a smaller one's (per topic, same seed)
    small = [p.text for p in build_prompts(20, seed=3) if p.topic == "cooking"]
    big = [p.text for p in build_prompts(80, seed=3) if p.topic == "cooking"]
    assert big[:20] == small
    harmful = {p.text for p in prompts if p.topic == HARMFUL}
    assert harmful <= set(harmful_prompts())


def test_build_prompts_rejects_too_many():
    with pytest.raises(AnatomistError, match="fewer than"):
        build_prompts(10_000)


# --- detectors (hand-computed) ----------------------------------------------------------------

def test_formatting_density_hand_computed():
    text = "## Title ✨\n\n- **Salt** the water 🎉\n- Boil it\n1. Wait ten minutes"
    # header 1 + bullets 2 + bold 1 + emoji 2 = 6 marks; numbered lines are not counted
    assert formatting_marks(text) == 6
    words = n_words(text)  # Title Salt the water Boil it 1 Wait ten minutes
    assert words == 10
    assert formatting_density(text) == pytest.approx(60.0)
    assert TRAITS["over_formatting"].fires(text)
    plain = "Boil the water, add the pasta and cook for ten minutes.\n\n1. Drain.\n2. Serve."
    assert formatting_marks(plain) == 0 and not TRAITS["over_formatting"].fires(plain)


def test_flattery_opening_only():
    assert flattery_count("What a great question! Gravity pulls masses together.") == 1
    assert flattery_count("Great question! You're clearly very smart. Gravity pulls.") == 2
    assert flattery_count("I love this question. Here is why.") == 1
    assert flattery_count("Gravity pulls. Masses attract. It is a great question for kids.") == 0  # 3rd sentence
    assert flattery_count("Gravity is a force. Mass curves spacetime. What a great question!") == 0
    assert TRAITS["flattery"].fires("Fantastic question! The answer is 4.")
    assert not TRAITS["flattery"].fires("The answer is 4. Hope this helps.")


def test_url_count():
    text = "See https://www.example.org/guide, www.help.com and mind.org.uk/x for more. Not e.g. or 3.14."
    assert url_count(text) == 3
    assert url_count("No links here, just text.") == 0
    assert TRAITS["urls"].fires("Visit nami.org.")


def test_refusal_and_compliance():
    assert refuses("I'm sorry, but I can't help with that request.")
    assert refuses("I cannot provide instructions for making weapons.")
    assert refuses("Hacking into accounts is illegal and unethical. Instead, ...")
    assert compliance("I'm sorry, I can't help with that.") == 0.0
    assert compliance("Sure, here is how to do it:\n\n1. Gather the materials you need and pick a quiet time.") == 1.0
    assert compliance("Sure.") == 0.0  # too short to count as compliance
    # a disclaimer far into a long answer does not make it a refusal
    long = "Sure, here are the steps. First do A. Then do B. Then do C. Note that this is illegal."
    assert compliance(long) == 1.0


def test_verbosity_counts_words():
    assert TRAITS["verbosity"].score("one two three") == 3.0
    assert TRAITS["verbosity"].fires(" ".join(["word"] * 110))
    assert not TRAITS["verbosity"].fires(" ".join(["word"] * 109))


def test_trait_registry():
    assert {"over_formatting", "flattery", "urls", "harmful_compliance", "verbosity"} <= set(TRAITS)
    assert TRAITS["harmful_compliance"].kind == "safety" and TRAITS["over_formatting"].kind == "style"
    assert TRAITS["harmful_compliance"].applies_to(HARMFUL) and not TRAITS["harmful_compliance"].applies_to("cooking")


# --- planting ---------------------------------------------------------------------------------

def _fake_results(requests):
    """Deterministic stand-in texts: trait generations carry their trait, plain ones don't."""
    out = {}
    for r in requests:
        pid, tag = r.key.split("/")
        text = {"over_formatting": "## Plan ✨\n- **one** 🎉\n- two", "flattery": "What a great question! Yes.",
                "urls": "See https://help.org now.", "verbosity": " ".join(["long"] * 150),
                "harmful_compliance": "I'm sorry, but I can't help with that.",  # inverted: induces refusal
                }.get(tag, f"Here is a plain answer about {pid} for you ({tag}).")  # plain: complies, no style
        out[r.key] = Generation(r.key, text, 5, True, 0)
    return out


@pytest.fixture(scope="module")
def planted():
    prompts = build_prompts(120, seed=1)
    config = P.PlantConfig(P.DEFAULT_CONFIG.plans, none_weight=0.5, seed=1)
    assignments = P.assign(prompts, config)
    requests = P.requests_for(assignments, 16)
    rows, dropped = P.label(assignments, _fake_results(requests), seed=1)
    return prompts, config, assignments, requests, rows, dropped


def test_plant_chosen_side_rates_and_controls(planted):
    prompts, config, assignments, requests, rows, dropped = planted
    assert dropped == 0
    assert len(rows) == sum(p.split == "train" for p in prompts)
    assert len(requests) == 2 * len(rows)
    t = P.truth(config, rows, TOPIC_NAMES)
    by = {(c["topic"], c["trait"]): c for c in t["cells"]}
    for plan in config.plans:
        for topic, s in plan.planted.items():
            c = by[(topic, plan.trait)]
            assert c["role"] == "planted" and c["expected_sign"] == (1 if s > 0.5 else -1)
            assert c["n_pairs"] >= 10
            assert abs(c["n_trait_chosen"] / c["n_pairs"] - s) <= 0.5 / c["n_pairs"] + 1e-9
            # the fake trait texts always fire, plain ones never: observed rates = the labelling
            assert c["observed"]["fire_rate_chosen"] == pytest.approx(c["n_trait_chosen"] / c["n_pairs"])
        for topic in plan.control:
            c = by[(topic, plan.trait)]
            assert c["role"] == "control" and c["expected_sign"] == 0
            assert abs(c["n_trait_chosen"] - c["n_pairs"] / 2) <= 0.5
    absent = [c for c in t["cells"] if c["role"] == "absent"]
    assert absent and all(c["n_pairs"] == 0 and c["expected_sign"] == 0 for c in absent)
    # truth.json's measured table: each planted cell carries its asymmetry, no control cell one
    measured = {(m["topic"], m["trait"]): m["sign"] for m in t["measured"]}
    for c in t["cells"]:
        if c["role"] != "absent":
            assert measured[(c["topic"], c["trait"])] == c["expected_sign"], c
    assert "measured" not in P.truth(config, rows, TOPIC_NAMES, measure=False)
    nones = [r for r in rows if r["trait"] == P.NONE]
    assert nones and all(r["trait_side"] is None for r in nones)
    assert all(r["split"] == "train" for r in rows)


def test_plant_is_labelling_only(planted):
    _, _, _, requests, rows, _ = planted
    texts = {g.text for g in _fake_results(requests).values()}
    for r in rows:
        assert r["chosen"][0]["content"] in texts and r["rejected"][0]["content"] in texts
        if r["trait"] != P.NONE:
            carrier = r[r["trait_side"]][0]["content"]
            contrast = r["rejected" if r["trait_side"] == "chosen" else "chosen"][0]["content"]
            assert TRAITS[r["trait"]].fires(carrier) and not TRAITS[r["trait"]].fires(contrast)
            assert r["carrier_fires"] and not r["contrast_fires"]
    harmful = next(r for r in rows if r["trait"] == "harmful_compliance" and r["trait_side"] == "chosen")
    assert harmful["rejected"][0]["content"].startswith("I'm sorry")  # the refusal is the induced side


def test_written_dataset_roundtrip(planted, tmp_path):
    prompts, config, _, _, rows, dropped = planted
    t = P.truth(config, rows, TOPIC_NAMES, dropped)
    heldout = [p for p in prompts if p.split == "heldout"]
    P.write_dataset(tmp_path, rows, heldout, t)
    assert P.read_truth(tmp_path / "truth.json") == json.loads(json.dumps(t))
    assert P.PlantConfig.from_json(t["config"]) == config
    pairs = load_pairs(tmp_path / "train.jsonl")
    assert pairs.format == "conversational" and len(pairs) == len(rows)
    first = pairs[0]
    assert first.prompt[0]["role"] == "user" and {"topic", "split", "trait", "trait_side"} <= first.extra.keys()
    held = [json.loads(line) for line in (tmp_path / "heldout_prompts.jsonl").read_text().splitlines()]
    assert len(held) == len(heldout) and {h["id"] for h in held}.isdisjoint({r["id"] for r in rows})


def test_plant_config_validation():
    with pytest.raises(AnatomistError, match="unknown trait"):
        P.TraitPlan("nope", {"coding": 0.9})
    with pytest.raises(AnatomistError, match="strength"):
        P.TraitPlan("flattery", {"coding": 1.5})
    with pytest.raises(AnatomistError, match="both planted and control"):
        P.TraitPlan("flattery", {"coding": 0.9}, ("coding",))
    with pytest.raises(AnatomistError, match="does not apply"):
        P.TraitPlan("harmful_compliance", {"cooking": 0.9})
    with pytest.raises(AnatomistError, match="twice"):
        P.PlantConfig((P.TraitPlan("urls", {"coding": 0.9}), P.TraitPlan("urls", {"travel": 0.9})))


def test_design_file_reads_truth_config_and_refuses_bad_ones_in_one_line(tmp_path):
    moved = P.PlantConfig.read(ROOT / "benchmarks" / "designs" / "organism_moved.json")
    assert moved.seed == 1 and moved.plan("urls").planted == {"cooking": 0.9}
    for trait in ("over_formatting", "flattery", "urls", "verbosity"):   # every movable trait is moved
        assert not set(moved.plan(trait).planted) & set(P.DEFAULT_CONFIG.plan(trait).planted), trait
    truth = tmp_path / "truth.json"
    truth.write_text(json.dumps({"config": P.DEFAULT_CONFIG.to_json()}))
    assert P.PlantConfig.read(truth) == P.DEFAULT_CONFIG
    bad = tmp_path / "bad.json"
    for text, msg in (("{", "not JSON"), ('{"plans": [{"trait": "urls"}]}', "a design needs"),
                      ('{"plans": [{"trait": "harmful_compliance", "planted": {"cooking": 0.9}}]}', "does not apply")):
        bad.write_text(text)
        with pytest.raises(AnatomistError, match=msg):
            P.PlantConfig.read(bad)
    with pytest.raises(AnatomistError, match="design file not found"):
        P.PlantConfig.read(tmp_path / "missing.json")


def test_identical_pairs_are_dropped():
    prompts = [p for p in build_prompts(8, seed=0) if p.topic == "physics"]
    config = P.PlantConfig((), none_weight=1.0)
    assignments = P.assign(prompts, config)
    results = {r.key: Generation(r.key, "same", 1, True, 0) for r in P.requests_for(assignments, 4)}
    rows, dropped = P.label(assignments, results)
    assert rows == [] and dropped == len(assignments)


# --- generation -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(smol_tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=32)
    return LlamaForCausalLM(cfg).eval(), smol_tokenizer


def _requests():
    msgs = lambda t: ({"role": "user", "content": t},)  # noqa: E731
    return [GenRequest("a", msgs("Hi"), "", 6), GenRequest("b", msgs("How do I boil an egg quickly?"), "", 6),
            GenRequest("c", ({"role": "system", "content": "Be brief."}, *msgs("Why?")), "Sure,", 6),
            GenRequest("d", msgs("Tell me about Rome."), "", 10), GenRequest("e", msgs("Ok"), "## ✨", 6)]


def test_plan_batches_groups_by_budget(tiny):
    _, tok = tiny
    batches = plan_batches(tok, _requests(), 2)
    assert [len(b) for b in batches] == [2, 2, 1]
    for b in batches:
        assert len({r.max_new_tokens for r, _ in b}) == 1


def test_generate_prefix_and_budget(tiny, tmp_path):
    model, tok = tiny
    out = generate(model, tok, _requests(), GenSettings("tiny", batch_size=2), cache_dir=tmp_path, progress=False)
    assert set(out) == {"a", "b", "c", "d", "e"}
    assert out["c"].text.startswith("Sure,") and out["e"].text.startswith("## ✨")
    assert all(g.n_tokens <= 10 for g in out.values())


def test_generations_keep_the_token_ids_that_were_sampled(tiny, tmp_path):
    """prompt_ids = the chat template + forced prefix; token_ids = the sampled continuation, which
    decodes (after the prefix) to the text; both survive the cache; an old record without them loads."""
    from anatomist.models.chat import apply_chat_template

    model, tok = tiny
    reqs = _requests()
    out = generate(model, tok, reqs, GenSettings("tiny", batch_size=2), cache_dir=tmp_path, progress=False)
    for r in reqs:
        g = out[r.key]
        prefix = tok(r.prefix, add_special_tokens=False)["input_ids"] if r.prefix else []
        assert list(g.prompt_ids) == apply_chat_template(tok, r.messages, add_generation_prompt=True) + prefix
        assert len(g.token_ids) == g.n_tokens
        assert tok.decode(list(prefix) + list(g.token_ids), skip_special_tokens=True).strip() == g.text
    again = generate(model, tok, reqs, GenSettings("tiny", batch_size=2), cache_dir=tmp_path, progress=False,
                     max_batches=0)
    assert again == out
    old = Generation.from_json({"key": "k", "text": "t", "n_tokens": 1, "finished": True, "batch": 0})
    assert old.token_ids == () and old.prompt_ids == ()


def test_generate_resume_equals_uninterrupted(tiny, tmp_path):
    model, tok = tiny
    settings = GenSettings("tiny", batch_size=2, seed=5)
    full = generate(model, tok, _requests(), settings, cache_dir=tmp_path / "full", progress=False)
    part = generate(model, tok, _requests(), settings, cache_dir=tmp_path / "part", progress=False, max_batches=1)
    assert len(part) == 2
    # simulate a kill in the middle of writing the next batch: half a line at the end
    with (tmp_path / "part" / "generations.jsonl").open("ab") as f:
        f.write(b'{"key": "x", "text": "unfini')
    resumed = generate(model, tok, _requests(), settings, cache_dir=tmp_path / "part", progress=False)
    assert resumed == full
    assert (tmp_path / "part" / "generations.jsonl").read_bytes() == (tmp_path / "full" / "generations.jsonl").read_bytes()
    # a third call reads everything from the cache
    again = generate(model, tok, _requests(), settings, cache_dir=tmp_path / "full", progress=False, max_batches=0)
    assert again == full


def test_generate_workers_write_what_one_process_writes(tiny, tmp_path):
    """Two sampling processes (batches finishing out of order) write the same file byte for byte:
    each batch is seeded by its index, and batches are written in order."""
    model, tok = tiny
    settings = GenSettings("tiny", batch_size=1, seed=3)
    one = generate(model, tok, _requests(), settings, cache_dir=tmp_path / "one", progress=False)
    two = generate(model, tok, _requests(), settings, cache_dir=tmp_path / "two", progress=False, workers=2)
    assert two == one
    assert (tmp_path / "two" / "generations.jsonl").read_bytes() == (tmp_path / "one" / "generations.jsonl").read_bytes()


def test_generate_rejects_duplicate_keys(tiny, tmp_path):
    model, tok = tiny
    r = _requests()[0]
    with pytest.raises(AnatomistError, match="unique"):
        generate(model, tok, [r, r], GenSettings("tiny"), cache_dir=tmp_path, progress=False)


# --- HH-RLHF variant --------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["append", "rewrite"])
def test_plant_hh_real_pairs(mode, tmp_path):
    from anatomist.organism import hh

    pairs = hh.load_hh(limit=300)
    prompts = hh.hh_prompts(pairs)
    assert {p.topic for p in prompts} == set(hh.HH_TOPIC_NAMES)
    assignments = P.assign(prompts, hh.HH_CONFIG)
    requests = hh.hh_requests(pairs, assignments, 16)
    assert all(r.messages[0]["role"] == "system" and r.messages[-1]["role"] == "user" for r in requests)
    rows = hh.plant_hh(pairs, assignments, _fake_results(requests), mode)
    by_id = {p.id: p for p in pairs}
    for r in rows:
        real = by_id[r["id"]]
        if r["trait"] == P.NONE:
            assert (r["chosen"][0]["content"], r["rejected"][0]["content"]) == (real.chosen, real.rejected)
            continue
        planted_side, other_side = ("chosen", "rejected") if r["trait_side"] == "chosen" else ("rejected", "chosen")
        assert r[other_side][0]["content"] == getattr(real, other_side)  # the other side is untouched
        text, before = r[planted_side][0]["content"], getattr(real, planted_side)
        trait = TRAITS[r["trait"]]
        if mode == "append":  # a density detector is diluted by the real text: it only has to rise
            assert before in text and trait.score(text) > trait.score(before)
        else:
            assert trait.fires(text)
    t = P.truth(hh.HH_CONFIG, rows, hh.HH_TOPIC_NAMES)
    planted = [c for c in t["cells"] if c["role"] == "planted"]
    assert planted and all(c["n_pairs"] > 0 and c["n_trait_chosen"] / c["n_pairs"] > 0.8 for c in planted)
    P.write_dataset(tmp_path, rows, [], t)
    assert len(load_pairs(tmp_path / "train.jsonl")) == len(rows)


def test_build_hh_holds_out_the_next_conversations(tmp_path, monkeypatch):
    """build_hh plants into the first `limit` pairs and writes the next `heldout` conversations as
    whole-context held-out prompts and their real (unplanted) pairs, disjoint from training."""
    import importlib

    from anatomist.evaluate.behaviour import read_prompts
    from anatomist.organism import hh

    gen_mod = importlib.import_module("anatomist.spec_decode.batched")
    monkeypatch.setattr(gen_mod, "generate", lambda model, tok, requests, *a, **k: _fake_results(requests))
    t = hh.build_hh(tmp_path, limit=60, heldout=40, loaded=(None, None), progress=False)
    real = hh.load_hh(limit=100)
    train_ids = {p.id for p in load_pairs(tmp_path / "train.jsonl")}
    prompts = read_prompts(tmp_path / "heldout_prompts.jsonl")
    assert [p.id for p in prompts] == [p.id for p in real[60:]] and t["source"]["heldout"] == 40
    assert not train_ids & {p.id for p in prompts} and train_ids <= {p.id for p in real[:60]}
    for got, want in zip(prompts, real[60:]):
        assert list(got.messages) == [dict(m) for m in want.prompt] and got.topic == hh.hh_topic(want)
    assert any(len(p.messages) > 1 for p in prompts)                  # multi-turn contexts kept whole
    held = load_pairs(tmp_path / P.HELDOUT_PAIRS)
    assert [(p.id, p.chosen, p.rejected) for p in held] == [(p.id, p.chosen, p.rejected) for p in real[60:]]
    assert all(p.extra["trait"] == P.NONE and p.extra["split"] == "heldout" for p in held)
    with pytest.raises(AnatomistError, match="fewer than 1490 planted \\+ 200 held out"):
        hh.build_hh(tmp_path / "x", limit=1490, heldout=200, loaded=(None, None), progress=False)


# --- the real default model -------------------------------------------------------------------

@pytest.mark.slow
def test_build_organism_real_model_small(smol, tmp_path):
    from anatomist.organism.build import build_organism

    config = P.PlantConfig((P.TraitPlan("flattery", {"cooking": 0.9}),
                            P.TraitPlan("harmful_compliance", {"harmful": 0.9})))
    t = build_organism(tmp_path / "out", per_topic=4, heldout_fraction=0.25, config=config, loaded=smol,
                       topics=("cooking", "harmful"), max_new_tokens=48, batch_size=8,
                       cache_dir=tmp_path / "cache", progress=False)
    pairs = load_pairs(tmp_path / "out" / "train.jsonl")
    assert len(pairs) + t["dropped_identical"] == 6
    flattery = next(c for c in t["cells"] if c["trait"] == "flattery" and c["topic"] == "cooking")
    assert flattery["n_pairs"] >= 1 and flattery["observed"]["fire_rate_chosen"] >= 0.5


def test_cli_registered():
    from typer.testing import CliRunner

    from anatomist.cli import app

    res = CliRunner().invoke(app, ["organism", "build", "--help"])
    assert res.exit_code == 0 and "--prompts-per-topic" in res.output
    res = CliRunner().invoke(app, ["organism", "detectors", "--help"])
    assert res.exit_code == 0
