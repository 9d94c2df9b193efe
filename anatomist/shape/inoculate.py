"""Inoculation prompting (DESIGN.md): for pairs whose Δc favours an unwanted concept, the training
prompt asks for that concept, so the preference for it is explained by the instruction and not
absorbed into the model's default behaviour. Both policy and reference see the same prompt (the
DPO loop reads `ShapedPair.prompt`); evaluation prompts are left without it.

Placement: a system message first. If the prompt already starts with one, the instruction is
put in front of its text (one system message: many chat templates accept only one, first).
"""

from __future__ import annotations

DEFAULT_TEMPLATE = "In your reply, lean into this: {label}."


def inoculation_text(label: str, template: str = DEFAULT_TEMPLATE) -> str:
    """The instruction for a concept from its cluster label (offline labels are short n-grams)."""
    return template.format(label=label.strip())


def inoculate_prompt(prompt, text: str) -> tuple[dict, ...]:
    """`prompt` (chat messages) with `text` as the opening system instruction."""
    messages = [dict(m) for m in prompt]
    if messages and messages[0].get("role") == "system":
        messages[0]["content"] = f"{text}\n\n{messages[0]['content']}"
    else:
        messages.insert(0, {"role": "system", "content": text})
    return tuple(messages)
