"""OpenAI-compatible AI gateway on :8090.

Public surface: :func:`create_app` (aiohttp app factory), :class:`AIConfig` (the
config section), :func:`verify` (audit-chain check) and the ``ai`` click group
(:data:`ai.cli.ai_group`). Imports here are lazy so ``import ai`` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ai.audit import verify
    from ai.config import AIConfig
    from ai.server import create_app

__all__ = ["AIConfig", "create_app", "verify"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from ai.server import create_app

        return create_app
    if name == "AIConfig":
        from ai.config import AIConfig

        return AIConfig
    if name == "verify":
        from ai.audit import verify

        return verify
    raise AttributeError(name)
