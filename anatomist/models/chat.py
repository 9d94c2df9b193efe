"""Chat templating and tokenization of (prompt, response) with a response-token mask.

Contract: `encode_response` returns ids = prompt tokens (chat template with the generation
prompt) followed by response tokens (the assistant text and the template's end-of-turn
tokens), and `response_mask[t]` is True exactly on the response tokens. The two parts are
tokenized separately, as they are at generation time, so a response's tokens do not depend on
the prompt's last characters.

Truncation rules (in this order):
1. the response keeps at most `max_response_tokens`, cut at the end;
2. the prompt is cut from the left (the most recent turns survive) to fit `max_length`;
3. if the response still would keep fewer than `min_response_tokens` tokens, this is an error,
   never a silently empty response.
"""

from __future__ import annotations

from dataclasses import dataclass

from anatomist.errors import AnatomistError


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    response_mask: list[bool]
    prompt_truncated: int = 0    # tokens cut from the prompt's left
    response_truncated: int = 0  # tokens cut from the response's end

    @property
    def n_response(self) -> int:
        return sum(self.response_mask)


def render_chat(tokenizer, messages, *, add_generation_prompt: bool) -> str:
    """The chat template as text (stable across transformers 4/5, whose tokenized return types differ)."""
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", type(tokenizer).__name__)
        raise AnatomistError(f"tokenizer {name!r} has no chat template; use an instruct model or set "
                             "tokenizer.chat_template")
    return tokenizer.apply_chat_template(list(messages), tokenize=False,
                                         add_generation_prompt=add_generation_prompt)


def apply_chat_template(tokenizer, messages, *, add_generation_prompt: bool = True) -> list[int]:
    """Token ids of `messages` under the tokenizer's chat template, as a plain list."""
    text = render_chat(tokenizer, messages, add_generation_prompt=add_generation_prompt)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def response_suffix(tokenizer, messages, response: str) -> str:
    """The text the template appends for an assistant turn `response` after the generation prompt."""
    prompt_text = render_chat(tokenizer, messages, add_generation_prompt=True)
    full = render_chat(tokenizer, [*messages, {"role": "assistant", "content": response}],
                       add_generation_prompt=False)
    if full.startswith(prompt_text):
        suffix = full[len(prompt_text):]
        # Drop what the template adds after the end-of-turn token (e.g. ChatML's "\n"): a model
        # stops generating at EOS, so those tokens are never part of a response.
        eos = tokenizer.eos_token
        if eos and eos in suffix:
            suffix = suffix[:suffix.rindex(eos) + len(eos)]
        return suffix
    # Templates that rewrite earlier turns (e.g. strip reasoning) break the prefix property;
    # fall back to the raw response closed by EOS.
    return response + (tokenizer.eos_token or "")


def encode_response(tokenizer, messages, response: str, *, max_length: int = 512,
                    max_response_tokens: int | None = None, min_response_tokens: int = 1) -> Encoded:
    """Tokenize chat `messages` + assistant `response` with a mask on the response tokens."""
    prompt_ids = apply_chat_template(tokenizer, messages, add_generation_prompt=True)
    response_ids = tokenizer(response_suffix(tokenizer, messages, response),
                             add_special_tokens=False)["input_ids"]
    cut_response = 0
    if max_response_tokens is not None and len(response_ids) > max_response_tokens:
        cut_response = len(response_ids) - max_response_tokens
        response_ids = response_ids[:max_response_tokens]
    overflow = len(prompt_ids) + len(response_ids) - max_length
    cut_prompt = max(0, min(overflow, len(prompt_ids) - 1))  # keep >= 1 prompt token as context
    prompt_ids = prompt_ids[cut_prompt:]
    overflow -= cut_prompt
    if overflow > 0:
        cut_response += overflow
        response_ids = response_ids[:len(response_ids) - overflow]
    if len(response_ids) < min_response_tokens:
        raise AnatomistError(f"response has {len(response_ids)} tokens left after truncation to "
                             f"max_length={max_length} (need >= {min_response_tokens})")
    return Encoded(prompt_ids + response_ids, [False] * len(prompt_ids) + [True] * len(response_ids),
                   cut_prompt, cut_response)
