"""Train an SAE on residual activations: one loop, top to bottom, resumable bit-for-bit.

Loss per batch of scaled inputs x̃ [B, D] (sums over D, means over B):
    L = ‖x̃ − x̂‖² + penalty(arch) + aux_coeff · L_aux
    L_aux = min(n_dead / aux_k, 1) · ‖e − ê‖²,   e = (x̃ − x̂).detach(),  ê = Σ_{top-aux_k dead j} relu(pre_j) W_dec[j]
(aux-k, Gao et al. 2024 §A.2 and SAELens' scaling). Decoder rows are kept unit-norm: the
gradient component parallel to each row is removed before the Adam step and rows are
renormalised after it (Gao et al. 2024 §A.1).

`out/` holds `checkpoint.pt` (written atomically every `checkpoint_every` steps; rerunning the
same call resumes from it), then the SAELens-format SAE (`cfg.json`, `sae_weights.safetensors`)
and `training.json` (configs, metric history, `complete: true`) when done.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F

from anatomist.errors import AnatomistError
from anatomist.fileio import atomic_path, atomic_write_text
from anatomist.progress import progress_bar
from anatomist.sae.arch import Latents, decode_latents, gather_latents, min_active
from anatomist.sae.config import SAEConfig, TrainConfig, stable_hash
from anatomist.sae.data import ActivationSource, batches, geometric_median, init_sample, norm_scale_for, outlier_mask
from anatomist.sae.io import hook_name, load_sae, save_sae
from anatomist.sae.model import SAE

if TYPE_CHECKING:
    from anatomist.sae.distributed import SAEParallel

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
SUMMARY = "training.json"


def parse_width(width: str | int, d_in: int) -> int:
    """'8x' → 8·d_in latents; an int (or digit string) is the latent count itself."""
    text = str(width).strip().lower()
    try:
        return int(float(text[:-1]) * d_in) if text.endswith("x") else int(text)
    except ValueError:
        raise AnatomistError(f"width must be like '8x' or a latent count, got {width!r}") from None


# --- pure pieces ---------------------------------------------------------------------------

def aux_k_loss(pre: torch.Tensor, err: torch.Tensor, dead: torch.Tensor, W_dec: torch.Tensor,
               aux_k: int) -> torch.Tensor:
    """Aux-k loss: the top `aux_k` dead latents' reconstruction of the residual error.

    pre [B, F] pre-activations, err [B, D] detached error x̃ − x̂, dead [F] bool, W_dec [F, D].
    """
    dead_idx = dead.nonzero().squeeze(1)                                           # [n]
    n_dead = dead_idx.numel()
    if n_dead == 0 or aux_k <= 0:
        return pre.new_zeros(())
    k = min(aux_k, n_dead)
    values, j = pre[:, dead_idx].topk(k, dim=-1, sorted=False)                    # [B, k]
    recon = F.embedding_bag(dead_idx[j], W_dec, per_sample_weights=values.relu(), mode="sum")  # [B, D]
    return min(n_dead / aux_k, 1.0) * (recon - err).pow(2).sum(-1).mean()


def forward_loss(sae: SAE, x: torch.Tensor, dead: torch.Tensor, tc: TrainConfig, select=None):
    """Training loss on scaled inputs x [B, D] with dead-latent mask [F]: (loss, Latents, x̂, aux).
    `select` replaces the architecture's selector (data parallel: a batch-global one)."""
    arch = sae.arch
    c = sae.b_enc - sae.b_dec @ sae.W_enc                                             # [F]
    if arch.select is not None:      # sparse path: select on detached pre, sparse backward
        with torch.no_grad():
            pre = torch.addmm(c, x, sae.W_enc)                                        # [B, F]
        lat, penalty = gather_latents((select or arch.select)(pre, sae.cfg.k), sae.W_enc, c, x, pre), 0.0
    else:
        pre = x @ sae.W_enc + c                                                       # [B, F]
        lat, penalty = arch.train_acts(pre, sae.threshold, sae.cfg.k, tc)
    x_hat = decode_latents(lat, sae.W_dec) + sae.b_dec                                # [B, D]
    err = x - x_hat
    loss = err.pow(2).sum(-1).mean() + penalty
    aux = x.new_zeros(())
    if tc.aux_k and bool(dead.any()):
        aux = aux_k_dense(x, sae.W_enc, c, sae.W_dec, pre.detach(), err.detach(), dead, tc.aux_k)
        loss = loss + tc.aux_coeff * aux
    return loss, lat, x_hat, aux


def aux_k_dense(x, W_enc, c, W_dec, pre, err, dead, aux_k):
    """`aux_k_loss` computed on the dead columns only, as dense [B, n_dead] products.

    Dead latents are few in a healthy run, so [B, D] × [D, n_dead] beats a gather of B·aux_k
    decoder rows. x [B, D] scaled input, pre [B, F] detached, err [B, D] detached, dead [F].
    """
    dead_idx = dead.nonzero().squeeze(1)                                           # [n]
    n_dead = dead_idx.numel()
    k = min(aux_k, n_dead)
    pre_d = x @ W_enc[:, dead_idx] + c[dead_idx]                                   # [B, n] with grad
    acts = pre_d.relu()
    if k < n_dead:
        top = pre[:, dead_idx].topk(k, dim=-1, sorted=False).indices               # [B, k]
        acts = acts * torch.zeros_like(acts).scatter_(-1, top, 1.0)
    recon = acts @ W_dec[dead_idx]                                                 # [B, D]
    return min(n_dead / aux_k, 1.0) * (recon - err).pow(2).sum(-1).mean()


def fvu(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Fraction of variance unexplained: Σ‖x − x̂‖² / Σ‖x − mean(x)‖² over a batch [B, D]."""
    return (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum().clamp_min(1e-12)


def lr_at(step: int, tc: TrainConfig) -> float:
    """Linear warm-up, constant, linear decay to 0 over the last `decay_frac` of steps."""
    n = tc.steps
    warm = min(1.0, (step + 1) / max(1, tc.warmup_steps))
    decay_start = int(n * (1 - tc.decay_frac))
    decay = 1.0 if step < decay_start else max(0.0, (n - step) / max(1, n - decay_start))
    return tc.lr * warm * decay


@torch.no_grad()
def constrain_decoder_grad(W_dec: torch.nn.Parameter) -> None:
    """Remove the gradient component parallel to each (unit) decoder row: g −= (g·w) w."""
    if W_dec.grad is not None:
        W_dec.grad -= (W_dec.grad * W_dec).sum(-1, keepdim=True) * W_dec


@torch.no_grad()
def normalize_decoder(W_dec: torch.nn.Parameter) -> None:
    W_dec /= W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-12)


@torch.no_grad()
def calibrate_threshold(sae: SAE, x: torch.Tensor) -> None:
    """Set the BatchTopK inference threshold θ so that mean L0 on raw sample x [N, D] is k.

    θ = the (N·k)-th largest positive pre-activation. Bussmann et al. (2024) keep an EMA of the
    batch's smallest selected activation instead; that lags behind a moving encoder and gave
    L0 well below k in short runs, so the EMA only serves the training-time metrics.
    """
    x = x[~sae.is_outlier(x)]
    pre = sae.pre_acts(x * sae.cfg.norm_scale)                                        # [N, F]
    cand = pre.topk(min(4 * sae.cfg.k, sae.d_sae), dim=-1, sorted=False).values.flatten()  # [N·4k]
    n_keep = min(x.shape[0] * sae.cfg.k, cand.numel())
    theta = cand.kthvalue(cand.numel() - n_keep + 1).values.clamp_min(0.0)
    sae.threshold.fill_(theta.item())


# --- the loop ------------------------------------------------------------------------------

def _atomic_save(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _init_sae(source: ActivationSource, cfg: SAEConfig, tc: TrainConfig) -> SAE:
    sample = init_sample(source, tc.init_tokens, tc.seed, cfg.exclude_first_token)    # [n, D]
    max_norm = None
    if tc.outlier_factor > 0:
        max_norm = float(tc.outlier_factor * sample.norm(dim=-1).median())
        sample = sample[~outlier_mask(sample, None, False, max_norm)]
    s = norm_scale_for(sample)
    cfg = cfg.with_(norm_scale=s, max_norm=max_norm)
    gen = torch.Generator().manual_seed(tc.seed)
    return SAE(cfg).init_weights(gen, b_dec=geometric_median(sample * s), threshold=tc.threshold_init,
                                 enc_scale=tc.enc_init_scale)


def train_sae(data, cfg: SAEConfig, out: str | Path, *, train: TrainConfig = TrainConfig(),
              init: SAE | None = None, progress: bool = True, eval_fn: Callable[[SAE], dict] | None = None, eval_every: int = 0,
              on_step: Callable[[int, dict], None] | None = None, parallel: SAEParallel | None = None) -> SAE:
    """Train an SAE on `data` (an ActivationStore, its folder, or a [N, d_in] tensor) into `out`.

    `cfg` fixes architecture, widths and k; its `norm_scale` and `max_norm` are computed from the
    data at the start (see `anatomist.sae.data`). Rerunning with the same arguments resumes from
    the last checkpoint, or returns the finished SAE. `init` starts from a copy of that SAE's
    weights and input scale instead of a fresh initialisation. `eval_fn(sae)` (e.g. CE loss recovered)
    runs every `eval_every` steps and at the end; `on_step(step, metrics)` after every step.
    Under a process group of >1 rank (or with `parallel`) it runs data-parallel: `anatomist.sae.distributed`.
    """
    # imported here: `python -m anatomist.sae.distributed` imports this module first
    from anatomist.sae.distributed import SAEParallel

    par = parallel or SAEParallel.current()   # world 1: every hook is the identity
    source = ActivationSource(data)
    if cfg.d_in != source.d_in:
        raise AnatomistError(f"SAE d_in={cfg.d_in} but the activations have width {source.d_in}")
    tc = train
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if init is not None and init.cfg.with_(norm_scale=1.0, max_norm=None) != cfg.with_(norm_scale=1.0, max_norm=None):
        raise AnatomistError("init SAE's config differs from cfg")
    init_key = None if init is None else stable_hash([init.cfg.to_dict()] + [v.sum().item() for v in init.state_dict().values()])
    run_key = stable_hash([cfg.to_dict(), tc.to_dict(), source.sizes, source.settings, init_key])
    summary_path, ckpt_path = out / SUMMARY, out / CHECKPOINT
    if summary_path.is_file():
        done = json.loads(summary_path.read_text())
        if done.get("complete") and done.get("run_key") == run_key:
            return load_sae(out)
    torch.manual_seed(tc.seed)  # nothing below draws from the global RNG; belt and braces

    if ckpt_path.is_file():
        ck = torch.load(ckpt_path, weights_only=True)
        if ck["run_key"] != run_key:
            raise AnatomistError(f"{out}: holds a checkpoint of a different run (other data or settings); "
                                 "use another output folder or delete it")
        sae = SAE(SAEConfig.from_dict(ck["cfg"]))
        sae.load_state_dict(ck["sae"])
        start, since_fired, history = ck["step"], ck["since_fired"], ck["history"]
        log.info("resuming %s at step %d", out, start)
    else:
        sae = copy.deepcopy(init) if init is not None else _init_sae(source, cfg, tc)
        start, since_fired, history = 0, torch.zeros(cfg.d_sae, dtype=torch.long), []
    opt = torch.optim.Adam([p for p in sae.parameters()], lr=tc.lr, betas=(0.9, 0.999), eps=6.25e-10)
    if ckpt_path.is_file():
        opt.load_state_dict(ck["opt"])
    cfg, arch, s = sae.cfg, sae.arch, sae.cfg.norm_scale
    sae.train()

    def checkpoint(step: int) -> None:
        if par.lead:
            _atomic_save(dict(run_key=run_key, cfg=cfg.to_dict(), sae=sae.state_dict(), opt=opt.state_dict(),
                              step=step, since_fired=since_fired, history=history), ckpt_path)

    t0, n_steps = time.perf_counter(), tc.steps
    stream = batches(source, batch_size=tc.batch_size, buffer_tokens=tc.buffer_tokens, seed=tc.seed,
                     exclude_first=cfg.exclude_first_token, max_norm=cfg.max_norm, start_step=start)
    with progress_bar(f"train SAE ({cfg.architecture}, {cfg.d_sae} latents)", total=n_steps,
                      completed=start, enabled=progress and par.lead) as bar:
        for step, x in stream:
            if step >= n_steps:
                break
            for group in opt.param_groups:
                group["lr"] = lr_at(step, tc)
            x = x * s                                                                 # [B, D]
            xs, B = par.share(x), x.shape[0]                                          # [b, D] this rank's rows
            loss, lat, x_hat, aux = forward_loss(sae, xs, since_fired >= tc.dead_tokens, tc,
                                                 select=par.select(arch.select))
            opt.zero_grad(set_to_none=True)
            par.backward(loss, xs.shape[0], B, opt.param_groups[0]["params"])
            constrain_decoder_grad(sae.W_dec)
            opt.step()
            with torch.no_grad():
                normalize_decoder(sae.W_dec)
                if arch.learns_threshold:
                    sae.threshold.clamp_(min=1e-6)
                fired = par.any(_fired(lat, cfg.d_sae))                               # [F] bool
                since_fired += B
                since_fired[fired] = 0
                if arch.has_threshold and not arch.learns_threshold:
                    m = par.min(min_active(lat))
                    if m is not None:   # BatchTopK inference threshold: EMA of the smallest kept value
                        th = sae.threshold
                        th.copy_(m.expand_as(th) if step == 0 else (1 - tc.threshold_lr) * th + tc.threshold_lr * m)
            metrics = None
            if (step + 1) % tc.log_every == 0 or step + 1 == n_steps:
                with torch.no_grad():
                    b = xs.shape[0]
                    metrics = {"step": step + 1, "tokens": (step + 1) * tc.batch_size,
                               "loss": par.mean(loss, b, B).item(), "fvu": par.fvu(xs, x_hat).item(),
                               "l0": par.sum((lat.values > 0).sum()).item() / B, "aux": par.mean(aux, b, B).item(),
                               "dead_frac": (since_fired >= tc.dead_tokens).float().mean().item(),
                               "lr": lr_at(step, tc), "elapsed_s": time.perf_counter() - t0}
                if eval_fn is not None and eval_every and (step + 1) % eval_every == 0:
                    metrics.update(eval_fn(sae.eval()))
                    sae.train()
                history.append(metrics)
                bar.update(description=f"train SAE: fvu {metrics['fvu']:.3f} l0 {metrics['l0']:.0f} "
                                       f"dead {metrics['dead_frac']:.1%}")
            bar.advance(1)
            if (step + 1) % tc.checkpoint_every == 0 and step + 1 < n_steps:
                checkpoint(step + 1)
            if on_step is not None:
                on_step(step + 1, metrics or {})
    sae.eval()
    if arch.has_threshold and not arch.learns_threshold:
        calibrate_threshold(sae, init_sample(source, tc.init_tokens, tc.seed + 1, cfg.exclude_first_token))
    final = dict(history[-1]) if history else {}
    if eval_fn is not None:
        final.update(eval_fn(sae))
    if not par.lead:
        par.barrier()  # return once rank 0's files exist
        return sae
    save_sae(sae, out)
    summary = {"complete": True, "run_key": run_key, "sae": cfg.to_dict(), "train": tc.to_dict(),
               "data": {"n_tokens": sum(source.sizes), "settings": source.settings},
               "final": final, "history": history, "wall_s": time.perf_counter() - t0,
               "steps_this_call": n_steps - start,   # wall_s covers only these (a resumed run did the rest)
               "tokens_per_s": (n_steps - start) * tc.batch_size / (time.perf_counter() - t0)}
    atomic_write_text(summary_path, json.dumps(summary, indent=2))
    ckpt_path.unlink(missing_ok=True)
    par.barrier()
    return sae


def _fired(lat: Latents, d_sae: int) -> torch.Tensor:
    if lat.indices is None:
        return (lat.values > 0).any(0)
    return torch.bincount(lat.indices[lat.values > 0], minlength=d_sae) > 0


def sae_config(d_in: int, *, width: str | int = "8x", k: int = 32, architecture: str = "batchtopk",
               model: str = "", layer: int | None = None) -> SAEConfig:
    """An `SAEConfig` from CLI-style settings (the input scale and outlier rule are set in training)."""
    return SAEConfig(d_in=d_in, d_sae=parse_width(width, d_in), architecture=architecture, k=k,
                     model=model, layer=layer, hook_name=hook_name(layer))
