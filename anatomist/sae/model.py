"""The SAE module: encode / decode on raw residual activations, any registered architecture.

    x̃   = x · s                                  (s = cfg.norm_scale)
    pre  = (x̃ − b_dec) W_enc + b_enc              [.., F]
    f    = act(pre)                               [.., F]   (anatomist.sae.arch)
    x̂   = (f W_dec + b_dec) / s                   [.., D]

Decoder rows W_dec[i] are unit-norm in the scaled space (the trainer keeps them so), so
W_dec[i] is the direction of latent i. Parameter names and shapes are SAELens'.
"""

from __future__ import annotations

import torch
from torch import nn

from anatomist.sae.arch import ARCHITECTURES, Architecture
from anatomist.sae.config import SAEConfig


class SAE(nn.Module):
    def __init__(self, cfg: SAEConfig):
        super().__init__()
        self.cfg = cfg
        D, F = cfg.d_in, cfg.d_sae
        self.W_enc = nn.Parameter(torch.zeros(D, F))      # [D, F]
        self.b_enc = nn.Parameter(torch.zeros(F))         # [F]
        self.W_dec = nn.Parameter(torch.zeros(F, D))      # [F, D]
        self.b_dec = nn.Parameter(torch.zeros(D))         # [D]
        if self.arch.learns_threshold:
            self.threshold = nn.Parameter(torch.zeros(F))  # [F]
        elif self.arch.has_threshold:
            self.register_buffer("threshold", torch.zeros(F))
        else:
            self.threshold = None

    @property
    def arch(self) -> Architecture:
        return ARCHITECTURES[self.cfg.architecture]

    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator, b_dec: torch.Tensor | None = None,
                     threshold: float = 0.0, enc_scale: float = 1.0) -> "SAE":
        """Random unit decoder rows, encoder = enc_scale × decoder transposed (Gao et al. 2024), b_enc = 0."""
        W = torch.randn(self.d_sae, self.d_in, generator=generator)
        W /= W.norm(dim=-1, keepdim=True)
        self.W_dec.copy_(W)
        self.W_enc.copy_(W.T * enc_scale)
        self.b_enc.zero_()
        self.b_dec.copy_(b_dec if b_dec is not None else torch.zeros(self.d_in))
        if self.threshold is not None:
            self.threshold.fill_(threshold)
        return self

    # --- the maps, in the scaled space ----------------------------------------------------

    def pre_acts(self, x_scaled: torch.Tensor) -> torch.Tensor:
        # (x̃ − b_dec) W_enc + b_enc, written so that b_dec's gradient is a [D]×[D, F] product
        # instead of a second [B, F]×[F, D] one.
        return x_scaled @ self.W_enc + (self.b_enc - self.b_dec @ self.W_enc)        # [.., F]

    # --- public API on raw activations ------------------------------------------------------

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """[.., d_in] raw activations → [.., d_sae] latent activations."""
        pre = self.pre_acts(x.to(self.W_enc.dtype) * self.cfg.norm_scale)
        return self.arch.activate(pre, self.threshold, self.cfg.k)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """[.., d_sae] latents → [.., d_in] reconstruction in raw units."""
        return (f @ self.W_dec + self.b_dec) / self.cfg.norm_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def is_outlier(self, x: torch.Tensor, pos: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens the SAE was not trained on (attention sink at pos 0, huge norms): bool [..]."""
        out = torch.zeros(x.shape[:-1], dtype=torch.bool, device=x.device)
        if self.cfg.exclude_first_token and pos is not None:
            out |= pos == 0
        if self.cfg.max_norm is not None:
            out |= x.norm(dim=-1) > self.cfg.max_norm
        return out

    def decoder_directions(self) -> torch.Tensor:
        """Unit direction of each latent in the raw residual space: [F, D]."""
        W = self.W_dec.detach()
        return W / W.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    def extra_repr(self) -> str:
        c = self.cfg
        return f"{c.architecture}, d_in={c.d_in}, d_sae={c.d_sae}, k={c.k}, layer={c.layer}"
