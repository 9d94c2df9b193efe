"""Verifiable tasks for GRPO: seeded arithmetic / unit-conversion word problems with exact answers.

A 135M instruct model gets single-step problems with small numbers right some of the time, so
the reward starts neither at 0 nor at 1 (there is something to learn and a signal to learn it
from). Difficulty knobs: `max_operand` (size of the numbers) and `kinds` (which templates).

Rewards (each in [0, 1]):
* correctness — the extracted answer equals the exact answer. Extraction prefers an explicit
  "Answer: N" and falls back to the last number in the text, so an unformatted right answer
  still counts as right;
* format — the reply states its answer as "Answer: N" (what the prompt asks for).
The total is `correct + format_weight · format`.

    problems = make_problems(16, seed=0)
    score(problems[0], "7 + 5 = 12. Answer: 12")  # {'reward': 1.5, 'correct': 1.0, 'format': 1.0}
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from fractions import Fraction

from anatomist.errors import AnatomistError

__all__ = ["KINDS", "Problem", "make_problems", "extract_answer", "score", "INSTRUCTION"]

INSTRUCTION = "Solve the problem. End your reply with a line of the form 'Answer: <number>'."

# (name, plural, how many of `small` in one `big`)
_UNITS = [("meters", "centimeters", 100), ("hours", "minutes", 60), ("kilograms", "grams", 1000),
          ("minutes", "seconds", 60), ("days", "hours", 24), ("dollars", "cents", 100),
          ("weeks", "days", 7), ("feet", "inches", 12)]
_NAMES = ["Tom", "Anna", "Ravi", "Mei", "Lucas", "Sara", "Omar", "Lena"]
_ITEMS = ["apples", "books", "pencils", "stickers", "marbles", "cookies", "stamps", "shells"]


@dataclass(frozen=True)
class Problem:
    kind: str
    question: str  # the user message (instruction included)
    answer: int


def _add(rng: random.Random, m: int) -> tuple[str, int]:
    a, b = rng.randint(1, m), rng.randint(1, m)
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    return f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have now?", a + b


def _sub(rng: random.Random, m: int) -> tuple[str, int]:
    a, b = sorted((rng.randint(1, m), rng.randint(1, m)), reverse=True)  # non-negative result
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    return f"{name} has {a} {item} and gives away {b}. How many {item} are left?", a - b


def _mul(rng: random.Random, m: int) -> tuple[str, int]:
    a, b = rng.randint(2, max(2, min(m, 12))), rng.randint(2, max(2, min(m, 12)))
    item = rng.choice(_ITEMS)
    return f"There are {a} boxes with {b} {item} in each box. How many {item} are there in total?", a * b


def _plain(rng: random.Random, m: int) -> tuple[str, int]:
    a, b = rng.randint(1, m), rng.randint(1, m)
    return f"What is {a} + {b}?", a + b


def _convert(rng: random.Random, m: int) -> tuple[str, int]:
    big, small, k = rng.choice(_UNITS)
    n = rng.randint(1, max(1, min(m, 10)))
    return f"How many {small} are there in {n} {big}?", n * k


KINDS = {"plain": _plain, "add": _add, "sub": _sub, "mul": _mul, "convert": _convert}


def make_problems(n: int, *, seed: int = 0, kinds: tuple[str, ...] = ("plain", "add", "sub", "convert"),
                  max_operand: int = 20) -> list[Problem]:
    """n problems, a pure function of (seed, kinds, max_operand); kinds cycle so each appears."""
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise AnatomistError(f"unknown problem kinds {bad or kinds}; choose from {', '.join(KINDS)}")
    if max_operand < 2:
        raise AnatomistError(f"max_operand must be >= 2, got {max_operand}")
    rng = random.Random(seed)
    out = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        q, a = KINDS[kind](rng, max_operand)
        out.append(Problem(kind=kind, question=f"{q}\n{INSTRUCTION}", answer=a))
    return out


_NUM = r"-?\d[\d,]*(?:\.\d+)?"
_FORMAT_RE = re.compile(rf"\banswer\**\s*:\s*\**\s*\$?\s*({_NUM})", re.IGNORECASE)  # "Answer: N", "**Answer:** N"
_LOOSE_RE = re.compile(rf"\banswer\s+is\s*:?\s*\**\s*\$?\s*({_NUM})", re.IGNORECASE)  # "the answer is N"
_ANY_NUM_RE = re.compile(_NUM)


def _to_number(s: str) -> Fraction | None:
    s = s.replace(",", "").rstrip(".")
    try:
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


def extract_answer(text: str) -> tuple[Fraction | None, bool]:
    """(the stated answer, whether it was stated in the "Answer: N" format).

    Prefers the last "Answer: N"; then the last "answer is N"; then the last number in the text.
    """
    formatted = _FORMAT_RE.findall(text)
    if formatted:
        return _to_number(formatted[-1]), True
    explicit = _LOOSE_RE.findall(text)
    if explicit:
        return _to_number(explicit[-1]), False
    nums = _ANY_NUM_RE.findall(text)
    return (_to_number(nums[-1]) if nums else None), False


def score(problem: Problem, text: str, format_weight: float = 0.5) -> dict[str, float]:
    """Reward components of one reply: correct ∈ {0, 1}, format ∈ {0, 1}, reward = correct + w·format."""
    value, formatted = extract_answer(text)
    correct = float(value is not None and value == problem.answer)
    fmt = float(formatted)
    return {"reward": correct + format_weight * fmt, "correct": correct, "format": fmt}
