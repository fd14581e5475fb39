"""vLLM's OpenAI-compatible server, the local models addressed as ``local/<model>``.

Reference: https://docs.vllm.ai/en/latest/serving/openai_compatible_server.html. The
wire format is OpenAI's (its one extension the gateway reads, a choice's ``stop_reason``,
the matched stop string, is mapped in ``ai.providers.openai``); the module exists so
routes, overflow policy and metering can tell the local engine apart, and to hold
vLLM-specific mapping if it ever diverges.
"""

from __future__ import annotations

from ai.providers.openai import OpenAIProvider


class VLLMProvider(OpenAIProvider):
    """A local vLLM engine (OpenAI wire format)."""
