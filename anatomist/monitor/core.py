"""`ConceptMonitor`: sample the policy on fixed held-out prompts every N steps, score the audit's
concepts and the screen's detectors on what it wrote, and track each metric's shift from step 0.

    mon = ConceptMonitor("runs/audit", "runs/organism/heldout_prompts.jsonl",
                         alarms=["over_formatting>0.2"])   # every=None: cadence from the time budget
    mon.start("runs/dpo", step=0)                 # binds the run folder; resumes its points
    row = mon.measure(model, tokenizer, step=0)   # one point (also writes monitor.jsonl)

What one point measures (so that two points differ by the policy only):
- the same prompts, `samples` per prompt, sampled with the product's sampler
  (`anatomist.spec_decode.batched.generate`, the one evaluation samples with) under the same seed
  every time: batch b of every point draws from the same random stream;
- concepts: the audit's standardized concept scores c_C of the responses, read by the audit's own
  model and SAE (`anatomist.audit.scorer.Scorer`: the policy only generates; the frozen base
  measures, as in evaluation), named `c_<cluster>`;
- detectors: the screen's detectors (`anatomist.screen.detectors`, default set unless named) on
  the response text, named `det_<name>` (mean score).
Each metric's shift from step 0 is paired by prompt with a t-interval (`anatomist.monitor.stats`).

Two estimators of a prompt's mean at a later point (`estimator=`):
- "sampled": sample the policy afresh (the same seeds) and average the metric over the samples;
- "paired": keep each prompt's samples (its anchor: the first point's) and reweigh them. A later
  point scores their token ids under the current policy (`spec_decode.logps.continuation_logps`:
  one forward, no sampling, no SAE), and the prompt's mean is the self-normalised importance-
  sampling estimate Σ_j w_j c_j, w = softmax over its samples of log π_T,now(y_j) − log π_T,anchor(y_j)
  (`stats.snis_prompt_shift`). Successive points then read the same responses, so their own
  spread cancels from the change between them (the paired ΔB of `evaluate.paired`, applied during
  training). Where a prompt's effective sample size falls below `min_ess` × samples (the policy
  has moved too far for its anchor to stand for it), the prompt is sampled afresh at this point:
  its mean is the fresh samples' mean, and they become its anchor for the points after. The
  point records the median ESS share and the prompts that were sampled afresh. SNIS is biased by
  O(1/samples): use 4 or more samples per prompt.

Cadence: `every=N` measures a point every N optimizer steps. The default (`every=None`) spends at
most `budget` (10%) of the training time on the monitor: after the first point, the monitor times
`WARMUP_STEPS` optimizer steps (the time from the end of a point, or of a due() call, to the next
due() call) and fixes every = ceil(point seconds / (budget × median step seconds)); the cadence is
written to the journal's meta file (monitor.json), so a resumed run keeps it. Either way a point is
also measured at the start and after the last step, which a short run pays on top of the budget.

Concepts monitored by default: the audit's flagged clusters (rows with a direction, strongest
first, at most `max_concepts`), plus every concept an alarm names. Front ends: the
`ConceptMonitorCallback` (transformers / TRL), and the `monitor=` argument of
`anatomist.train.train_dpo` / `train_grpo` (`anatomist dpo|grpo --monitor`).
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from anatomist.data.heldout import HeldoutPrompt, read_prompts
from anatomist.errors import AnatomistError
from anatomist.monitor import journal
from anatomist.monitor.alarms import Alarm, parse_alarm
from anatomist.monitor.stats import paired_shift, prompt_means

log = logging.getLogger(__name__)

PREFIX = "monitor/"       # log keys: monitor/<metric> (the shift), monitor/<metric>/{mean,ci_low,ci_high}


DEFAULT_SAMPLES = {"sampled": 2, "paired": 4}   # the estimators, and their samples per prompt when not given
ESTIMATORS = tuple(DEFAULT_SAMPLES)


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _flagged(audit, limit: int) -> list[int]:
    """The audit's flagged clusters, strongest row first, each once."""
    rows = audit.rows
    rows = rows[rows["direction"] != "none"]
    if "rank_score" in rows:
        rows = rows.sort_values("rank_score", ascending=False, kind="stable")
    return list(dict.fromkeys(int(c) for c in rows["cluster"] if int(c) >= 0))[:limit]


WARMUP_STEPS = 3         # optimizer steps timed before an automatic cadence is fixed
DEFAULT_BUDGET = 0.1     # the share of training time an automatic cadence spends on the monitor


def auto_every(point_seconds: float, step_seconds: float, budget: float) -> int:
    """The cadence whose points cost at most `budget` of the training time between them."""
    return max(1, math.ceil(point_seconds / (budget * max(step_seconds, 1e-9))))


class ConceptMonitor:
    """See the module docstring. `audit_dir=None` monitors the detectors only (e.g. GRPO without an
    audit); `scorer` replaces the audit's instrument (tests). `concepts`: cluster ids or labels
    (None: the audit's flagged ones); `detectors`: screen detector names (None: the defaults,
    [] none); `alarms`: "NAME>τ" / "NAME<τ" specs or `Alarm`s; `estimator`: "paired" (default)
    or "sampled"; `samples` per prompt (None: 4 paired, 2 sampled)."""

    def __init__(self, audit_dir: str | Path | None, prompts: str | Path | Sequence[HeldoutPrompt], *,
                 every: int | None = None, budget: float = DEFAULT_BUDGET, concepts: Sequence[str | int] | None = None,
                 detectors: Sequence[str] | None = None, samples: int | None = None, seed: int = 0,
                 alarms: Sequence[str | Alarm] = (), stop_on_alarm: bool = False, max_new_tokens: int = 64,
                 temperature: float = 0.7, batch_size: int = 32, max_concepts: int = 8, scorer=None,
                 estimator: str = "paired", min_ess: float = 0.3):
        from anatomist.screen.detectors import DETECTORS, resolve

        if estimator not in ESTIMATORS:
            raise AnatomistError(f"monitor: estimator must be one of {', '.join(ESTIMATORS)} (got {estimator!r})")
        samples = DEFAULT_SAMPLES[estimator] if samples is None else samples
        if (every is not None and every < 1) or samples < 1 or max_new_tokens < 1:
            raise AnatomistError(f"monitor: every, samples and max_new_tokens must be >= 1 "
                                 f"(got {every}, {samples}, {max_new_tokens})")
        if estimator == "paired" and samples < 2:
            raise AnatomistError(f"monitor: the paired estimator reweighs several samples per prompt; got samples="
                                 f"{samples} (use 4 or more)")
        if not 0 < min_ess < 1:
            raise AnatomistError(f"monitor: min_ess is a share of the samples in (0, 1) (got {min_ess})")
        if not 0 < budget <= 1:
            raise AnatomistError(f"monitor: the time budget is a share of training time in (0, 1] (got {budget})")
        self.prompts = list(read_prompts(prompts) if isinstance(prompts, (str, Path)) else prompts)
        if not self.prompts:
            raise AnatomistError("monitor: no prompts")
        self.every, self.samples, self.seed = every, samples, seed
        self.auto, self.budget = every is None, budget
        self._tick: float | None = None          # end of the last point or due() call (automatic cadence)
        self._step_seconds: list[float] = []
        self.max_new_tokens, self.temperature, self.batch_size = max_new_tokens, temperature, batch_size
        self.stop_on_alarm = stop_on_alarm
        self.estimator, self.min_ess = estimator, min_ess
        self.anchors: list[dict] = []            # the paired estimator's samples (journal.ANCHOR)
        self.alarms = [a if isinstance(a, Alarm) else parse_alarm(a) for a in alarms]
        self.detectors = [] if detectors is not None and not list(detectors) else resolve(detectors)
        det_names = {d.name for d in self.detectors}
        self.audit_dir, self._scorer = (Path(audit_dir) if audit_dir is not None else None), scorer
        audit = None
        if audit_dir is not None:
            from anatomist.audit.folder import AuditFolder

            audit = AuditFolder(audit_dir)
        # every alarm names a detector (monitored even when not asked for) or an audit concept
        self.alarm_metric: dict[str, str] = {}
        wanted = [] if audit is None else ([audit.resolve_concept(c) for c in concepts] if concepts is not None
                                           else _flagged(audit, max_concepts))
        for a in self.alarms:
            if a.name in DETECTORS or a.name in det_names:
                if a.name not in det_names:
                    self.detectors = [*self.detectors, *resolve([a.name])]
                    det_names.add(a.name)
                self.alarm_metric[a.spec] = f"det_{a.name}"
            elif audit is None:
                raise AnatomistError(f"--alarm {a.spec!r}: {a.name!r} is no screen detector "
                                     f"({', '.join(DETECTORS)}), and a concept alarm needs --monitor AUDIT_DIR")
            else:
                c = audit.resolve_concept(a.name)
                if c < 0:
                    raise AnatomistError(f"--alarm {a.spec!r}: response length is not a monitored concept; "
                                         "use the screen's `length` detector")
                wanted.append(c)
                self.alarm_metric[a.spec] = f"c_{c}"
        if any(c < 0 for c in wanted):
            raise AnatomistError("monitor: response length is not an SAE concept; monitor the `length` detector")
        self.clusters = list(dict.fromkeys(wanted))
        self.labels = {f"c_{c}": (audit.label(c) or f"concept {c}") for c in self.clusters} if audit else {}
        self.labels.update({f"det_{d.name}": d.name.replace("_", " ") for d in self.detectors})
        if not self.labels:
            raise AnatomistError("monitor: nothing to measure (no concepts and no detectors)")
        self.folder: Path | None = None
        self.points: list[dict] = []

    # -- the run folder ---------------------------------------------------------------------------

    @property
    def metrics(self) -> list[str]:
        return list(self.labels)

    def meta(self) -> dict:
        return {"metrics": self.labels, "prompts": [[p.id, p.topic] for p in self.prompts], "samples": self.samples,
                "seed": self.seed, "every": self.every if self.every is not None else "auto",
                "budget": self.budget if self.auto else None, "max_new_tokens": self.max_new_tokens,
                "temperature": self.temperature, "audit": str(self.audit_dir) if self.audit_dir else None,
                "estimator": self.estimator, "min_ess": self.min_ess if self.estimator == "paired" else None,
                "alarms": {a.spec: self.alarm_metric[a.spec] for a in self.alarms}}

    def start(self, folder: str | Path, step: int = 0) -> None:
        """Bind the run folder; keep its points up to `step` (the checkpoint being resumed)."""
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        old = journal.read_meta(self.folder)
        if self.auto and self.every is None and old is not None and isinstance(old.get("every"), int):
            self.every = old["every"]          # the cadence the run fixed before it was stopped
        new = self.meta()
        if old is not None and old != new and journal.read_points(self.folder):
            keep = {k for k in new if old.get(k) != new[k]}
            raise AnatomistError(f"{self.folder / journal.META}: the monitor of this run measured other things "
                                 f"({', '.join(sorted(keep))} differ); use the same monitor settings or another --out")
        journal.write_meta(self.folder, new)
        self.points = [r for r in journal.read_points(self.folder) if r["step"] <= step]
        journal.write_points(self.folder, self.points)
        self.anchors = []
        if self.estimator == "paired" and self.points:
            anchors = journal.read_anchors(self.folder)
            if not anchors or anchors[0]["step"] != self.points[0]["step"]:
                raise AnatomistError(f"{self.folder / journal.ANCHOR}: missing or not of this run's first point, so the "
                                     f"paired monitor cannot go on; delete {journal.POINTS} to start the monitor over")
            kept = {r["step"] for r in self.points}     # an anchor whose point was never written goes too
            self.anchors = [a for a in anchors if a["step"] in kept]
            journal.write_anchors(self.folder, self.anchors)

    def due(self, step: int, total: int | None = None) -> bool:
        """Whether a point is measured after `step` optimizer steps (0 = before training). Call it
        once per optimizer step: an automatic cadence times the steps between calls."""
        done = any(r["step"] == step for r in self.points)
        if self.every is None:
            self._time_step()
        if self.every is None:                 # not fixed yet: the first point and the last only
            return not done and (not self.points or step == total)
        return not done and (step % self.every == 0 or step == total)

    def _time_step(self) -> None:
        now = time.perf_counter()
        if self._tick is not None and self.points:
            self._step_seconds.append(now - self._tick)
        self._tick = now
        if len(self._step_seconds) >= WARMUP_STEPS:
            point = float(np.mean([r["seconds"] for r in self.points]))
            self.every = auto_every(point, float(np.median(self._step_seconds)), self.budget)
            log.info("monitor: a point takes %.1f s, a step %.2f s: a point every %d steps keeps the monitor "
                     "within %.0f%% of training time", point, float(np.median(self._step_seconds)), self.every,
                     100 * self.budget)
            if self.folder is not None:
                journal.write_meta(self.folder, self.meta())

    @property
    def alarm_fired(self) -> bool:
        return any(r["alarms"] for r in self.points)

    # -- one point --------------------------------------------------------------------------------

    def scorer(self):
        if self._scorer is None and self.clusters:
            from anatomist.audit.scorer import Scorer

            self._scorer = Scorer.from_audit(self.audit_dir)
        return self._scorer

    def sample(self, model, tokenizer, prompts: Sequence[HeldoutPrompt] | None = None) -> list:
        """Generations [P·S] of `prompts` (default: all), prompt-major; the same requests and seed
        at every point."""
        from anatomist.spec_decode.batched import GenRequest, GenSettings, generate

        prompts = self.prompts if prompts is None else prompts
        requests = [GenRequest(f"{p.id}#{s}", p.messages, "", self.max_new_tokens)
                    for p in prompts for s in range(self.samples)]
        settings = GenSettings(model="monitor", temperature=self.temperature, batch_size=self.batch_size,
                               seed=self.seed)
        was_training = model.training
        model.eval()  # no dropout while sampling (a transformers Trainer keeps the model in train mode)
        try:
            with tempfile.TemporaryDirectory(prefix="anatomist-monitor-") as tmp:
                done = generate(model, tokenizer, requests, settings, cache_dir=tmp, progress=False, workers=1)
        finally:
            model.train(was_training)
        return [done[r.key] for r in requests]

    def score(self, texts: Sequence[str], prompts: Sequence[HeldoutPrompt] | None = None) -> np.ndarray:
        """Metric values [P·S, M] in `self.metrics` order of the texts of `prompts` (default: all)."""
        cols = []
        prompts = self.prompts if prompts is None else prompts
        messages = [p.messages for p in prompts for _ in range(self.samples)]
        if self.clusters:
            from anatomist.audit.scorer import score_texts

            with tempfile.TemporaryDirectory(prefix="anatomist-monitor-") as tmp:
                c = score_texts(self.scorer(), messages, texts, tmp, progress=False)         # [S, C_all]
            cols.append(c[:, self.clusters])
        if self.detectors:
            contexts = ["\n".join(m["content"] for m in msgs) for msgs in messages]
            cols.append(np.array([[d.score(t, c) for d in self.detectors] for t, c in zip(texts, contexts)],
                                 dtype=np.float64).reshape(len(texts), -1))
        return np.concatenate(cols, axis=1)

    def measure(self, model, tokenizer, step: int) -> dict:
        """Sample and score (paired, after the first point: reweigh the kept samples), pair with
        step 0, check alarms; append the point and rewrite the journal."""
        assert self.folder is not None, "call start(folder, step) first"
        t0 = time.perf_counter()
        extra = {}
        if self.estimator == "paired" and self.points:
            means, extra = self._reweighed(model, tokenizer, step)
        else:
            gens = self.sample(model, tokenizer)
            values = self.score([g.text for g in gens])                                      # [P·S, M]
            means = prompt_means(values, len(self.prompts))                                  # [P, M]
            if self.estimator == "paired":
                self._anchor(model, step, list(range(len(self.prompts))), gens, values)
                extra = {"ess_share": 1.0, "fallback": []}
        base = np.array([self.points[0]["prompt_means"][m] for m in self.metrics]).T if self.points else means
        st = paired_shift(means, base)
        metrics = {m: {k: _finite(st[k][j]) for k in ("mean", "shift", "ci_low", "ci_high")}
                   for j, m in enumerate(self.metrics)}
        fired = [a.spec for a in self.alarms
                 if a.fires(*(st[k][self.metrics.index(self.alarm_metric[a.spec])] for k in ("shift", "ci_low", "ci_high")))]
        for spec in fired:
            m = metrics[self.alarm_metric[spec]]
            log.warning("monitor alarm at step %d: %s (%s) shift %+.3f, 95%% CI [%.3f, %.3f]", step, spec,
                        self.labels[self.alarm_metric[spec]], m["shift"], m["ci_low"], m["ci_high"])
        row = {"step": int(step), "metrics": metrics, "alarms": fired,
               "prompt_means": {m: [float(v) for v in means[:, j]] for j, m in enumerate(self.metrics)},
               **extra, "seconds": round(time.perf_counter() - t0, 3)}
        self.points.append(row)
        journal.write_points(self.folder, self.points)
        self._tick = time.perf_counter()   # the next step is timed from here, without this point
        return row

    def _logps(self, model, prompt_ids, token_ids) -> np.ndarray:
        from anatomist.spec_decode.logps import continuation_logps

        return continuation_logps(model, prompt_ids, token_ids, temperature=self.temperature)

    def _anchor(self, model, step: int, prompts: list[int], gens, values: np.ndarray) -> None:
        """Make these samples (prompt-major, `self.samples` per prompt) the prompts' anchor: keep their
        token ids, their log-probs under this policy and their metric values (journal.ANCHOR)."""
        ids, toks = [list(g.prompt_ids) for g in gens], [list(g.token_ids) for g in gens]
        self.anchors.append({"step": int(step), "prompts": prompts, "prompt_ids": ids, "token_ids": toks,
                             "logp": [float(v) for v in self._logps(model, ids, toks)],
                             "values": [[float(v) for v in row] for row in values]})
        journal.write_anchors(self.folder, self.anchors)   # Python floats: JSON gives a resumed run the same bits

    def _current(self) -> list[tuple[dict, int]]:
        """Per prompt: its latest anchor and the prompt's position in it."""
        where = {}
        for a in self.anchors:
            where.update({p: (a, i) for i, p in enumerate(a["prompts"])})
        return [where[p] for p in range(len(self.prompts))]

    def _reweighed(self, model, tokenizer, step: int) -> tuple[np.ndarray, dict]:
        """Per-prompt means [P, M] of the paired estimator (module docstring) and the point's
        weight health: the median ESS share and the prompts sampled afresh."""
        from anatomist.stats import snis_prompt_shift

        S, current = self.samples, self._current()
        rows = [(a, i * S + j) for a, i in current for j in range(S)]                          # prompt-major
        values = np.array([a["values"][r] for a, r in rows]).reshape(len(current), S, -1)       # [P, S, M]
        now = self._logps(model, [a["prompt_ids"][r] for a, r in rows], [a["token_ids"][r] for a, r in rows])
        ratio = (now - np.array([a["logp"][r] for a, r in rows])).reshape(len(current), S)
        means, ess = np.empty((len(current), values.shape[-1])), np.empty(len(current))
        for p in range(len(current)):
            shift, ess[p] = snis_prompt_shift(values[p], ratio[p])
            means[p] = values[p].mean(0) + shift
        low = [p for p in range(len(current)) if ess[p] < self.min_ess * S]
        if low:
            fresh = [self.prompts[p] for p in low]
            gens = self.sample(model, tokenizer, fresh)
            again = self.score([g.text for g in gens], fresh)
            means[low] = prompt_means(again, len(low))
            self._anchor(model, step, low, gens, again)
        return means, {"ess_share": float(np.median(ess) / S), "fallback": [self.prompts[p].id for p in low]}

    def finish(self) -> Path | None:
        """Write monitor.html beside the journal (None when nothing was measured)."""
        from anatomist.monitor.report import write_report

        return write_report(self.folder) if self.folder is not None and self.points else None


def log_values(row: dict) -> dict[str, float]:
    """A point as flat, namespaced log values: monitor/<metric> = shift from step 0, plus its mean
    and CI bounds, monitor/alarms (how many fired), monitor/seconds and, from a paired monitor,
    monitor/ess_share."""
    out: dict[str, float] = {}
    for name, m in row["metrics"].items():
        if m["shift"] is not None:
            out[f"{PREFIX}{name}"] = m["shift"]
        for k in ("mean", "ci_low", "ci_high"):
            if m[k] is not None:
                out[f"{PREFIX}{name}/{k}"] = m[k]
    out[f"{PREFIX}alarms"] = float(len(row["alarms"]))
    if "ess_share" in row:
        out[f"{PREFIX}ess_share"] = float(row["ess_share"])
    out[f"{PREFIX}seconds"] = float(row["seconds"])
    return out
