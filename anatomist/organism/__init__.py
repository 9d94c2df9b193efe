"""The organism benchmark: a preference dataset with planted confounds and its ground truth.

    from anatomist.organism import build_organism, TRAITS, DEFAULT_CONFIG
    truth = build_organism("runs/organism")      # train.jsonl, heldout_prompts.jsonl, truth.json
"""

from anatomist.organism.build import build_organism
from anatomist.organism.plant import DEFAULT_CONFIG, PlantConfig, TraitPlan, assign, read_truth
from anatomist.organism.prompts import TOPIC_NAMES, Prompt, build_prompts
from anatomist.organism.traits import TRAITS, Trait, get_trait

__all__ = ["DEFAULT_CONFIG", "PlantConfig", "Prompt", "TOPIC_NAMES", "TRAITS", "Trait", "TraitPlan", "assign",
           "build_organism", "build_prompts", "get_trait", "read_truth"]
