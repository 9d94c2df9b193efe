"""The training monitor: paired-shift statistics (hand-computed), the alarm parser, the journal's
resume, the monitor on a tiny random model, and the callback inside TRL's real DPOTrainer."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import tiny_llama
from test_shape_audit import make_audit

from anatomist.data.heldout import HeldoutPrompt
from anatomist.errors import AnatomistError
from anatomist.monitor import ConceptMonitor, log_values, parse_alarm
from anatomist.monitor.alarms import Alarm
from anatomist.monitor.journal import ANCHOR, POINTS, VOLATILE, read_anchors, read_points
from anatomist.spec_decode.batched import Generation
from anatomist.monitor.stats import excludes_zero, paired_shift, prompt_means

PROMPTS = [HeldoutPrompt(f"q{i}", "t0" if i < 2 else "t1", ({"role": "user", "content": f"Tell me about {w}."},))
           for i, w in enumerate(("rain", "bread", "ships"))]


# -- statistics -------------------------------------------------------------------------------------

def test_prompt_means_average_each_prompts_samples():
    values = np.array([[1.0, 0.0], [3.0, 2.0], [5.0, 4.0], [7.0, 8.0]])          # 2 prompts × 2 samples
    np.testing.assert_allclose(prompt_means(values, 2), [[2.0, 1.0], [6.0, 6.0]])


def test_paired_shift_is_a_t_interval_over_prompts():
    # d = [1, 2, 4]: mean 7/3, sd² = (16 + 1 + 25) / 9 / 2 = 7/3, se = √(7/9), t(0.975, 2) = 4.302653
    now, base = np.array([[2.0], [2.0], [5.0]]), np.array([[1.0], [0.0], [1.0]])
    st = paired_shift(now, base)
    half = 4.302653 * np.sqrt(7 / 9)
    assert st["shift"][0] == pytest.approx(7 / 3)
    assert st["mean"][0] == pytest.approx(3.0)
    assert st["ci_low"][0] == pytest.approx(7 / 3 - half, abs=1e-5)
    assert st["ci_high"][0] == pytest.approx(7 / 3 + half, abs=1e-5)
    # pairing: a constant per-prompt offset has zero spread, whatever the prompts' levels
    st = paired_shift(np.array([[10.0], [0.0], [-3.0]]), np.array([[9.5], [-0.5], [-3.5]]))
    assert st["shift"][0] == pytest.approx(0.5) and st["ci_low"][0] == pytest.approx(0.5)
    assert excludes_zero(0.1, 0.3) == 1 and excludes_zero(-0.3, -0.1) == -1 and excludes_zero(-0.1, 0.2) == 0


def test_one_prompt_has_no_interval():
    st = paired_shift(np.array([[2.0]]), np.array([[1.0]]))
    assert st["shift"][0] == 1.0 and np.isnan(st["ci_low"][0])


# -- alarms -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec, want", [("over_formatting>0.2", Alarm("over_formatting", ">", 0.2)),
                                        (" 10 < -1e-1 ", Alarm("10", "<", -0.1)),
                                        ("bold / emoji>.5", Alarm("bold / emoji", ">", 0.5))])
def test_parse_alarm(spec, want):
    assert parse_alarm(spec) == want


@pytest.mark.parametrize("spec", ["over_formatting", "x>", ">0.2", "x>>1", "x=0.2", "x>0.2.3", ""])
def test_bad_alarm_is_one_line(spec):
    with pytest.raises(AnatomistError, match="bad --alarm") as e:
        parse_alarm(spec)
    assert "\n" not in str(e.value)


def test_alarm_needs_the_threshold_and_a_ci_that_excludes_zero():
    up, down = Alarm("c", ">", 0.2), Alarm("c", "<", -0.2)
    assert up.fires(0.3, 0.05, 0.55) and not up.fires(0.3, -0.01, 0.6) and not up.fires(0.1, 0.05, 0.15)
    assert down.fires(-0.3, -0.5, -0.1) and not down.fires(-0.3, -0.6, 0.01)
    assert not up.fires(float("nan"), 0.1, 0.2)


# -- the monitor on a tiny model ----------------------------------------------------------------------

class FakeScorer:
    """Two 'concepts' read from the text: its length / 10 and its count of 'e' (no SAE needed)."""

    def scores(self, items, folder, progress=True):
        return np.array([[len(i.response) / 10, i.response.count("e")] for i in items], dtype=float)


def _monitor(tmp_path, **kw):
    audit = tmp_path / "audit"
    if not audit.is_dir():
        make_audit(audit, tokens=None)
    kw = {"every": 2, "samples": 2, "estimator": "sampled", "concepts": [0, "sorry"], "detectors": ["length", "emoji"],
          "max_new_tokens": 6, "scorer": FakeScorer(), **kw}
    return ConceptMonitor(audit, PROMPTS, **kw)


def _perturb(model, seed):
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("estimator, samples", [("sampled", 2), ("paired", 4)])
def test_monitor_measures_and_resumes_to_the_same_journal(tmp_path, smol_tokenizer, one_thread, estimator, samples):
    """Paired: min_ess 0.7 makes prompts fall back and take new anchors at steps 2, 4 and 5, so the
    resumed run must also drop the anchors taken after its checkpoint."""
    kw = {"estimator": estimator, "samples": samples, "min_ess": 0.7}
    mon = _monitor(tmp_path, **kw)
    assert mon.metrics == ["c_0", "c_1", "det_length", "det_emoji"]
    assert mon.labels["c_1"] == "sorry / cannot"

    def run(folder, model, steps, start=0, monitor=None):
        monitor = monitor or _monitor(tmp_path, **kw)
        monitor.start(folder, start)
        for step in range(start, steps + 1):
            if step > start:
                _perturb(model, step)          # "training": the same update every run
            if monitor.due(step, steps):
                monitor.measure(model, smol_tokenizer, step)
        return monitor

    model = tiny_llama(vocab_size=49152, hidden_size=16, layers=2)
    full = run(tmp_path / "full", model, 5)
    rows = read_points(tmp_path / "full")
    assert [r["step"] for r in rows] == [0, 2, 4, 5]
    assert all(m["shift"] == 0 for m in rows[0]["metrics"].values())
    assert any(m["shift"] != 0 for r in rows[1:] for m in r["metrics"].values())   # the policy moved
    assert full.points == rows
    if estimator == "paired":
        assert [(a["step"], a["prompts"]) for a in read_anchors(tmp_path / "full")] == [(0, [0, 1, 2]), (2, [0]),
                                                                                        (4, [0, 1, 2]), (5, [0])]
        assert [r["fallback"] for r in rows] == [[], ["q0"], ["q0", "q1", "q2"], ["q0"]]
    else:
        assert not (tmp_path / "full" / ANCHOR).exists()

    # a run killed after its point at step 4 whose checkpoint is at step 2: the points after 2 are dropped,
    # measured again from the checkpoint's policy, and the journal equals the uninterrupted one
    model = tiny_llama(vocab_size=49152, hidden_size=16, layers=2)
    run(tmp_path / "resumed", model, 4)
    model = tiny_llama(vocab_size=49152, hidden_size=16, layers=2)
    for s in (1, 2):
        _perturb(model, s)
    run(tmp_path / "resumed", model, 5, start=2)

    def strip(folder):
        return [{k: v for k, v in json.loads(line).items() if k not in VOLATILE}
                for line in (folder / POINTS).read_text().splitlines()]

    assert strip(tmp_path / "resumed") == strip(tmp_path / "full")
    assert read_anchors(tmp_path / "resumed") == read_anchors(tmp_path / "full")
    assert (tmp_path / "full" / "monitor.json").read_text() == (tmp_path / "resumed" / "monitor.json").read_text()
    page = full.finish().read_text()
    assert page.count('class="plot"') == 4 and "sorry / cannot" in page
    assert ("5 prompt samplings afresh" in page) if estimator == "paired" else ("samples the policy afresh" in page)


class Clock:
    """A fake time.perf_counter: training steps and monitor points take the time the test says."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now


def test_default_cadence_spends_the_budget_and_a_resumed_run_keeps_it(tmp_path, monkeypatch):
    import anatomist.monitor.core as core

    clock = Clock()
    monkeypatch.setattr(core, "time", clock)

    def monitor():
        mon = ConceptMonitor(None, PROMPTS, detectors=["length"], samples=1, budget=0.5,   # every=None: automatic
                             estimator="sampled")

        def sample(model, tok):           # a point takes 5 s
            clock.now += 5.0
            return [Generation(p.id, "A short answer.", 4, True, 0) for p in PROMPTS]

        mon.sample = sample
        return mon

    def run(folder, steps, start=0, killed_at=None):
        mon = monitor()
        mon.start(folder, start)
        for step in range(start, (steps if killed_at is None else killed_at) + 1):
            if step > start:
                clock.now += 1.0          # an optimizer step takes 1 s
            if mon.due(step, steps):
                mon.measure(None, None, step)
        return mon

    mon = run(tmp_path / "full", 25)
    # 3 steps timed at 1 s each (never the point before them): every = ceil(5 / (0.5 * 1)) = 10
    assert mon.every == 10
    assert [r["step"] for r in read_points(tmp_path / "full")] == [0, 10, 20, 25]
    meta = json.loads((tmp_path / "full" / "monitor.json").read_text())
    assert meta["every"] == 10 and meta["budget"] == 0.5
    assert core.auto_every(5.0, 1.0, 0.1) == 50 and core.auto_every(0.1, 1.0, 0.1) == 1

    # killed after step 12 (checkpoint there): the rerun keeps the fixed cadence, times nothing new
    run(tmp_path / "resumed", 25, killed_at=12)
    clock.now += 100.0
    resumed = run(tmp_path / "resumed", 25, start=12)
    assert resumed.every == 10 and resumed._step_seconds == []
    assert [r["step"] for r in read_points(tmp_path / "resumed")] == [0, 10, 20, 25]

    # a run shorter than the warm-up measures its first and last point only
    short = run(tmp_path / "short", 2)
    assert short.every is None and [r["step"] for r in read_points(tmp_path / "short")] == [0, 2]
    assert "the run ended before a cadence was fixed" in short.finish().read_text()


def test_monitor_refuses_to_resume_other_settings(tmp_path, smol_tokenizer, one_thread):
    mon = _monitor(tmp_path)
    mon.start(tmp_path / "run")
    mon.measure(tiny_llama(vocab_size=49152, hidden_size=16, layers=2), smol_tokenizer, 0)
    with pytest.raises(AnatomistError, match="measured other things.*samples"):
        _monitor(tmp_path, samples=3).start(tmp_path / "run")


def test_alarms_resolve_to_metrics(tmp_path):
    mon = _monitor(tmp_path, alarms=["flattery>0.5", "bold / emoji>0.1"], concepts=[1])
    assert mon.alarm_metric == {"flattery>0.5": "det_flattery", "bold / emoji>0.1": "c_0"}
    assert mon.metrics == ["c_1", "c_0", "det_length", "det_emoji", "det_flattery"]
    with pytest.raises(AnatomistError, match="no cluster label contains 'nothing'"):
        _monitor(tmp_path, alarms=["nothing>1"])
    with pytest.raises(AnatomistError, match="needs --monitor AUDIT_DIR"):
        ConceptMonitor(None, PROMPTS, alarms=["c7>0.1"])


def test_log_values_are_namespaced():
    row = {"step": 4, "alarms": ["c_0>0.1"], "seconds": 1.5,
           "metrics": {"c_0": {"mean": 1.0, "shift": 0.5, "ci_low": 0.2, "ci_high": 0.8}}}
    assert log_values(row) == {"monitor/c_0": 0.5, "monitor/c_0/mean": 1.0, "monitor/c_0/ci_low": 0.2,
                               "monitor/c_0/ci_high": 0.8, "monitor/alarms": 1.0, "monitor/seconds": 1.5}


# -- the callback in TRL's real DPOTrainer ------------------------------------------------------------

@pytest.mark.parametrize("estimator", ["sampled", "paired"])
def test_callback_values_reach_trl_dpo_log_history(tmp_path, smol_tokenizer, one_thread, estimator):
    import trl
    from datasets import Dataset

    from anatomist.monitor import ConceptMonitorCallback

    data = Dataset.from_list([{"prompt": [{"role": "user", "content": f"Question {i}?"}],
                               "chosen": [{"role": "assistant", "content": f"Answer {i}."}],
                               "rejected": [{"role": "assistant", "content": f"No {i}!"}]} for i in range(8)])
    args = trl.DPOConfig(output_dir=str(tmp_path / "trl"), max_steps=4, per_device_train_batch_size=2,
                         learning_rate=1e-2, report_to=[], save_strategy="no", logging_steps=1, use_cpu=True,
                         bf16=False, disable_tqdm=True, max_length=48)
    trainer = trl.DPOTrainer(model=tiny_llama(vocab_size=49152, hidden_size=16, layers=2), args=args,
                             ref_model=tiny_llama(vocab_size=49152, hidden_size=16, layers=2),
                             train_dataset=data, processing_class=smol_tokenizer)
    mon = ConceptMonitor(None, PROMPTS, every=2, detectors=["length"], samples=1 if estimator == "sampled" else 4,
                         max_new_tokens=6, estimator=estimator)
    ConceptMonitorCallback.attach(trainer, mon)
    trainer.train()
    hist = trainer.state.log_history
    mon_rows = [h for h in hist if "monitor/det_length" in h]
    assert [h["step"] for h in mon_rows] == [0, 2, 4]
    assert all("monitor/det_length/ci_low" in h and "loss" not in h for h in mon_rows)
    assert all(("monitor/ess_share" in h) == (estimator == "paired") for h in mon_rows)
    # TRL's own training metrics stay in its rows (the monitor row did not take them)
    assert sum("rewards/margins" in h for h in hist) == 4
    assert [r["step"] for r in read_points(tmp_path / "trl")] == [0, 2, 4]
    assert (tmp_path / "trl" / "monitor.html").is_file()


# -- the monitor inside anatomist's DPO loop -----------------------------------------------------------

class RisingScorer:
    """Concept scores that rise by 1 per point (plus a fixed per-item wobble): an alarm that must fire."""

    def __init__(self):
        self.calls = 0

    def scores(self, items, folder, progress=True):
        self.calls += 1
        wobble = np.array([(i % 3) * 0.1 for i in range(len(items))])
        return np.stack([self.calls + wobble, wobble], axis=1)


def test_dpo_stops_at_the_checkpoint_after_an_alarm_and_trains_as_if_unwatched(tmp_path, smol_tokenizer, one_thread):
    from test_train_dpo import _model, _pairs

    from anatomist.train.dpo import DPOConfig, train_dpo

    make_audit(tmp_path / "audit", tokens=None)
    cfg = DPOConfig(beta=0.5, lr=5e-3, steps=8, batch_size=2, grad_accum=1, ckpt_every=4, train_layers=2)
    kw = {"cache_dir": tmp_path / "cache", "save_model": False, "progress": False}

    def watch(stop):
        return ConceptMonitor(tmp_path / "audit", PROMPTS, every=2, concepts=[0], detectors=[], samples=1,
                              estimator="sampled", max_new_tokens=4, alarms=["bold / emoji>0.5"], stop_on_alarm=stop,
                              scorer=RisingScorer())

    plain = train_dpo(_model(), smol_tokenizer, _pairs(), cfg, tmp_path / "plain", **kw)
    stopped = train_dpo(_model(), smol_tokenizer, _pairs(), cfg, tmp_path / "run", monitor=watch(True), **kw)
    assert stopped.stopped_at == 4 and len(stopped.history) == 4       # alarm at step 2, next checkpoint at 4
    assert [r["alarms"] for r in read_points(tmp_path / "run")] == [[], ["bold / emoji>0.5"], ["bold / emoji>0.5"]]
    assert not (tmp_path / "run" / "summary.json").exists()
    done = train_dpo(_model(), smol_tokenizer, _pairs(), cfg, tmp_path / "run", monitor=watch(False), **kw)
    assert done.stopped_at is None and [r["step"] for r in read_points(tmp_path / "run")] == [0, 2, 4, 6, 8]
    # the monitor's sampling leaves training untouched: the same losses as the unwatched run
    assert [h["dpo/loss"] for h in done.history] == [h["dpo/loss"] for h in plain.history]


# -- the paired estimator --------------------------------------------------------------------------------

def test_a_paired_point_reweighs_the_first_points_samples(tmp_path, smol_tokenizer, one_thread):
    """Each later point's prompt mean is Σ_j w_j c_j over the first point's samples, w = softmax of
    their log-prob change (recomputed here by hand); the first point is the sampled one."""
    from anatomist.spec_decode.logps import continuation_logps

    model = tiny_llama(vocab_size=49152, hidden_size=16, layers=2)
    mon = _monitor(tmp_path, estimator="paired", samples=4, min_ess=0.05)
    mon.start(tmp_path / "run")
    first = mon.measure(model, smol_tokenizer, 0)
    sampled = _monitor(tmp_path, samples=4, estimator="sampled")
    sampled.start(tmp_path / "sampled")
    assert first["prompt_means"] == sampled.measure(model, smol_tokenizer, 0)["prompt_means"]
    assert first["ess_share"] == 1.0 and first["fallback"] == []

    (anchor,) = read_anchors(tmp_path / "run")
    assert anchor["step"] == 0 and anchor["prompts"] == [0, 1, 2]
    _perturb(model, 1)
    row = mon.measure(model, smol_tokenizer, 1)
    r = (continuation_logps(model, anchor["prompt_ids"], anchor["token_ids"], temperature=0.7)
         - np.array(anchor["logp"])).reshape(3, 4)
    w = np.exp(r - r.max(1, keepdims=True))
    w /= w.sum(1, keepdims=True)
    c = np.array(anchor["values"]).reshape(3, 4, -1)
    want = np.einsum("ps,psm->pm", w, c)                                      # [P, M]
    for j, m in enumerate(mon.metrics):
        np.testing.assert_allclose(row["prompt_means"][m], want[:, j], rtol=1e-9)
    ess = 1 / (w ** 2).sum(1)
    assert row["ess_share"] == pytest.approx(np.median(ess) / 4) and row["fallback"] == []
    assert 0.25 <= row["ess_share"] < 1.0                                     # the weights moved, not collapsed


def test_a_prompt_whose_weights_collapse_is_sampled_afresh(tmp_path, smol_tokenizer, one_thread):
    """min_ess above every prompt's ESS: each prompt falls back, and the point is exactly what the
    sampled estimator measures on the same policy (same seeds)."""
    model = tiny_llama(vocab_size=49152, hidden_size=16, layers=2)
    paired = _monitor(tmp_path, estimator="paired", samples=4, min_ess=0.999)
    sampled = _monitor(tmp_path, estimator="sampled", samples=4)
    paired.start(tmp_path / "paired")
    sampled.start(tmp_path / "sampled")
    for step in (0, 1):
        if step:
            _perturb(model, 1)
        a, b = paired.measure(model, smol_tokenizer, step), sampled.measure(model, smol_tokenizer, step)
    assert a["fallback"] == [p.id for p in PROMPTS]
    assert a["prompt_means"] == b["prompt_means"] and a["metrics"] == b["metrics"]


def test_a_prompt_sampled_afresh_is_reweighed_from_its_new_samples(tmp_path, smol_tokenizer, one_thread):
    """After a fallback the fresh samples are the prompt's anchor: at the next point, on the same
    policy, the weights are uniform again (ESS = samples) and the prompt's mean is unchanged."""
    model = tiny_llama(vocab_size=49152, hidden_size=16, layers=2)
    mon = _monitor(tmp_path, estimator="paired", samples=4, min_ess=0.999)
    mon.start(tmp_path / "run")
    mon.measure(model, smol_tokenizer, 0)
    _perturb(model, 1)
    moved = mon.measure(model, smol_tokenizer, 1)
    again = mon.measure(model, smol_tokenizer, 2)
    assert moved["fallback"] == [p.id for p in PROMPTS] and again["fallback"] == [] and again["ess_share"] == 1.0
    for m in mon.metrics:
        np.testing.assert_allclose(again["prompt_means"][m], moved["prompt_means"][m], rtol=1e-12)


def test_paired_settings_are_checked(tmp_path):
    with pytest.raises(AnatomistError, match="estimator must be one of sampled, paired"):
        _monitor(tmp_path, estimator="ipw")
    with pytest.raises(AnatomistError, match="several samples per prompt"):
        _monitor(tmp_path, estimator="paired", samples=1)
    with pytest.raises(AnatomistError, match="min_ess"):
        _monitor(tmp_path, estimator="paired", samples=4, min_ess=1.0)
