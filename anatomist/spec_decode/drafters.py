"""Drafters: who proposes the γ tokens that the target then verifies. Registry keyed by name.

A drafter sees the trunk's verified hidden states through `observe` and proposes drafts with
`propose`. It returns the draft tokens and, for sampled drafts, the distribution q each was drawn
from (over the full vocabulary); `None` means deterministic (one-hot) drafts, which rejection
sampling handles as greedy drafting. Randomness comes in as a `torch.Generator`.
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch

from anatomist.errors import AnatomistError
from anatomist.spec_decode.head import MTPHead
from anatomist.spec_decode.ragged import RaggedKV
from anatomist.spec_decode.verify import sample_from_probs, sampling_probs, uniforms

__all__ = ["Drafter", "MTPDrafter", "NGramDrafter", "DRAFTERS", "DRAFT_MODES", "make_drafter"]

DRAFT_MODES = ("rs", "greedy")  # sampled drafts verified with q / one-hot (argmax) drafts


class Drafter(Protocol):
    def reset(self, batch_size: int) -> None: ...

    def observe(self, hidden: torch.Tensor, next_tokens: torch.Tensor, valid: torch.Tensor) -> None:
        """hidden [B, K, H] trunk states just verified; next_tokens [B, K] the token that followed
        each of them; valid [B, K] which of the K pairs are real (accepted)."""

    def propose(self, history: list[list[int]], gamma: int, *, temperature: float, top_k: int,
                top_p: float, mode: str, generator: torch.Generator | None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """→ draft tokens [B, γ], q [B, γ, V] or None (one-hot drafts)."""


class NGramDrafter:
    """Prompt-lookup drafting: copy what followed the latest earlier occurrence of the last n
    tokens (n = max_ngram … 1). Model-free; drafts are deterministic (one-hot q)."""

    def __init__(self, max_ngram: int = 3):
        self.max_ngram = max_ngram

    def reset(self, batch_size: int) -> None:
        pass

    def observe(self, hidden, next_tokens, valid) -> None:
        pass

    def _lookup(self, seq: list[int], gamma: int) -> list[int]:
        for n in range(min(self.max_ngram, len(seq) - 1), 0, -1):
            tail = seq[-n:]
            for start in range(len(seq) - n - 1, -1, -1):  # latest match first
                if seq[start:start + n] == tail:
                    cont = seq[start + n:start + n + gamma]
                    if cont:
                        return (cont + [cont[-1]] * gamma)[:gamma]
        return [seq[-1]] * gamma  # no match: a cheap guess; rejection keeps it lossless

    def propose(self, history, gamma, *, temperature, top_k, top_p, mode, generator):
        rows = [self._lookup(seq, gamma) for seq in history]
        return torch.tensor(rows, dtype=torch.long).reshape(len(history), gamma), None


class MTPDrafter:
    """Drafts with an `MTPHead`, keeping the head's own ragged KV cache in step with the trunk.

    mode "rs": d_k ~ q_k (processed with the same temperature / top-k / top-p as p) and q is
    returned for rejection sampling; mode "greedy": d_k = argmax q_k, one-hot q.
    """

    def __init__(self, head: MTPHead):
        self.head = head
        self.kv: RaggedKV | None = None
        self.g_last: torch.Tensor | None = None
        self.state_layers = tuple(head.state_layers)  # trunk states `observe` needs packed after h

    def reset(self, batch_size: int) -> None:
        dev = self.head.vocab_ids.device
        self.kv = RaggedKV(batch_size, device=dev)
        self.g_last = None

    @torch.no_grad()
    def observe(self, hidden, next_tokens, valid) -> None:
        assert self.kv is not None, "call reset() first"
        pos, mask = self.kv.append(valid, hidden.dtype)
        g = self.head.step(self.head.enter(hidden), next_tokens, pos, mask, self.kv.cache)  # [B, K, H]
        last = (valid.long().cumsum(-1).argmax(-1))  # index of the last real pair in each row
        self.g_last = g[torch.arange(g.shape[0]), last]  # [B, H]
        self.kv.invalidate_tail(valid, valid.shape[1])

    def _full(self, q_small: torch.Tensor) -> torch.Tensor:
        if self.head.full_vocab:
            return q_small
        q = q_small.new_zeros(*q_small.shape[:-1], self.head.vocab_size)
        return q.scatter_(-1, self.head.vocab_ids.expand(*q_small.shape[:-1], -1), q_small)

    @torch.no_grad()
    def propose(self, history, gamma, *, temperature, top_k, top_p, mode, generator):
        assert self.g_last is not None, "observe() must run before propose()"
        B = self.g_last.shape[0]
        g, tokens, qs = self.g_last[:, None], [], []
        for k in range(gamma):
            if k > 0:  # recurrent step at the next position, attending to this chain's earlier depths
                pos, mask = self.kv.append(torch.ones(B, 1, dtype=torch.bool, device=g.device), g.dtype)
                g = self.head.step(g, tokens[-1][:, None], pos, mask, self.kv.cache)
            q_small = sampling_probs(self.head.logits(g[:, 0]), temperature, top_k, top_p)  # [B, V']
            if mode == "greedy":
                d_small = q_small.argmax(-1)
            else:
                u = uniforms((B,), generator, q_small.device)
                d_small = sample_from_probs(q_small, u)
                qs.append(self._full(q_small))
            tokens.append(self.head.vocab_ids[d_small])
        self.kv.crop(gamma - 1)  # drop the chain's recurrent entries: only verified ones stay
        q = torch.stack(qs, dim=1) if mode == "rs" else None
        return torch.stack(tokens, dim=1), q


DRAFTERS: dict[str, Callable[..., Drafter]] = {
    "mtp": lambda head=None, **kw: MTPDrafter(head) if head is not None else _need_head(),
    "ngram": lambda max_ngram=3, **kw: NGramDrafter(max_ngram),
}


def _need_head():
    raise AnatomistError("drafter 'mtp' needs a trained head (--head DIR)")


def make_drafter(name: str, **kwargs) -> Drafter:
    if name not in DRAFTERS:
        raise AnatomistError(f"unknown drafter {name!r}; choose from {', '.join(DRAFTERS)}")
    return DRAFTERS[name](**kwargs)
