"""LLM providers, one module per upstream API behind one interface (:class:`Provider`).

``REGISTRY`` maps a provider kind (``ProviderConfig.kind``) to its implementation.
"""

from __future__ import annotations

from ai.providers.anthropic import AnthropicProvider
from ai.providers.base import (
    ChoiceDelta,
    Completion,
    Credentials,
    Provider,
    ProviderError,
    StreamItem,
    UpstreamCall,
)
from ai.providers.bedrock import BedrockProvider
from ai.providers.openai import OpenAIProvider
from ai.providers.vllm import VLLMProvider

REGISTRY: dict[str, Provider] = {
    "openai": OpenAIProvider(),
    "anthropic": AnthropicProvider(),
    "bedrock": BedrockProvider(),
    "vllm": VLLMProvider(),
}

__all__ = [
    "REGISTRY",
    "ChoiceDelta",
    "Completion",
    "Credentials",
    "Provider",
    "ProviderError",
    "StreamItem",
    "UpstreamCall",
]
