"""What the DPO loop trains on: a preference pair with its shaping already applied.

`ShapedPair` is the hand-off between `anatomist.shape` (which reads an audit and decides offsets,
token masks and inoculation prompts) and `anatomist.train.dpo` (which only applies them):
    offset              Σ_k λ_k · Δc_k for the shaped concepts (0 = plain DPO), see shape/losses.py
    *_token_mask        1 = keep, 0 = drop, one entry per response token of
                        `anatomist.models.chat.encode_response` (the template's end-of-turn token
                        included); None = keep all. Applied to policy and reference alike.
                        A longer mask (the loop truncates harder) has its tail ignored.
                        `shape_pairs(..., tokenizer=)` sizes masks exactly; without a tokenizer
                        they cover the tokens the audit scored, which falls short only where
                        the audit cut a long response (`anatomist.train` raises on that).
    prompt              chat messages; inoculation prepends a system message here (train only)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ShapedPair:
    id: str
    prompt: tuple[dict, ...]                        # chat messages before the response
    chosen: str
    rejected: str
    offset: float = 0.0
    chosen_token_mask: tuple[int, ...] | None = None
    rejected_token_mask: tuple[int, ...] | None = None
    topic: str | None = None


def plain(pairs) -> list[ShapedPair]:
    """Unshaped pairs from `PreferencePair`s (or anything with id/prompt/chosen/rejected)."""
    return [ShapedPair(p.id, tuple(p.prompt), p.chosen, p.rejected,
                       topic=(getattr(p, "extra", None) or {}).get("topic")) for p in pairs]
