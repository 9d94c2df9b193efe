"""Plain and speculative decoding in one loop: draft → verify → accept.

Each round feeds [pending token, d_1 … d_γ] to the target in one forward, turns the logits into
the final sampling distributions p (temperature / top-k / top-p), and calls the pure
`rejection_sample`. The rejected drafts' KV slots are removed (cropped; holes at batch > 1, see
`ragged.py`). With no drafter γ = 0 and the same loop is plain sampling, so "own plain loop" and
"speculative" share every line except the draft.

RL log-probs come from the verification forward the target already ran, never from the draft:
`logprobs[b][t] = log p(token)`, p the distribution the token was sampled from (temperature /
top-k / top-p applied: `sampling_logits`). That sampled distribution is the policy an RL update
must score: at T ≠ 1 the untempered log π would bias the policy gradient and put the PPO ratio
off 1 before any update.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from anatomist.spec_decode.drafters import DRAFT_MODES, Drafter
from anatomist.spec_decode.ragged import RaggedKV
from anatomist.spec_decode.verify import rejection_sample, sampling_logits, uniforms

log = logging.getLogger(__name__)

__all__ = ["AcceptStats", "GenerateOutput", "entropy_nats", "generate", "trunk_forward"]


@dataclass
class AcceptStats:
    """Acceptance counters over verification rounds of unfinished rows."""

    gamma: int
    rounds: int = 0
    emitted: int = 0  # tokens emitted in those rounds (accepted drafts + correction/bonus)
    reached: list[int] = field(default_factory=list)  # [γ] rounds that tested draft i
    accepted: list[int] = field(default_factory=list)  # [γ] rounds that accepted draft i
    per_row_accepted: list[int] = field(default_factory=list)  # [B] accepted drafts per row
    # Optional per-test records for the entropy analysis: (depth, H(p) in nats, accepted).
    records: list[tuple[int, float, bool]] = field(default_factory=list)

    def __post_init__(self):
        self.reached = self.reached or [0] * self.gamma
        self.accepted = self.accepted or [0] * self.gamma

    @property
    def mean_accept_len(self) -> float:
        """Mean tokens emitted per round, bonus / correction token included (plain = 1)."""
        return self.emitted / max(self.rounds, 1)

    @property
    def accept_rate(self) -> list[float]:
        """Per-position acceptance α_i = P(draft i accepted | drafts < i accepted)."""
        return [a / r if r else float("nan") for a, r in zip(self.accepted, self.reached)]

    @property
    def draft_acceptance(self) -> float:
        """Accepted drafts / proposed drafts (= (mean_accept_len − 1) / γ)."""
        return (self.emitted - self.rounds) / max(self.rounds * self.gamma, 1)

    def as_metrics(self) -> dict[str, float]:
        m = {"spec/mean_accept_len": self.mean_accept_len, "spec/draft_acceptance": self.draft_acceptance,
             "spec/rounds": float(self.rounds)}
        for i, a in enumerate(self.accept_rate):
            m[f"spec/alpha_{i + 1}"] = a
        return m


@dataclass
class GenerateOutput:
    tokens: list[list[int]]  # generated tokens per row (EOS included when hit)
    logprobs: list[torch.Tensor]  # [n_b] log-probs of those tokens under the sampled distribution p
    stats: AcceptStats


def entropy_nats(p: torch.Tensor) -> torch.Tensor:
    """H(p) [...] of probs [..., V] in nats, with 0·log 0 = 0."""
    return -(p * p.clamp(min=1e-30).log()).sum(-1)


def trunk_forward(model, input_ids: torch.Tensor, kv: RaggedKV, valid: torch.Tensor,
                  logits_from: int = 0, state_layers: tuple[int, ...] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the target on input_ids [B, K] against the ragged cache.

    → hidden [B, K, H] (final-norm states, what the LM head reads; with `state_layers` the residual
    states entering those layers are packed after it, [B, K, (1+A)·H]), logits [B, K − logits_from, V].
    """
    dtype = model.get_input_embeddings().weight.dtype
    pos, mask = kv.append(valid, dtype)
    out = model.model(input_ids=input_ids, attention_mask=mask, position_ids=pos, cache=kv.cache,
                      use_cache=True, output_hidden_states=bool(state_layers))
    h = out.last_hidden_state  # [B, K, H]
    packed = torch.cat([h] + [out.hidden_states[i] for i in state_layers], dim=-1) if state_layers else h
    return packed, model.get_output_embeddings()(h[:, logits_from:])


def _left_pad(prompts: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    P = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), P), pad, dtype=torch.long)
    valid = torch.zeros(len(prompts), P, dtype=torch.bool)
    for b, p in enumerate(prompts):
        ids[b, P - len(p):] = torch.tensor(p, dtype=torch.long)
        valid[b, P - len(p):] = True
    return ids, valid


@torch.no_grad()
def generate(model, prompts: list[list[int]], *, drafter: Drafter | None = None, gamma: int = 3,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, max_new_tokens: int = 64,
             eos_token_id: int | list[int] | None = None, draft_mode: str = "rs",
             generator: torch.Generator | None = None, record: bool = False) -> GenerateOutput:
    """Sample continuations of token-id prompts, speculatively when a drafter is given.

    The output distribution equals plain sampling from p (temperature / top-k / top-p) whatever
    the drafter; at temperature 0 it is greedy decoding token for token. `draft_mode` "rs"
    samples drafts from q and verifies with q; "greedy" drafts argmax q (one-hot q).
    `record=True` also stores (depth, H(p), accepted) for every draft test in `stats.records`.
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    if draft_mode not in DRAFT_MODES:
        raise ValueError(f"draft_mode must be one of {DRAFT_MODES}, got {draft_mode!r}")
    gamma = gamma if drafter is not None else 0
    eos = set([eos_token_id] if isinstance(eos_token_id, int) else (eos_token_id or []))
    B = len(prompts)
    dev = model.get_input_embeddings().weight.device
    stats = AcceptStats(gamma=gamma, per_row_accepted=[0] * B)
    rows = torch.arange(B, device=dev)

    def rand(n: int) -> torch.Tensor:
        return uniforms((B, n), generator, dev)

    # Prefill: the whole prompt in one forward; the first token is sampled from its last position.
    ids, valid = _left_pad(prompts, pad=0)
    ids, valid = ids.to(dev), valid.to(dev)
    kv = RaggedKV(B, device=dev)
    layers = tuple(getattr(drafter, "state_layers", ()))  # trunk states an EAGLE-3 head reads
    h, logits = trunk_forward(model, ids, kv, valid, logits_from=ids.shape[1] - 1, state_layers=layers)
    z = sampling_logits(logits, temperature, top_k, top_p)  # [B, 1, V]
    p = z.softmax(-1)
    res = rejection_sample(ids[:, :0], None, p, rand(1))
    y = res.tokens[:, 0]  # [B] pending token: sampled, not yet in the cache
    lp = torch.log_softmax(z, -1)[:, 0].gather(-1, y[:, None])[:, 0]
    out_tokens = [[int(t)] for t in y]
    out_lp = [[float(v)] for v in lp]
    done = [int(t) in eos or max_new_tokens <= 1 for t in y]
    if drafter is not None:
        drafter.reset(B)
        drafter.observe(h, torch.cat([ids[:, 1:], y[:, None]], dim=1), valid)
    history = [list(p) + [int(t)] for p, t in zip(prompts, y)]

    while not all(done):
        active = [not d for d in done]
        if drafter is not None:
            drafts, q = drafter.propose(history, gamma, temperature=temperature, top_k=top_k,
                                        top_p=top_p, mode=draft_mode, generator=generator)
            drafts = drafts.to(dev)
        else:
            drafts, q = ids.new_zeros(B, 0), None
        block = torch.cat([y[:, None], drafts], dim=1)  # [B, γ+1]
        h, logits = trunk_forward(model, block, kv, torch.ones_like(block, dtype=torch.bool), state_layers=layers)
        z = sampling_logits(logits, temperature, top_k, top_p)  # [B, γ+1, V]
        p = z.softmax(-1)
        res = rejection_sample(drafts, q, p, rand(gamma + 1))
        n = res.n_accepted  # [B]
        keep = torch.arange(gamma + 1, device=dev)[None] <= n[:, None]  # [B, γ+1] real slots/pairs
        kv.invalidate_tail(keep, gamma + 1)
        if drafter is not None:
            drafter.observe(h, res.tokens.clamp(min=0), keep)
        lp_all = torch.log_softmax(z, -1).gather(-1, res.tokens.clamp(min=0)[..., None])[..., 0]  # [B, γ+1]
        if record and gamma:
            ent = entropy_nats(p)  # [B, γ+1] H(p) of the final sampling distribution
        y = res.tokens[rows, n]
        n_l, tok_l, lp_l = n.tolist(), res.tokens.tolist(), lp_all.tolist()
        ent_l = ent.tolist() if record and gamma else None
        for b in range(B):
            if not active[b]:
                continue
            nb = n_l[b]
            stats.rounds += 1
            stats.emitted += nb + 1
            stats.per_row_accepted[b] += nb
            for i in range(min(nb + 1, gamma)):
                stats.reached[i] += 1
                stats.accepted[i] += int(i < nb)
                if ent_l is not None:
                    stats.records.append((i + 1, ent_l[b][i], i < nb))
            for j in range(nb + 1):
                t = tok_l[b][j]
                out_tokens[b].append(t)
                out_lp[b].append(lp_l[b][j])
                history[b].append(t)
                if t in eos or len(out_tokens[b]) >= max_new_tokens:
                    done[b] = True
                    break
    for b in range(B):  # a last round can overshoot max_new_tokens
        del out_tokens[b][max_new_tokens:], out_lp[b][max_new_tokens:]
    return GenerateOutput(tokens=out_tokens, logprobs=[torch.tensor(v) for v in out_lp], stats=stats)

