"""Shaping what DPO learns from an audit: reward shaping λ, token filtering, inoculation prompts,
activation steering, and a TRL export (DESIGN.md). A `Recipe` names the interventions; `apply`
reads them against an audit into a `Shaped` value that the DPO loop (`anatomist.train.dpo`) trains on.

    shaped = apply(Recipe(lam={3: -1.0}), pairs, AuditFolder("runs/audit"))   # anatomist.audit.folder
    train_dpo(model, tokenizer, shaped, DPOConfig(), "runs/dpo")
"""

from anatomist.shape.losses import (
           DPOOutput,
           concept_offset,
           dpo_loss,
           sequence_logps,
           shift_reference,
           token_logps,
)
from anatomist.shape.pairs import ShapedPair, plain
from anatomist.shape.recipe import Recipe, Shaped, Steering, apply
from anatomist.shape.shaping import Inoculation, TokenFilter, shape_pairs
from anatomist.shape.steer import Steer, add_to_residual, concept_direction

__all__ = ["DPOOutput", "Inoculation", "Recipe", "Shaped", "ShapedPair", "Steer", "Steering", "TokenFilter",
           "add_to_residual", "apply", "concept_direction", "concept_offset", "dpo_loss", "plain", "sequence_logps",
           "shape_pairs", "shift_reference", "token_logps"]
