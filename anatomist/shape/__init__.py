"""Shaping what DPO learns from an audit: reward shaping λ, token filtering, inoculation prompts,
activation steering, and a TRL export (DESIGN.md). The DPO loop (`anatomist.train.dpo`) consumes
`ShapedPair`s; `shape_pairs` makes them.

    audit = Audit("runs/audit")
    shaped = shape_pairs(pairs, audit, lam={3: -1.0})
"""

from anatomist.shape.audit import Audit
from anatomist.shape.losses import (
           DPOOutput,
           concept_offset,
           dpo_loss,
           sequence_logps,
           shift_reference,
           token_logps,
)
from anatomist.shape.pairs import ShapedPair, plain
from anatomist.shape.shaping import Inoculation, TokenFilter, shape_pairs
from anatomist.shape.steer import add_to_residual, concept_direction

__all__ = ["Audit", "DPOOutput", "Inoculation", "ShapedPair", "TokenFilter", "add_to_residual", "concept_direction",
           "concept_offset", "dpo_loss", "plain", "sequence_logps", "shape_pairs", "shift_reference", "token_logps"]
