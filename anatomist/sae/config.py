"""Configuration of an SAE (what it computes) and of its training run (how it is fitted).

`SAEConfig` travels with the weights (inside the SAELens `cfg.json`, under
`metadata.anatomist`), so a loaded SAE encodes exactly as it did in training: the input scale
and the outlier rule are part of it. `TrainConfig` is stored beside checkpoints so a resumed
run can check it continues the same run.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields, replace

from anatomist.errors import AnatomistError

ARCHITECTURE_NAMES = ("batchtopk", "topk", "jumprelu", "relu")


class _DictIO:
    """JSON-friendly round trip; unknown keys (e.g. from a newer version or SAELens) are ignored."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass(frozen=True)
class SAEConfig(_DictIO):
    """What the SAE computes.

    d_in, d_sae: input and latent widths.
    architecture: a key of `anatomist.sae.arch.ARCHITECTURES`.
    k: active latents per token (TopK: exactly; BatchTopK: on average over a training batch).
    norm_scale: inputs are multiplied by this before encoding and reconstructions divided by it
        (chosen at training start so that E‖x·s‖² = d_in over non-outlier tokens).
    exclude_first_token: position-0 tokens (the attention sink) are outliers: skipped in
        training and evaluation, and left untouched when the reconstruction is spliced in.
    max_norm: tokens whose raw norm exceeds this are outliers too (None: no norm rule).
    model / layer / hook_name: where the activations come from (residual after block `layer`).
    """

    d_in: int
    d_sae: int
    architecture: str = "batchtopk"
    k: int = 32
    norm_scale: float = 1.0
    exclude_first_token: bool = True
    max_norm: float | None = None
    model: str = ""
    layer: int | None = None
    hook_name: str = ""

    def __post_init__(self):
        if self.architecture not in ARCHITECTURE_NAMES:
            raise AnatomistError(f"architecture must be one of {ARCHITECTURE_NAMES}, got {self.architecture!r}")
        if self.d_in <= 0 or self.d_sae <= 0:
            raise AnatomistError(f"d_in and d_sae must be positive, got {self.d_in}, {self.d_sae}")
        if not 0 < self.k <= self.d_sae:
            raise AnatomistError(f"k must be in 1..d_sae={self.d_sae}, got {self.k}")
        if not self.norm_scale > 0:
            raise AnatomistError(f"norm_scale must be positive, got {self.norm_scale}")

    def with_(self, **changes) -> "SAEConfig":
        return replace(self, **changes)


@dataclass(frozen=True)
class TrainConfig(_DictIO):
    """How an SAE is trained (defaults: the default recipe, Gao et al. 2024 where it applies).

    tokens: training tokens seen (several passes over the data if it holds fewer).
    batch_size: tokens per optimizer step.
    lr: Adam learning rate; warmup_steps linear warm-up, then constant, then linear decay to 0
        over the last `decay_frac` of steps.
    aux_k / aux_coeff: auxiliary loss against dead latents (Gao et al. 2024, §A.2): the top
        `aux_k` dead latents reconstruct the main reconstruction's error, weight `aux_coeff`.
        aux_k=0 turns it off.
    dead_tokens: a latent that fired on none of the last `dead_tokens` training tokens is dead.
    l1_coeff (relu) / l0_coeff, bandwidth, threshold_init (jumprelu): sparsity penalties.
    threshold_lr: EMA rate of the BatchTopK inference threshold.
    buffer_tokens: shuffle buffer (shards are loaded in groups of at least this many tokens).
    init_tokens: sample used for the input scale, the outlier rule and b_dec's geometric median.
    outlier_factor: max_norm = outlier_factor × median token norm of the init sample (0: off).
    enc_init_scale: W_enc starts as enc_init_scale × W_decᵀ (small values start the
        reconstruction near b_dec instead of far off; cf. SAELens' decoder_init_norm=0.1).
    checkpoint_every: steps between (atomic) checkpoints; log_every: steps between metric logs.
    """

    tokens: int = 2_000_000
    batch_size: int = 4096
    lr: float = 1e-3
    warmup_steps: int = 20
    decay_frac: float = 0.2
    aux_k: int = 512
    aux_coeff: float = 1 / 32
    dead_tokens: int = 200_000
    l1_coeff: float = 5.0
    l0_coeff: float = 1e-3
    bandwidth: float = 0.05
    threshold_init: float = 0.1
    threshold_lr: float = 0.01
    buffer_tokens: int = 500_000
    init_tokens: int = 20_000
    outlier_factor: float = 10.0
    enc_init_scale: float = 1.0
    seed: int = 0
    checkpoint_every: int = 50
    log_every: int = 10

    def __post_init__(self):
        for name in ("tokens", "batch_size", "buffer_tokens", "init_tokens", "dead_tokens"):
            if getattr(self, name) <= 0:
                raise AnatomistError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0 <= self.decay_frac <= 1:
            raise AnatomistError(f"decay_frac must be in [0, 1], got {self.decay_frac}")
        if not self.lr > 0:
            raise AnatomistError(f"lr must be positive, got {self.lr}")
        if self.aux_k < 0:
            raise AnatomistError(f"aux_k must be >= 0 (0: off), got {self.aux_k}")

    @property
    def steps(self) -> int:
        return max(1, self.tokens // self.batch_size)



def stable_hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]
