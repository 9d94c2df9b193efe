"""Prompts for self-generated draft-head training data and for the speed / entropy benchmarks.

Two prompt sets (`PROMPT_SETS`, keyed by name):
* "chat": real user prompts from `../shared/data` (LLaMA-Factory DPO demo, first human turn;
  XSTest safe prompts), chat-templated. A fixed hash split keeps benchmark prompts out of
  training data.
* "grpo": the GRPO task's own problems (`anatomist.tasks.arithmetic`), drawn from a seed stream the
  RL steps never use. A draft head is only as good as its match to the text it drafts; a head for
  RL rollouts is trained before RL on the policy's answers to the RL prompt distribution.
"""

from __future__ import annotations

import csv
import hashlib
import json

from anatomist.data.shared import shared_data_dir
from anatomist.errors import AnatomistError
from anatomist.models.chat import apply_chat_template
from anatomist.tasks.arithmetic import make_problems

__all__ = ["user_prompts", "chat_prompts", "task_prompts", "PROMPT_SETS"]

# GRPO step s draws its problems with seed `seed·1_000_003 + s`; head data comes from far outside.
TASK_SEED = 987_654_321


def user_prompts(split: str = "train", max_chars: int = 400) -> list[str]:
    """User prompts; split 'train' (~80%) or 'eval' by a stable hash of the text."""
    if split not in ("train", "eval", "all"):
        raise AnatomistError(f"split must be train, eval or all, got {split!r}")
    root = shared_data_dir()
    texts: list[str] = []
    lf = root / "llamafactory-dpo-en-demo.json"
    for row in json.loads(lf.read_text()):
        first = next((m["value"] for m in row["conversations"] if m.get("from") == "human"), None)
        if first and len(first) <= max_chars:
            texts.append(first.strip())
    with open(root / "xstest_prompts.csv", newline="") as f:
        texts += [r["prompt"].strip() for r in csv.DictReader(f) if r.get("label") == "safe"]
    texts = list(dict.fromkeys(texts))  # dedupe, keep order
    if split == "all":
        return texts
    is_eval = [int(hashlib.sha256(t.encode()).hexdigest(), 16) % 5 == 0 for t in texts]
    return [t for t, e in zip(texts, is_eval) if e == (split == "eval")]


def chat_prompts(tokenizer, split: str = "train", n: int | None = None) -> list[list[int]]:
    """Chat-templated token ids of the first n user prompts of a split."""
    texts = user_prompts(split)[:n]
    return [apply_chat_template(tokenizer, [{"role": "user", "content": t}]) for t in texts]


def task_prompts(tokenizer, n: int, seed: int = TASK_SEED) -> list[list[int]]:
    """Chat-templated GRPO problems (default kinds and difficulty), exactly as `train_grpo` asks them."""
    return [apply_chat_template(tokenizer, [{"role": "user", "content": p.question}])
            for p in make_problems(n, seed=seed)]


PROMPT_SETS = {
    "chat": lambda tokenizer, n: chat_prompts(tokenizer, "train", n),
    "grpo": task_prompts,
}
