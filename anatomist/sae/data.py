"""Training data for SAEs: activation chunks from a capture store (or a tensor), outlier
filtering, a deterministic shuffled buffer, and the statistics used to initialise an SAE.

Outliers (decided here, recorded in the SAE config): the first token of every sequence
(pos 0, the attention sink; on SmolLM2-135M layer 15 its norm is ~25,000 against a median of
~170) is **excluded**, as is any token whose norm exceeds `outlier_factor` × the median norm of
the init sample. Excluded tokens are neither trained on nor counted in metrics, and when the
reconstruction is spliced into the model they keep their original activation.

Shuffling: each epoch the chunks (store shards) are permuted with a generator seeded by
(seed, epoch) and grouped into buffers of ≥ `buffer_tokens` tokens; each buffer's tokens are
permuted with a generator seeded by (seed, epoch, buffer). Leftover tokens of a buffer that do
not fill a batch are skipped in that epoch. The batch at step t is a pure function of (data,
seed, batch_size, buffer_tokens, t), which is what makes resume exact.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator

import torch

from anatomist.capture import ActivationStore
from anatomist.errors import AnatomistError

CHUNK_ROWS = 1 << 17  # a tensor source is cut into chunks of this many rows


class ActivationSource:
    """Chunks of (acts [N, D], pos [N] | None), with per-chunk counts of non-outlier tokens."""

    def __init__(self, data):
        if isinstance(data, (str, Path)):
            data = ActivationStore(data)
        if isinstance(data, ActivationStore):
            self.store, self.tensor = data, None
            self.d_in = data.d_model
            self.settings = dict(data.settings)
            self.sizes = [s.n_rows for s in data.shards]
        elif isinstance(data, torch.Tensor):
            if data.ndim != 2:
                raise AnatomistError(f"activations must be a [N, d_in] tensor, got shape {tuple(data.shape)}")
            self.store, self.tensor = None, data
            self.d_in = data.shape[1]
            self.settings = {}
            self.sizes = [min(CHUNK_ROWS, data.shape[0] - i) for i in range(0, data.shape[0], CHUNK_ROWS)]
        else:
            raise AnatomistError(f"expected an ActivationStore, a store folder or a tensor, got {type(data).__name__}")
        if sum(self.sizes) == 0:
            raise AnatomistError("no activations to train on")
        self._kept: dict[tuple, list[int]] = {}

    def __len__(self) -> int:
        return len(self.sizes)

    def load(self, i: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.tensor is not None:
            return self.tensor[i * CHUNK_ROWS:(i + 1) * CHUNK_ROWS].float(), None
        from safetensors import safe_open

        with safe_open(str(self.store.folder / self.store.shards[i].file), framework="pt") as f:
            return f.get_tensor("acts").float(), f.get_tensor("pos")

    def load_kept(self, i: int, exclude_first: bool, max_norm: float | None) -> torch.Tensor:
        acts, pos = self.load(i)
        return acts[~outlier_mask(acts, pos, exclude_first, max_norm)]             # [n, D]

    def kept_counts(self, exclude_first: bool, max_norm: float | None) -> list[int]:
        key = (exclude_first, max_norm)
        if key not in self._kept:
            self._kept[key] = [self.load_kept(i, *key).shape[0] for i in range(len(self))]
        return self._kept[key]


def outlier_mask(acts: torch.Tensor, pos: torch.Tensor | None, exclude_first: bool,
                 max_norm: float | None) -> torch.Tensor:
    """True on tokens excluded from SAE training: pos 0 (the attention sink) and huge norms. [N]"""
    out = torch.zeros(acts.shape[0], dtype=torch.bool)
    if exclude_first and pos is not None:
        out |= pos == 0
    if max_norm is not None:
        out |= acts.norm(dim=-1) > max_norm
    return out


def _generator(*key: int) -> torch.Generator:
    seed = 0
    for k in key:
        seed = (seed * 1_000_003 + int(k) + 1) % (2 ** 63)
    return torch.Generator().manual_seed(seed)


def _buffers(sizes: list[int], order: list[int], buffer_tokens: int) -> list[list[int]]:
    groups, cur, n = [], [], 0
    for i in order:
        cur.append(i)
        n += sizes[i]
        if n >= buffer_tokens:
            groups.append(cur)
            cur, n = [], 0
    if cur:
        groups.append(cur)
    return groups


def batches(source: ActivationSource, *, batch_size: int, buffer_tokens: int, seed: int,
            exclude_first: bool, max_norm: float | None, start_step: int = 0) -> Iterator[tuple[int, torch.Tensor]]:
    """Endless (step, x [batch_size, D]) raw-activation batches from step `start_step` on."""
    kept = source.kept_counts(exclude_first, max_norm)
    if sum(kept) < batch_size:
        raise AnatomistError(f"only {sum(kept)} usable tokens (after excluding outliers) for a batch of {batch_size}")
    step, epoch = 0, 0
    while True:
        order = torch.randperm(len(source), generator=_generator(seed, epoch)).tolist()
        for b, group in enumerate(_buffers(kept, order, buffer_tokens)):
            n_batches = sum(kept[i] for i in group) // batch_size
            if step + n_batches <= start_step:      # the whole buffer lies before the resume point
                step += n_batches
                continue
            x = torch.cat([source.load_kept(i, exclude_first, max_norm) for i in group])  # [N, D]
            perm = torch.randperm(x.shape[0], generator=_generator(seed, epoch, b + 1))
            for j in range(n_batches):
                if step >= start_step:
                    yield step, x[perm[j * batch_size:(j + 1) * batch_size]]
                step += 1
        epoch += 1


# --- initialisation statistics ------------------------------------------------------------------

def init_sample(source: ActivationSource, n_tokens: int, seed: int, exclude_first: bool) -> torch.Tensor:
    """Up to `n_tokens` raw activations, an equal random share from every chunk (pos-0 excluded
    if asked), so that the statistics see the whole dataset, not one shard's sequences: [n, D]."""
    per_chunk = -(-n_tokens // len(source))
    parts = []
    for i in range(len(source)):
        x = source.load_kept(i, exclude_first, None)
        parts.append(x[torch.randperm(x.shape[0], generator=_generator(seed, 7919, i))[:per_chunk]])
    x = torch.cat(parts)
    return x[torch.randperm(x.shape[0], generator=_generator(seed, 7920))[:n_tokens]]


def norm_scale_for(x: torch.Tensor) -> float:
    """Power of two s nearest to √D / mean‖x‖, so E‖x·s‖² ≈ D (Anthropic, April 2024 update).

    A power of two keeps folding s into the saved weights exact.
    """
    ideal = math.sqrt(x.shape[1]) / x.norm(dim=-1).mean().item()
    return float(2.0 ** round(math.log2(ideal)))


def geometric_median(x: torch.Tensor, iters: int = 100, tol: float = 1e-6) -> torch.Tensor:
    """Weiszfeld's algorithm: argmin_m Σ_i ‖x_i − m‖. x [N, D] → [D]."""
    x = x.double()
    m = x.mean(0)
    for _ in range(iters):
        w = 1.0 / (x - m).norm(dim=-1).clamp_min(1e-8)                               # [N]
        new = (w[:, None] * x).sum(0) / w.sum()
        done = (new - m).norm() <= tol * m.norm().clamp_min(1e-8)
        m = new
        if done:
            break
    return m.float()
