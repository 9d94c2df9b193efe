"""The LLM labeller's wire: endpoint guard, one chat call, prompts, answer parsing.

Standard library only (urllib). Nothing here knows about contexts: snippets arrive as rendered
strings, so prompts and parsers are pure functions that tests check directly. The labeller class
that composes them lives in labels.py (`OpenAILabeller`).

Security contract: dataset text leaves the machine only when the user said so. `check_endpoint`
refuses any host that is not loopback (127.0.0.0/8, ::1, localhost) unless `allow_remote`, and is
called before any request is built; when allowed it warns, naming the host.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import logging
import re
import urllib.error
import urllib.request
from urllib.parse import urlsplit

from anatomist.errors import AnatomistError

log = logging.getLogger(__name__)

SYSTEM = ("You describe what an internal feature of a language model detects, from text where it "
          "fires. Be concise and literal.")


class LabelFailure(Exception):
    """A labeller could not make or score a label; the one-line message becomes the Label's status."""


def one_line(text: str | bytes, limit: int = 200) -> str:
    """Whitespace-collapsed, truncated text for statuses and log lines."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses only; other names count as remote even if they
    resolve locally (resolution can change between the check and the request)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_endpoint(base_url: str | None, allow_remote: bool) -> str:
    """Return the host of `base_url`; refuse a non-loopback host unless `allow_remote` (then warn)."""
    parts = urlsplit(base_url or "")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise AnatomistError(f"--base-url {base_url!r}: expected http(s)://host[:port][/path], "
                             "e.g. http://127.0.0.1:8000/v1")
    host = parts.hostname
    if not is_loopback(host):
        if not allow_remote:
            raise AnatomistError(f"refusing to send dataset text to {host}: pass --allow-remote to label "
                                 "with a non-local endpoint")
        log.warning("LLM labeller will send dataset text (response snippets) to %s%s", host,
                    "" if parts.scheme == "https" else " over plain http")
    return host


def chat(base_url: str, model: str, messages: list[dict], *, api_key: str | None = None,
         timeout: float = 60.0) -> str:
    """POST one chat completion (temperature 0) and return the assistant's text.

    Every network, HTTP or response-shape error becomes a `LabelFailure` with a one-line reason.
    Loopback endpoints bypass any configured proxy, so local text never transits one.
    """
    url = base_url.rstrip("/") + "/chat/completions"
    body = json.dumps({"model": model, "messages": messages, "temperature": 0}).encode("utf-8")
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    handlers = [urllib.request.ProxyHandler({})] if is_loopback(urlsplit(url).hostname or "") else []
    try:
        with urllib.request.build_opener(*handlers).open(request, timeout=timeout) as response:
            raw = response.read()
    except urllib.error.HTTPError as e:  # before URLError/OSError: it is a subclass of both
        raise LabelFailure(f"HTTP {e.code} from {url}: {one_line(e.read() or e.reason or '')}") from e
    except (OSError, http.client.HTTPException) as e:  # URLError, refused, reset, timeout
        raise LabelFailure(f"cannot reach {url}: {one_line(str(getattr(e, 'reason', e)))}") from e
    try:
        content = json.loads(raw)["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise LabelFailure(f"not an OpenAI chat response from {url}: {one_line(raw)!r}") from e
    if not isinstance(content, str):
        raise LabelFailure(f"not an OpenAI chat response from {url}: content is {type(content).__name__}")
    return content


def _numbered(snippets: list[str]) -> str:
    # Snippets keep their own newlines and quotes verbatim; a header line per snippet delimits them.
    return "\n\n".join(f"#{i}\n{s}" for i, s in enumerate(snippets, 1))


def label_messages(activating: list[str], non_activating: list[str]) -> list[dict]:
    """Prompt 1: marked top-activating snippets and some non-activating ones → a short label."""
    parts = ["Below are text snippets where one internal feature of a language model fires. "
             "The tokens where it fires most strongly are marked «like this».",
             "Snippets where the feature fires:\n\n" + _numbered(activating)]
    if non_activating:
        parts.append("Snippets where it does not fire:\n\n" + _numbered(non_activating))
    parts.append("What does the feature detect? Answer with a short label of at most 8 words and "
                 "nothing else.")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n\n".join(parts)}]


def detection_messages(label: str, snippets: list[str]) -> list[dict]:
    """Prompt 2: the label and a numbered mix → which numbers the label describes."""
    user = (f"A feature of a language model has the label: {json.dumps(label, ensure_ascii=False)}.\n"
            "Which of the numbered texts below contain what this label describes? Answer only with the "
            "matching numbers separated by commas, or with the word none.\n\n" + _numbered(snippets))
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


_THINK = re.compile(r"<think>.*?</think>", re.S | re.I)


def parse_label(answer: str, max_chars: int = 80) -> str:
    """The label in a free-text answer: first non-empty line, without 'Label:', bullets, quotes or a
    final period; truncated at `max_chars`. An empty answer is a `LabelFailure`."""
    lines = [ln.strip() for ln in _THINK.sub("", answer).splitlines() if ln.strip()]
    if not lines:
        raise LabelFailure(f"empty label in answer {one_line(answer)!r}")
    text = re.sub(r"^(?:[-*•#>\s]+|\d+[.)]\s+)", "", lines[0])
    text = re.sub(r"^label\s*\**\s*:\s*", "", text, flags=re.I)  # 'Label:', 'Label**:', after '**' went
    quotes = " \t*`\"'“”‘’"
    text = text.strip(quotes).rstrip(".").strip(quotes)
    if not text:
        raise LabelFailure(f"empty label in answer {one_line(answer)!r}")
    return one_line(text, max_chars)


def parse_numbers(answer: str, n: int) -> set[int]:
    """Snippet numbers (1..n) named in a detection answer: '2, 5 and 7', '#1-#3', 'none'.

    Numbers out of range are ignored; an answer with neither numbers nor 'none'/'no' is a
    `LabelFailure` (an unparseable answer must not score as 'picked nothing').
    """
    text = _THINK.sub("", answer)
    picked, found = set(), False
    for lo, hi, single in re.findall(r"#?(\d+)\s*[-–]\s*#?(\d+)|#?(\d+)", text):
        found = True
        lo, hi = (int(lo), int(hi)) if lo else (int(single), int(single))
        picked.update(range(max(lo, 1), min(hi, n) + 1))
    if not found and not re.search(r"\b(?:none|no)\b", text, re.I):
        raise LabelFailure(f"no numbers in detection answer {one_line(answer)!r}")
    return picked
