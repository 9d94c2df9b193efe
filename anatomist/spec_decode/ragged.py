"""A KV cache whose rows advance by different amounts: the bookkeeping behind batch ≥ 1.

Every forward appends the same number K of slots to every row (HF's `DynamicCache` is a dense
[B, heads, S, d] tensor). Rows differ in which slots hold real tokens: left padding of the
prompts, and drafts rejected in one row but accepted in another. Those slots stay in the cache
as holes, masked out of attention by an explicit 4D mask and skipped by the position ids, so
every row sees exactly the context plain decoding would have. Holes common to all rows at the
tail are cropped (`DynamicCache.crop`), which at batch 1 means no holes ever remain: rewinding
on rejection is a crop.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache


class RaggedKV:
    """KV cache plus per-slot validity [B, S] and per-row next position [B]."""

    def __init__(self, batch_size: int, device: torch.device | str = "cpu", config=None):
        self.cache = DynamicCache(config=config) if config is not None else DynamicCache()
        self.valid = torch.zeros(batch_size, 0, dtype=torch.bool, device=device)  # [B, S]

    @property
    def next_pos(self) -> torch.Tensor:
        """[B] position id of the next real token of each row (= real tokens so far)."""
        return self.valid.sum(-1)

    def append(self, new_valid: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Reserve K slots; returns (position_ids [B, K], additive mask [B, 1, K, S+K]).

        Slot j is visible to query k iff j is real and not after k; each query always sees
        itself, so padded queries never have an all-masked row (sdpa would give NaN).
        """
        B, K = new_valid.shape
        S = self.valid.shape[1]
        pos = (self.next_pos[:, None] + new_valid.long().cumsum(-1) - 1).clamp(min=0)  # [B, K]
        self.valid = torch.cat([self.valid, new_valid.bool()], dim=1)  # [B, S+K]
        q_slot = torch.arange(S, S + K, device=new_valid.device)  # [K]
        k_slot = torch.arange(S + K, device=new_valid.device)  # [S+K]
        visible = (k_slot[None, :] <= q_slot[:, None])[None] & self.valid[:, None, :]  # [B, K, S+K]
        visible |= (k_slot[None, :] == q_slot[:, None])[None]
        mask = torch.zeros(visible.shape, dtype=dtype, device=visible.device)
        mask.masked_fill_(~visible, torch.finfo(dtype).min)
        return pos, mask[:, None]

    def invalidate_tail(self, keep: torch.Tensor, K: int) -> None:
        """Among the last K slots keep only those with keep [B, K] true; then crop the common tail."""
        self.valid[:, -K:] &= keep.bool()
        # Tail slots that no row uses can go (at batch 1: every rejected draft).
        tail_used = self.valid.any(0).flip(0).long().cumsum(0)  # [S], 0 while all-invalid
        n_drop = int((tail_used == 0).sum())
        if n_drop:
            self.crop(n_drop)

    def crop(self, n: int) -> None:
        """Remove the last n slots from every row."""
        if n <= 0:
            return
        self.cache.crop(-n)
        self.valid = self.valid[:, :-n]
