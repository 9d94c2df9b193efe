"""GRPO step time with plain vs MTP+RS rollouts on the default model, from the same seed, in one run.

    python benchmarks/grpo_step.py [--steps 16] [--prompts 4] [--group 8] [--max-new-tokens 48]
                                   [--device cpu] [--threads 1] [--lr 5e-5] [--train-layers 0]
                                   [--head-data grpo|chat] [--head-prompts 512] [--refresh-head-every N]
                                   [--out DIR]

The defaults are sized for this 2-core CPU: enough steps and samples per group for the reward to
move. Measured: 23 min for both arms with one torch thread beside another job, plus 10 min once for
the head's data and training. Rerunning with the same --out reprints the summary from
the saved metrics.

Two arms, alternating step by step, run the same GRPO algorithm (`anatomist.train.grpo.train_grpo`)
from the same initial weights and seed: rollouts by plain sampling (drafter=None) and by the e2e-TV MTP head with
rejection sampling (γ = 3). Printed: rollout-time and step-time ratios (plain / MTP, > 1 means MTP
is faster; the goal (issue 23, on a GPU) is step time ≥ 1.8×, the top of the paper's 1.5–1.8×), the reward curve of each arm (baseline = step 0),
and whether the two arms sample the same distribution: rejection sampling is lossless, so at step 0
(identical weights) rewards and per-token rollout log-probs must agree in distribution (two-sample
KS / Mann–Whitney tests; tokens within a sequence are dependent, so treat the token-level p-value
as indicative). The head is trained before RL on the model's own answers to this task's problems
(`--head-data grpo`, the default; `chat` gives `benchmarks/spec_speed.py`'s chat-data head) and
cached with its data under $ANATOMIST_CACHE/spec.

Staleness (`--refresh-head-every N`): a third arm runs the same MTP+RS rollouts from the same head,
but fine-tunes it on the latest rollouts every N steps (`GRPOConfig.refresh_head_every`). On each
of its rollout batches the head as trained before RL and the refreshed head are both scored
(expected acceptance per depth, same sequences): how much acceptance the policy's drift away from
the head's training data costs, and what a refresh wins back. Also printed: what the refreshes
cost in step time. Measured with the defaults and `--refresh-head-every 2 --threads 2` (2-core CPU,
session 7): on the same rollouts, the refreshed head's α1 beat the fixed head's by +0.092 ± 0.010
(mean over steps 2-15: 0.595 vs 0.503; α3 +0.108 ± 0.012, 0.554 vs 0.446), and the refreshes took 16.5% of that
arm's step time.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from dataclasses import replace

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from anatomist.fileio import atomic_write_text  # noqa: E402
from anatomist.models import DEFAULT_MODEL, load  # noqa: E402
from anatomist.spec_decode.drafters import MTPDrafter  # noqa: E402
from anatomist.spec_decode.head import load_head  # noqa: E402
from anatomist.spec_decode.pipeline import e2e_tv_head  # noqa: E402
from anatomist.spec_decode.train import Samples, head_alphas  # noqa: E402
from anatomist.train.grpo import GRPOConfig, train_grpo  # noqa: E402

MODEL = DEFAULT_MODEL
GOAL = 1.8   # step-time ratio plain / MTP+RS (issue 23; issue 9 asked 1.5 on any device)


def warm_up(lm, head_dir, device):
    """First-call costs (allocator, kernels, autograd graph) would otherwise land on the first arm."""
    from anatomist.spec_decode.generate import generate
    from anatomist.train.grpo import response_logprobs

    ids = [lm.tokenizer("Hello there, how are you?")["input_ids"]]
    drafter = MTPDrafter(load_head(head_dir, lm.model).to(device))
    for d in (None, drafter):
        generate(lm.model, ids * 4, drafter=d, max_new_tokens=8, generator=torch.Generator(device=device).manual_seed(0))
    logp = response_logprobs(lm.model, [ids[0] * 4] * 4, [len(ids[0])] * 4)[0]
    logp.sum().backward()
    lm.model.zero_grad(set_to_none=True)


class Arm:
    """One rollout mode with its own copy of the weights, run one GRPO step at a time.

    probe: also score, on every rollout batch, the head as trained before RL against the head the
    arm drafts with (`head_alphas`, same sequences), kept in <arm>/probe.json. Its seconds are
    reported apart and left out of the arm's step time in the summary."""

    def __init__(self, name, lm, model, head_dir, device, cfg, probe=False):
        self.name, self.lm, self.model, self.cfg = name, lm, model, cfg
        self.drafter = MTPDrafter(load_head(head_dir, model).to(device)) if head_dir else None
        self.fixed = load_head(head_dir, model).to(device).eval() if probe else None
        self.lp, self.r0, self.history = [], [], []
        self.probe: dict[int, dict] = {}

    def on_rollout(self, step, problems, prompts, texts, ro, rewards):
        self.lp.append((step, torch.cat(ro.logprobs)))
        if step == 0:
            self.r0.extend(rewards.tolist())
        if self.fixed is not None:
            t = time.perf_counter()
            self.fixed.bind(self.model)  # the policy moved: its embeddings / LM head views must follow
            samples = Samples([p + r for p, r in zip(prompts, ro.tokens)], [len(p) for p in prompts])
            alphas = head_alphas({"fixed": self.fixed, "refreshed": self.drafter.head}, self.model, samples)
            self.probe[step] = {**alphas, "seconds": time.perf_counter() - t}

    def probe_seconds(self) -> float:
        return sum(v["seconds"] for v in self.probe.values())

    def step(self, out_root, upto):
        # Resuming from the checkpoint each step is exact (tested), so the arms can alternate step
        # by step: load swings on a shared host then hit both alike.
        folder = os.path.join(out_root, self.name)
        if self.fixed is not None and not self.probe and os.path.isfile(os.path.join(folder, "probe.json")):
            with open(os.path.join(folder, "probe.json")) as f:  # a rerun on a finished --out
                self.probe = {int(k): v for k, v in json.load(f).items()}
        res = train_grpo(self.model, self.lm.tokenizer, self.cfg, folder,
                         drafter=self.drafter, on_rollout=self.on_rollout, progress=False, stop_after=upto)
        self.history = res.history
        if self.fixed is not None:
            atomic_write_text(os.path.join(folder, "probe.json"), json.dumps(self.probe, indent=1))
        h = res.history[-1]
        acc = f" α={h['spec/draft_acceptance']:.3f} len={h['spec/mean_accept_len']:.2f}" if "spec/draft_acceptance" in h else ""
        print(f"  [{self.name:9s}] step {h['step']:2d} rollout {h['grpo/rollout_s']:6.1f}s update {h['grpo/update_s']:6.1f}s "
              f"reward {h['grpo/reward']:.3f} correct {h['grpo/correct']:.3f} format {h['grpo/format']:.3f} "
              f"H {h['grpo/entropy']:.3f}{acc}", flush=True)


def same_distribution(st, a, b, r0_p, r0_m, lp_p, lp_m) -> None:
    """Step 0 (identical weights): lossless rejection sampling must give plain sampling's distribution."""
    print("\n== same distribution? (lossless rejection sampling; step 0 = identical weights) ==")
    a, b = a.numpy(), b.numpy()
    ks = st.ks_2samp(a, b)
    print(f"step-0 per-token rollout log-probs: plain mean {a.mean():.3f} (n={len(a)}), mtp_rs mean {b.mean():.3f} "
          f"(n={len(b)}); KS p = {ks.pvalue:.3f}")
    if len(set(r0_p + r0_m)) > 1:
        mw = st.mannwhitneyu(r0_p, r0_m)
        print(f"step-0 rewards: plain {sum(r0_p) / len(r0_p):.3f}, mtp_rs {sum(r0_m) / len(r0_m):.3f}; "
              f"Mann–Whitney p = {mw.pvalue:.3f}")
    all_p = torch.cat([lp for _, lp in lp_p]).numpy()
    all_m = torch.cat([lp for _, lp in lp_m]).numpy()
    print(f"all steps per-token log-probs (policies drift apart after step 0): KS p = {st.ks_2samp(all_p, all_m).pvalue:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--prompts", type=int, default=4, help="problems per step (P)")
    ap.add_argument("--group", type=int, default=8, help="samples per problem (G)")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--train-layers", type=int, default=0, help="0 = all parameters; N = top N blocks")
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--head-steps", type=int, default=200, help="training steps of the cached e2e-TV head")
    ap.add_argument("--head-data", choices=("grpo", "chat"), default="grpo",
                    help="the head's self-sampled training prompts: this task's problems, or chat prompts")
    ap.add_argument("--head-prompts", type=int, default=512, help="prompts the head's data is sampled from")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    ap.add_argument("--refresh-head-every", type=int, default=0,
                    help="N > 0 adds a third arm whose head is fine-tuned on the latest rollouts every N steps")
    ap.add_argument("--out", default="", help="folder for per-arm metrics/plots (default: a temp dir)")
    ap.add_argument("--ckpt-every", type=int, default=1, help="checkpoint each arm every N steps (and at the end; "
                    "outside the timed step either way): a large N spares a short GPU run 1.6 GB writes per step")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from scipy import stats as st

    lm = load(MODEL, device=args.device)
    head_dir = e2e_tv_head(lm, model_name=MODEL, prompt_set=args.head_data, n_prompts=args.head_prompts,
                           steps=args.head_steps)[1]   # prints its data and train α
    cfg = GRPOConfig(steps=args.steps, prompts_per_step=args.prompts, group_size=args.group,
                     max_new_tokens=args.max_new_tokens, lr=args.lr, train_layers=args.train_layers,
                     micro_batch=args.micro_batch, seed=args.seed, gamma=3, ckpt_every=args.ckpt_every)
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, {cfg}")
    out_root = args.out or tempfile.mkdtemp(prefix="grpo_bench_")
    warm_up(lm, head_dir, args.device)
    arms = [Arm("plain", lm, lm.model, None, args.device, cfg),  # every arm starts from the same weights
            Arm("mtp_rs", lm, copy.deepcopy(lm.model), head_dir, args.device, cfg)]
    n = args.refresh_head_every
    if n:
        arms.append(Arm(f"mtp_rs_r{n}", lm, copy.deepcopy(lm.model), head_dir, args.device,
                        replace(cfg, refresh_head_every=n), probe=True))
    for s in range(cfg.steps):
        for arm in arms[s % len(arms):] + arms[:s % len(arms)]:  # rotate who goes first
            arm.step(out_root, s + 1)
    plain, mtp = arms[0], arms[1:]

    def tot(h, k, skip_first=False):
        return sum(x[k] for x in h[1 if skip_first and len(h) > 1 else 0:])

    for arm in mtp:  # the staleness probe is measurement, not RL: out of the step time
        for h in arm.history:
            h["grpo/step_s"] -= arm.probe.get(h["step"], {}).get("seconds", 0.0)

    hp = plain.history
    print("\n== speed (plain / MTP+RS; > 1 means MTP+RS is faster) ==")
    for arm in mtp:
        hm = arm.history
        print(f"-- {arm.name} --")
        for k in ("grpo/rollout_s", "grpo/update_s", "grpo/step_s"):
            print(f"{k:16s} plain {tot(hp, k):7.1f}s  {arm.name} {tot(hm, k):7.1f}s  "
                  f"ratio {tot(hp, k) / tot(hm, k):.2f}×   (without step 0: {tot(hp, k, True) / tot(hm, k, True):.2f}×)")
        # After step 0 the policies differ, and so do their response lengths: tokens/s compares
        # the samplers on the work each actually did.
        tps_p, tps_m = (tot(h, "grpo/response_tokens") / tot(h, "grpo/rollout_s") for h in (hp, hm))
        print(f"rollout tokens/s plain {tps_p:7.1f}   {arm.name} {tps_m:7.1f}   ratio {tps_m / tps_p:.2f}× "
              f"(response tokens: plain {tot(hp, 'grpo/response_tokens'):.0f}, "
              f"{arm.name} {tot(hm, 'grpo/response_tokens'):.0f})")
        acc = sum(h["spec/draft_acceptance"] for h in hm) / len(hm)
        mal = sum(h["spec/mean_accept_len"] for h in hm) / len(hm)
        ratio = tot(hp, "grpo/step_s") / tot(hm, "grpo/step_s")
        print(f"MTP draft acceptance {acc:.3f}, mean accept length {mal:.2f} (incl. bonus)")
        print(f"goal step time ≥ 1.8× faster: measured {ratio:.2f}× — {'met' if ratio >= GOAL else 'NOT met'}")
        ents = [h["grpo/entropy"] for h in hm]
        if len(hm) >= 3 and max(ents) > min(ents):
            # Bebop's question: does acceptance follow the policy's entropy as RL moves it? (one point per step)
            fit = st.linregress(ents, [h["spec/alpha_1"] for h in hm])
            print(f"α1 vs policy entropy over {arm.name}'s steps: slope {fit.slope:+.3f}/nat ± {fit.stderr:.3f}, "
                  f"r = {fit.rvalue:+.2f}, p = {fit.pvalue:.3f} (H {min(ents):.2f}…{max(ents):.2f} nats, "
                  f"α1 {min(h['spec/alpha_1'] for h in hm):.2f}…{max(h['spec/alpha_1'] for h in hm):.2f})")
    if n:
        staleness(mtp[0], mtp[1], n)

    print("\n== reward (baseline = step 0) ==")
    for arm in arms:
        h = arm.history
        k = max(1, len(h) // 2)
        first, last = sum(x["grpo/reward"] for x in h[:k]) / k, sum(x["grpo/reward"] for x in h[-k:]) / k
        print(f"{arm.name:9s} step0 {h[0]['grpo/reward']:.3f} → last {h[-1]['grpo/reward']:.3f}; "
              f"mean first half {first:.3f} → last half {last:.3f} ({'improved' if last > first else 'not improved'})")

    step0 = [dict(plain.lp).get(0), dict(mtp[0].lp).get(0)]
    if None in step0:  # a rerun on a finished --out reads the metrics back; the rollouts are gone
        print("\n(step-0 rollouts were sampled by an earlier run of this --out: no distribution test this time)")
    else:
        same_distribution(st, *step0, plain.r0, mtp[0].r0, plain.lp, mtp[0].lp)
    print(f"metrics and plots under {out_root}/{{{','.join(a.name for a in arms)}}}/")


def staleness(fixed_arm: Arm, arm: Arm, every: int) -> None:
    """The head as trained before RL vs the refreshed one, on the refreshed arm's own rollouts.

    The first refresh follows step every − 1, so steps ≥ every draft with a refreshed head. Both
    heads are scored on the same sequences (`head_alphas`, expected acceptance Σ min(p, q)), so the
    difference is the head's, not the policy's. Across arms (mtp_rs never refreshes) the policies
    drift apart, so realised acceptance there is shown with each arm's entropy beside it."""
    print(f"\n== staleness: head fixed since before RL vs refreshed every {every} steps ==")
    print(f"on {arm.name}'s rollouts, expected α1..3 (Σ min(p, q)):")
    print(f"{'step':>4s} {'H':>6s}  {'fixed':>20s}  {'refreshed':>20s}")
    for h in arm.history:
        p = arm.probe.get(h["step"])
        if p:
            print(f"{h['step']:4d} {h['grpo/entropy']:6.3f}  " + "  ".join(
                " ".join(f"{a:6.3f}" for a in p[k]) for k in ("fixed", "refreshed"))
                  + ("" if h["step"] >= every else "   (before the first refresh)"))
    after = [p for step, p in sorted(arm.probe.items()) if step >= every]
    if len(after) >= 2:
        import numpy as np

        for i in range(len(after[0]["fixed"])):
            d = np.array([p["refreshed"][i] - p["fixed"][i] for p in after])
            f, r = (np.mean([p[k][i] for p in after]) for k in ("fixed", "refreshed"))
            print(f"mean α{i + 1} over steps ≥ {every}: fixed {f:.3f}, refreshed {r:.3f}; refreshed − fixed "
                  f"{d.mean():+.3f} ± {d.std(ddof=1) / np.sqrt(len(d)):.3f} (paired over {len(d)} steps)")
    print(f"realised acceptance by arm ({fixed_arm.name} drafts with the fixed head throughout):")
    print(f"{'step':>4s} {'H ' + fixed_arm.name:>12s} {'α1':>6s} {'H ' + arm.name:>14s} {'α1':>6s}")
    for a, b in zip(fixed_arm.history, arm.history):
        print(f"{a['step']:4d} {a['grpo/entropy']:12.3f} {a['spec/alpha_1']:6.3f} {b['grpo/entropy']:14.3f} "
              f"{b['spec/alpha_1']:6.3f}")
    cost = sum(h.get("head_refresh/s", 0.0) for h in arm.history)
    print(f"refresh cost: {cost:.1f} s in all, {cost / sum(h['grpo/step_s'] for h in arm.history):.1%} of "
          f"{arm.name}'s step time; the probe took {arm.probe_seconds():.1f} s (not counted)")


if __name__ == "__main__":
    main()
