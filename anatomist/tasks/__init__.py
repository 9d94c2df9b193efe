"""Verifiable tasks with exact rewards, for GRPO and for draft-head training data.

A floor below `spec_decode/` and `train/`: both read the task's problems, neither owns them.
"""

from anatomist.tasks.arithmetic import INSTRUCTION, KINDS, Problem, extract_answer, make_problems, score

__all__ = ["KINDS", "Problem", "make_problems", "extract_answer", "score", "INSTRUCTION"]
