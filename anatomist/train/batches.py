"""Tokenized DPO sequences and the order they are trained in.

Each pair i becomes two sequences, 2i = (x, y⁺) and 2i+1 = (x, y⁻), tokenized by
`anatomist.models.chat.encode_response` (prompt = chat template with the generation prompt,
response = assistant text + end-of-turn token). A ShapedPair's token mask has one entry per
response token of that encoding; truncation cuts a response at its end, so a longer mask is cut
to the kept tokens, and a shorter one is an error.

Batch order is a pure function of (seed, epoch), so a resumed run sees the same batches as an
uninterrupted one: each epoch is a random permutation, cut into windows of `GROUP` micro-batches
that are sorted by length (less padding), then the micro-batches of the epoch are shuffled.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from anatomist.errors import AnatomistError, DataError
from anatomist.models.chat import encode_response
from anatomist.shape.pairs import ShapedPair

GROUP = 16  # micro-batches per length-sorted window


@dataclass(frozen=True)
class Seq:
    ids: tuple[int, ...]     # prompt + response tokens
    prompt_len: int          # response tokens are ids[prompt_len:]
    keep: tuple[float, ...]  # token-filter weight per response token (1 keep, 0 drop)

    @property
    def n_response(self) -> int:
        return len(self.ids) - self.prompt_len


def _keep(mask, n: int, pair: int, field: str) -> tuple[float, ...]:
    if mask is None:
        return (1.0,) * n
    if len(mask) < n:
        raise DataError(f"token mask has {len(mask)} entries but the response has {n} tokens "
                        "(one entry per response token of encode_response)", row=pair, field=field)
    if any(m not in (0, 1) for m in mask[:n]):
        raise DataError("token mask entries must be 0 or 1", row=pair, field=field)
    return tuple(float(m) for m in mask[:n])


def encode_pairs(tokenizer, pairs: Sequence[ShapedPair], *, max_length: int,
                 max_response_tokens: int | None) -> list[Seq]:
    """Sequences [2N]: chosen at 2i, rejected at 2i+1."""
    seqs = []
    for i, p in enumerate(pairs):
        for text, mask, field in ((p.chosen, p.chosen_token_mask, "chosen_token_mask"),
                                  (p.rejected, p.rejected_token_mask, "rejected_token_mask")):
            try:
                enc = encode_response(tokenizer, p.prompt, text, max_length=max_length,
                                      max_response_tokens=max_response_tokens)
            except AnatomistError as e:
                raise DataError(f"pair {p.id!r}: {e}", row=i, field=field.split("_")[0]) from e
            plen = len(enc.input_ids) - enc.n_response
            seqs.append(Seq(tuple(enc.input_ids), plen, _keep(mask, enc.n_response, i, field)))
    return seqs


def tokens_key(seqs: Sequence[Seq]) -> str:
    """Hash of every token id and prompt boundary (covers prompts, responses, tokenizer, truncation)."""
    h = hashlib.sha256()
    for s in seqs:
        h.update(torch.tensor((s.prompt_len, *s.ids), dtype=torch.int64).numpy().tobytes())
        h.update(b"|")
    return h.hexdigest()


def epoch_microbatches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Pair indices per micro-batch for one epoch; `lengths` = tokens per pair (for grouping)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(len(lengths), generator=g).tolist()
    window = batch_size * GROUP
    batches = []
    for start in range(0, len(perm), window):
        chunk = sorted(perm[start:start + window], key=lambda i: lengths[i])
        batches += [chunk[j:j + batch_size] for j in range(0, len(chunk), batch_size)]
    order = torch.randperm(len(batches), generator=g).tolist()
    return [batches[j] for j in order]


def step_microbatches(lengths: Sequence[int], batch_size: int, grad_accum: int, seed: int,
                      step: int) -> list[list[int]]:
    """The `grad_accum` micro-batches of optimizer step `step` (epochs follow one another)."""
    per_epoch = -(-len(lengths) // batch_size)
    out = []
    for j in range(step * grad_accum, (step + 1) * grad_accum):
        epoch, k = divmod(j, per_epoch)
        out.append(epoch_microbatches(lengths, batch_size, seed, epoch)[k])
    return out


@dataclass
class Batch:
    """One micro-batch of B pairs as 2B rows (chosen rows first, then rejected)."""
    input_ids: torch.Tensor       # [2B, T] right-padded
    attention_mask: torch.Tensor  # [2B, T]
    pred_rows: torch.Tensor       # [N] row of each response token
    pred_pos: torch.Tensor        # [N] position whose output predicts it (token position − 1)
    targets: torch.Tensor         # [N] the response token ids
    keep: torch.Tensor            # [N] token-filter weights
    response: torch.Tensor        # [2B, T] bool, response tokens (steering positions)
    seq_index: list[int]          # [2B] sequence ids in the encoding


def collate(seqs: Sequence[Seq], pair_idx: Sequence[int], pad_id: int) -> Batch:
    """Pairs `pair_idx` as rows [chosen..., rejected...]."""
    return collate_rows(seqs, [2 * i for i in pair_idx] + [2 * i + 1 for i in pair_idx], pad_id)


def collate_rows(seqs: Sequence[Seq], rows: Sequence[int], pad_id: int) -> Batch:
    """The sequences `rows` as one right-padded batch."""
    rows = list(rows)
    T = max(len(seqs[r].ids) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    att = torch.zeros(len(rows), T, dtype=torch.long)
    resp = torch.zeros(len(rows), T, dtype=torch.bool)
    pr, pp, tg, kp = [], [], [], []
    for b, r in enumerate(rows):
        s = seqs[r]
        ids[b, :len(s.ids)] = torch.tensor(s.ids)
        att[b, :len(s.ids)] = 1
        resp[b, s.prompt_len:len(s.ids)] = True
        pos = torch.arange(s.prompt_len, len(s.ids))
        pr.append(torch.full_like(pos, b))
        pp.append(pos - 1)
        tg.append(torch.tensor(s.ids[s.prompt_len:]))
        kp.append(torch.tensor(s.keep))
    return Batch(ids, att, torch.cat(pr), torch.cat(pp), torch.cat(tg), torch.cat(kp).float(), resp, rows)
