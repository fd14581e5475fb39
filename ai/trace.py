"""The per-request trace that becomes one audit record."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from ai.errors import GatewayError
from ai.usage import Usage


@dataclass(slots=True)
class Trace:
    """Everything the audit log records about one pipeline run."""

    endpoint: str
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    started: float = field(default_factory=time.monotonic)
    key_id: str | None = None
    key_hash: str | None = None
    tenant: str | None = None
    model_requested: str | None = None
    model_routed: str | None = None
    provider: str | None = None
    region: str | None = None
    stream: bool = False
    cache: str = "skip"
    similarity: float | None = None
    overflow: dict[str, Any] | None = None
    commit: str = "none"
    usage: Usage | None = None
    cost_usd: float = 0.0
    completion_cap: dict[str, int | None] | None = None  # {"asked", "sent"} per choice
    status: int = 200
    error: dict[str, Any] | None = None
    latency_ms: dict[str, float] = field(default_factory=dict)
    parent: str | None = None
    content: dict[str, Any] | None = None
    client_request_id: str | None = None  # the client's own x-client-request-id

    def mark(self, name: str) -> None:
        self.latency_ms[name] = round((time.monotonic() - self.started) * 1000, 3)

    def fail(self, exc: GatewayError) -> None:
        self.status = exc.status
        self.error = {
            **(self.error or {}),
            "type": exc.type,
            "code": exc.code,
            "message": exc.message,
        }

    def child(self) -> Trace:
        return Trace(
            self.endpoint,
            parent=self.request_id,
            key_id=self.key_id,
            key_hash=self.key_hash,
            tenant=self.tenant,
            stream=self.stream,
        )

    def record(self) -> dict[str, Any]:
        self.mark("total")
        record: dict[str, Any] = {
            "ts": time.time(),
            "request_id": self.request_id,
            "client_request_id": self.client_request_id,
            "parent": self.parent,
            "endpoint": self.endpoint,
            "key_id": self.key_id,
            "key_hash": self.key_hash,
            "tenant": self.tenant,
            "model_requested": self.model_requested,
            "model_routed": self.model_routed,
            "provider": self.provider,
            "region": self.region,
            "stream": self.stream,
            "cache": {"outcome": self.cache, "similarity": self.similarity},
            "overflow": self.overflow,
            "commit": self.commit,
            "usage": None if self.usage is None else self.usage.to_record(),
            "cost_usd": self.cost_usd,
            "completion_cap": self.completion_cap,
            "status": self.status,
            "error": self.error,
            "latency_ms": self.latency_ms,
        }
        if self.content is not None:
            record["content"] = self.content
        return record
