"""anatomist's SAE trainer vs. SAELens' `SAETrainer` on the same activation tensor.

    .venv/bin/python benchmarks/sae_speed.py [--tokens 400K] [--train-tokens 400K] [--arch batchtopk]

Both train the default recipe's SAE shape (d_in 576, 4,608 latents, k = 32, batch 4,096, the
same Adam learning rate and warm-up/decay) for the same number of tokens, from the same
[N, 576] tensor of layer-15 activations of the default model (the default recipe's capture,
attention-sink tokens removed), saved once to a safetensors file. SAELens runs in its own
venv (`.venv-saelens`) in a subprocess and times only its `fit()`; anatomist's time covers the
whole `train_sae` call (initialisation included). Both SAEs are then scored by the same code on
the same held-out tensor: FVU and L0 at inference.

Prints tokens/s of each, the ratio (goal ≥ 1.5× at equal or better FVU), and both FVUs. The
machine's speed swings when the host is busy: rerun when numbers look off.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from anatomist.capture import ActivationStore  # noqa: E402
from anatomist.models.loading import DEFAULT_MODEL, cache_root  # noqa: E402
from anatomist.sae import TrainConfig, load_sae, sae_config, train_sae  # noqa: E402
from anatomist.sae.cli import parse_count  # noqa: E402
from anatomist.sae.default import DEFAULT_RECIPE, default_sae  # noqa: E402
from anatomist.sae.evaluate import activation_metrics  # noqa: E402
from anatomist.sae.train import calibrate_threshold  # noqa: E402

SAELENS_PY = Path(os.environ.get("ANATOMIST_SAELENS_PYTHON", ROOT / ".venv-saelens" / "bin" / "python"))

SAELENS_TRAIN = r'''
import json, sys, time, torch
from safetensors.torch import load_file
from sae_lens import SAETrainer, BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig, TopKTrainingSAE, TopKTrainingSAEConfig
from sae_lens.config import SAETrainerConfig
args = json.loads(sys.argv[1])
x = load_file(args["acts"])["acts"]
B, steps = args["batch_size"], args["tokens"] // args["batch_size"]
cls, cfg_cls = {"batchtopk": (BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig),
                "topk": (TopKTrainingSAE, TopKTrainingSAEConfig)}[args["arch"]]
torch.manual_seed(0)
sae = cls(cfg_cls(d_in=x.shape[1], d_sae=args["d_sae"], k=args["k"], normalize_activations="expected_average_only_in"))
def provider():
    g = torch.Generator().manual_seed(0)
    while True:
        perm = torch.randperm(x.shape[0], generator=g)
        for i in range(0, x.shape[0] - B + 1, B):
            yield x[perm[i:i + B]]
tcfg = SAETrainerConfig(total_training_samples=steps * B, train_batch_size_samples=B, lr=args["lr"], lr_end=args["lr"],
                        lr_warm_up_steps=args["warmup"], lr_decay_steps=args["decay_steps"],
                        dead_feature_window=max(1, args["dead_tokens"] // B), n_batches_for_norm_estimate=10)
trainer = SAETrainer(cfg=tcfg, sae=sae, data_provider=provider())
t = time.perf_counter()
trainer.fit()
wall = time.perf_counter() - t
sae.save_inference_model(args["out"])
print(json.dumps({"wall_s": wall, "steps": steps}))
'''


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", default="300K", help="activations loaded into the shared tensor")
    ap.add_argument("--train-tokens", default="400K", help="training tokens for each trainer")
    ap.add_argument("--heldout", default="50K", help="tokens held out for FVU")
    ap.add_argument("--arch", default=DEFAULT_RECIPE.architecture, choices=["batchtopk", "topk"])
    args = ap.parse_args()
    if not SAELENS_PY.is_file():
        sys.exit(f"SAELens venv not found at {SAELENS_PY}; see the Makefile target saelens-venv")
    n_tok, n_train, n_held = parse_count(args.tokens), parse_count(args.train_tokens), parse_count(args.heldout)

    default_sae(DEFAULT_MODEL)  # makes sure the recipe's capture exists
    store = ActivationStore(cache_root() / "sae" / DEFAULT_MODEL / f"acts-{DEFAULT_RECIPE.capture_key(DEFAULT_MODEL)}")
    parts, n = [], 0
    for shard in store.iter_shards(("acts", "pos")):
        parts.append(shard["acts"][shard["pos"] > 0].float())
        n += parts[-1].shape[0]
        if n >= n_tok + n_held:
            break
    acts = torch.cat(parts)
    acts = acts[torch.randperm(acts.shape[0], generator=torch.Generator().manual_seed(0))]
    held, acts = acts[:n_held].clone(), acts[n_held:n_held + n_tok].clone()
    r = DEFAULT_RECIPE
    tc = TrainConfig(**{**r.train.to_dict(), "tokens": n_train, "checkpoint_every": 10**9})
    d_sae = sae_config(acts.shape[1], width=r.width, k=r.k).d_sae
    print(f"activations: {acts.shape[0]:,} train / {held.shape[0]:,} held-out tokens, d_in {acts.shape[1]}; "
          f"{args.arch}, {d_sae} latents, k {r.k}, batch {tc.batch_size}, {tc.steps} steps")

    with tempfile.TemporaryDirectory(prefix="sae-speed-") as tmp:
        tmp = Path(tmp)
        save_file({"acts": acts.contiguous()}, str(tmp / "acts.safetensors"))
        cfg = sae_config(acts.shape[1], width=r.width, k=r.k, architecture=args.arch)
        t = time.perf_counter()
        ours = train_sae(acts, cfg, tmp / "ours", train=tc, progress=False)
        ours_s = time.perf_counter() - t
        job = dict(acts=str(tmp / "acts.safetensors"), out=str(tmp / "saelens"), arch=args.arch, d_sae=d_sae, k=r.k,
                   batch_size=tc.batch_size, tokens=tc.steps * tc.batch_size, lr=tc.lr, warmup=tc.warmup_steps,
                   decay_steps=int(tc.steps * tc.decay_frac), dead_tokens=tc.dead_tokens)
        proc = subprocess.run([str(SAELENS_PY), "-c", SAELENS_TRAIN, json.dumps(job)], capture_output=True,
                              text=True, env={**os.environ, "PYTHONWARNINGS": "ignore", "TQDM_DISABLE": "1"})
        if proc.returncode != 0:
            sys.exit(f"SAELens training failed:\n{proc.stderr[-4000:]}")
        theirs_s = json.loads(proc.stdout.strip().splitlines()[-1])["wall_s"]
        theirs = load_sae(tmp / "saelens")
        m_ours, m_theirs = activation_metrics(ours, held), activation_metrics(theirs, held)
        m_theirs_cal = None
        if theirs.threshold is not None:
            # SAELens saves BatchTopK with its EMA threshold; anatomist calibrates θ so L0 = k.
            # Score SAELens' dictionary with the same calibration too, so FVUs compare like for like.
            theirs.cfg = theirs.cfg.with_(k=r.k)
            calibrate_threshold(theirs, acts[:tc.init_tokens])
            m_theirs_cal = activation_metrics(theirs, held)

    tokens = tc.steps * tc.batch_size
    print(f"anatomist: {tokens / ours_s:9,.0f} tokens/s  ({ours_s:6.1f} s)  FVU {m_ours['fvu']:.4f}  "
          f"L0 {m_ours['l0']:.1f}  dead {m_ours['dead_frac']:.1%}")
    print(f"SAELens:   {tokens / theirs_s:9,.0f} tokens/s  ({theirs_s:6.1f} s)  FVU {m_theirs['fvu']:.4f}  "
          f"L0 {m_theirs['l0']:.1f}  dead {m_theirs['dead_frac']:.1%}")
    if m_theirs_cal is not None:
        print(f"SAELens, threshold calibrated like anatomist's:          FVU {m_theirs_cal['fvu']:.4f}  "
              f"L0 {m_theirs_cal['l0']:.1f}  dead {m_theirs_cal['dead_frac']:.1%}")
    best_theirs = min(m_theirs["fvu"], m_theirs_cal["fvu"] if m_theirs_cal else float("inf"))
    print(f"speed ratio anatomist / SAELens: {theirs_s / ours_s:.2f}x (goal >= 1.5x at equal or better FVU: "
          f"{'yes' if theirs_s / ours_s >= 1.5 and m_ours['fvu'] <= best_theirs else 'no'})")


if __name__ == "__main__":
    main()
