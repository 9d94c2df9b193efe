"""Summary statistics of a PairSet: what `anatomist data inspect` shows, as a plain dict.

    stats = inspect_pairs(load_pairs("hh.jsonl.gz", on_bad_row="skip"))
    stats["chosen_longer"]          # fraction of pairs whose chosen response has more characters

Keys: source, format; counts {rows, valid, skipped}; skipped_by_reason {"<category> (<column>)":
n}; prompt_turns {messages in the prompt: pairs}; chars {prompt|chosen|rejected: summary};
chosen_longer, same_length (fractions of pairs); example_ids; validation (one line per
skipped row); and, when a tokenizer is given, tokens {prompt|chosen|rejected: summary,
prompt_template: "chat" | "plain"}. A summary is {min, median, mean, p90, max, histogram:
{edges, counts}}.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from anatomist.data.io import PairSet, reason_category

SIDES = ("prompt", "chosen", "rejected")


def inspect_pairs(pairset: PairSet, *, tokenizer=None, bins: int = 10, n_examples: int = 3) -> dict:
    """Statistics of `pairset`; `tokenizer` (a name/path for `load_tokenizer`, or a loaded
    tokenizer) adds token lengths."""
    pairs = pairset.pairs
    chars = {
        "prompt": [sum(len(m["content"]) for m in p.prompt) for p in pairs],
        "chosen": [len(p.chosen) for p in pairs],
        "rejected": [len(p.rejected) for p in pairs],
    }
    stats = {
        "source": pairset.source,
        "format": pairset.format,
        "counts": {"rows": len(pairs) + len(pairset.skipped), "valid": len(pairs),
                   "skipped": len(pairset.skipped)},
        "skipped_by_reason": dict(Counter(map(reason_category, pairset.skipped)).most_common()),
        "prompt_turns": dict(sorted(Counter(len(p.prompt) for p in pairs).items())),
        "chars": {side: summarize(chars[side], bins) for side in SIDES},
        "chosen_longer": _fraction(c > r for c, r in zip(chars["chosen"], chars["rejected"])),
        "same_length": _fraction(c == r for c, r in zip(chars["chosen"], chars["rejected"])),
        "example_ids": [p.id for p in pairs[:n_examples]],
        "validation": [str(e) for e in pairset.skipped],
    }
    if tokenizer is not None:
        stats["tokens"] = token_stats(pairset, tokenizer, bins)
    return stats


def summarize(values: list[int], bins: int = 10) -> dict:
    """Order statistics and a histogram of positive lengths.

    Bins are log-spaced: text lengths span orders of magnitude (a 20-character reply next to a
    5,000-character essay), and linear bins would put almost everything in the first one."""
    v = np.asarray(values, dtype=np.int64)
    assert v.size and v.min() >= 0, "lengths of a non-empty, validated PairSet"
    edges = np.round(np.geomspace(max(1, v.min()), v.max() + 1, bins + 1)).astype(np.int64)
    edges[0] = v.min()
    edges = np.unique(edges)
    counts, _ = np.histogram(v, bins=edges)
    return {"min": int(v.min()), "median": float(np.median(v)), "mean": float(v.mean()),
            "p90": float(np.percentile(v, 90)), "max": int(v.max()),
            "histogram": {"edges": edges.tolist(), "counts": counts.tolist()}}


def token_stats(pairset: PairSet, tokenizer, bins: int = 10) -> dict:
    """Token-length summaries. The prompt is measured as the model sees it: rendered with the
    chat template and the generation prompt when the tokenizer has one, else its message texts
    joined by blank lines. Responses are their bare text, without special tokens."""
    from anatomist.models import apply_chat_template, load_tokenizer

    if isinstance(tokenizer, str):
        tokenizer = load_tokenizer(tokenizer)
    pairs = pairset.pairs
    templated = bool(getattr(tokenizer, "chat_template", None))
    if templated:
        prompt = [len(apply_chat_template(tokenizer, p.prompt)) for p in pairs]
    else:
        prompt = _n_tokens(tokenizer, ["\n\n".join(m["content"] for m in p.prompt) for p in pairs])
    return {"prompt": summarize(prompt, bins),
            "chosen": summarize(_n_tokens(tokenizer, [p.chosen for p in pairs]), bins),
            "rejected": summarize(_n_tokens(tokenizer, [p.rejected for p in pairs]), bins),
            "prompt_template": "chat" if templated else "plain"}


def _n_tokens(tokenizer, texts: list[str]) -> list[int]:
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def _fraction(flags) -> float:
    flags = list(flags)
    return sum(flags) / len(flags)
