"""Configuration model of the AI gateway (the appliance document's ``ai`` section).

Self-contained pydantic v2 models, frozen and ``extra="forbid"``, so the control plane
can embed :class:`AIConfig` as-is and reject typos at the config API. Secrets never
appear here: providers and the key-hashing secret name an environment variable (or a
file) that holds them; API keys appear only as their HMAC-SHA256 hashes (see
:mod:`ai.keys`).
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ai.semcache.config import SemCacheConfig

ProviderKind = Literal["openai", "anthropic", "bedrock", "vllm"]
OverflowPolicy = Literal["queue", "spill", "reject"]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SecretRef(_Model):
    """Where a secret lives: an environment variable or a file (first line)."""

    env: str | None = None
    file: Path | None = None

    @model_validator(mode="after")
    def _one_source(self) -> SecretRef:
        if (self.env is None) == (self.file is None):
            raise ValueError("a secret reference names exactly one of `env` or `file`")
        return self


# Claude's tokenizers count up to about a third more tokens than cl100k for the same text
# (Anthropic documents 1.0-1.35x for its newest); OpenAI's o200k counts fewer.
PROMPT_RESERVE_FACTORS = {"anthropic": 1.35, "bedrock": 1.35}


class ProviderConfig(_Model):
    """One upstream: its wire protocol, base URL and credential references."""

    kind: ProviderKind
    base_url: str = Field(description="e.g. https://api.openai.com/v1, http://127.0.0.1:8000/v1")
    api_key: SecretRef | None = None
    region: str | None = Field(default=None, description="AWS region (bedrock) or a label")
    aws_access_key_id: SecretRef | None = None
    aws_secret_access_key: SecretRef | None = None
    aws_session_token: SecretRef | None = None
    anthropic_version: str = "2023-06-01"
    default_max_tokens: int = Field(
        default=4096,
        ge=1,
        description="completion cap of a request that names none, if below "
        "completion_reserve_tokens",
    )
    connect_timeout_s: float = Field(default=5.0, gt=0)
    request_timeout_s: float = Field(default=300.0, gt=0)
    prompt_reserve_factor: float | None = Field(
        default=None,
        ge=1.0,
        le=4.0,
        description="the gateway's prompt-token estimate (cl100k) times this is what a "
        "request reserves for its prompt, so a provider whose tokenizer counts more "
        "cannot overshoot a budget; default 1.35 for anthropic and bedrock, 1.0 else",
    )
    image_reserve_tokens: int = Field(
        default=1600,
        ge=0,
        description="prompt tokens reserved per image part (the estimate cannot count them)",
    )

    @property
    def reserve_factor(self) -> float:
        """``prompt_reserve_factor``, or the provider kind's default."""
        if self.prompt_reserve_factor is not None:
            return self.prompt_reserve_factor
        return PROMPT_RESERVE_FACTORS.get(self.kind, 1.0)


class OverflowConfig(_Model):
    """What a route (a local model's, ``local/*``) does on a failure before the first
    token, and its admission limit; a route without one answers such failures 502/429."""

    policy: OverflowPolicy = "reject"
    spill_model: str | None = Field(default=None, description="remote model for `spill`")
    max_concurrency: int = Field(default=8, ge=1, description="admission limit upstream")
    max_queue: int = Field(default=32, ge=0, description="requests waiting for admission")
    queue_timeout_s: float = Field(default=10.0, gt=0, description="bounded wait of `queue`")
    ttft_timeout_s: float = Field(default=30.0, gt=0, description="time-to-first-token deadline")
    retry_after_s: int = Field(default=5, ge=1)

    @model_validator(mode="after")
    def _spill_needs_model(self) -> OverflowConfig:
        if self.policy == "spill" and not self.spill_model:
            raise ValueError("overflow policy `spill` needs `spill_model`")
        return self


class RouteConfig(_Model):
    """Model-name pattern (fnmatch) -> provider; the first matching route wins."""

    pattern: str
    provider: str = Field(description="a name under `providers`")
    strip_prefix: str = Field(default="", description="removed from the model name upstream")
    models: tuple[str, ...] = Field(default=(), description="names listed by GET /v1/models")
    overflow: OverflowConfig | None = None
    ttft_timeout_s: float | None = Field(default=None, gt=0)
    max_output_tokens: int | None = Field(
        default=None,
        ge=1,
        description="the model's completion-token limit: reserved (and sent upstream) for "
        "a request that names no max_tokens; a larger max_tokens is clamped to it",
    )

    def matches(self, model: str) -> bool:
        return fnmatch.fnmatchcase(model, self.pattern)


class BudgetConfig(_Model):
    """Per-key limits; ``None`` means unlimited."""

    max_tokens: int | None = Field(default=None, ge=0, description="lifetime token budget")
    max_cost_usd: float | None = Field(default=None, ge=0)
    requests_per_minute: int | None = Field(default=None, ge=1)
    tokens_per_minute: int | None = Field(default=None, ge=1)


class KeyConfig(_Model):
    """An API key, stored only as ``hmac_sha256(secret, key)`` in hex."""

    id: str
    hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    tenant: str
    revoked: bool = False
    budget: BudgetConfig = BudgetConfig()


class PriceConfig(_Model):
    """USD per million tokens for models matching ``pattern``."""

    pattern: str
    input_per_mtok: float = Field(ge=0)
    output_per_mtok: float = Field(ge=0)
    cached_input_per_mtok: float | None = Field(default=None, ge=0)


class ExactCacheConfig(_Model):
    enabled: bool = True
    path: Path | None = Field(default=None, description="SQLite file; None = in-memory")
    ttl_s: float = Field(default=3600.0, gt=0)
    max_entries: int = Field(default=100_000, ge=1)
    write_window_s: float = Field(
        default=0.02,
        ge=0,
        le=1,
        description="entries queued within this window are committed together "
        "(readable from the queue meanwhile)",
    )


class SemanticRoutingConfig(_Model):
    """When the pipeline consults the semantic cache (its own settings: ``settings``)."""

    max_messages: int = Field(default=8, ge=1, description="longer conversations skip it")
    settings: SemCacheConfig | None = Field(default=None, description="None = disabled")

    def resolved_settings(self, exact: ExactCacheConfig) -> SemCacheConfig | None:
        """``settings`` with ``path`` defaulted to ``<exact cache stem>-semantic.sqlite3``
        next to a persistent exact cache (the entries point at its keys)."""
        if self.settings is None or self.settings.path is not None or exact.path is None:
            return self.settings
        path = exact.path.with_name(f"{exact.path.stem}-semantic.sqlite3")
        return self.settings.model_copy(update={"path": path})


class S3AnchorConfig(_Model):
    """Audit anchors as S3 objects under Object Lock in compliance mode (``ai.anchors``):
    nobody, the root user included, can delete or overwrite one before its retention
    ends. The bucket must have Object Lock enabled (it is set at creation)."""

    bucket: str = Field(min_length=3, max_length=63, pattern=r"^[a-z0-9][a-z0-9.-]+[a-z0-9]$")
    prefix: str = Field(
        default="spectra/audit/", description="key prefix; `<prefix><chain>/<seq>.json`"
    )
    chain: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9._/-]+$",
        description="names this log's chain under the prefix; default <host name>/<audit "
        "file stem> (per worker: the stem carries -w<I>)",
    )
    retention_days: int = Field(default=400, ge=1, le=36_500)
    region: str | None = Field(default=None, description="None: the gateway's AWS region")
    endpoint_url: str | None = Field(
        default=None, description="another S3 endpoint (a VPC endpoint; tests)"
    )


class AuditConfig(_Model):
    path: Path | None = Field(default=None, description="JSON-lines file; None = disabled")
    key: SecretRef | None = Field(
        default=None, description="HMAC key of the chain (ai.audit); None = SHA-256 only"
    )
    anchor_path: Path | None = Field(
        default=None,
        description="signed chain heads, on storage the log directory does not share "
        "(needs `key`); detects a truncated log",
    )
    anchor_s3: S3AnchorConfig | None = Field(
        default=None,
        description="also write each anchor to S3 with Object Lock (compliance mode); needs `key`",
    )
    anchor_every: int = Field(default=100, ge=1, description="records between anchors")
    anchor_interval_s: float = Field(default=60.0, gt=0, description="... or seconds")
    include_content: bool = False
    rotate_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    queue_size: int = Field(default=1024, ge=1, description="bounded; full -> backpressure")
    fsync: bool = False
    batch_window_s: float = Field(
        default=0.02,
        ge=0,
        le=1,
        description="the writer waits this long after a record for more to batch with it "
        "(one thread hop per batch, not per request)",
    )

    @model_validator(mode="after")
    def _anchors_need_key(self) -> AuditConfig:
        if self.anchor_path is not None and self.key is None:
            raise ValueError("audit.anchor_path needs audit.key (anchors are signed with it)")
        if self.anchor_s3 is not None and self.key is None:
            raise ValueError("audit.anchor_s3 needs audit.key (anchors are signed with it)")
        return self


class RedisStanceConfig(_Model):
    """What each feature does while Redis is unreachable (``ai.redis_link``)."""

    budgets: Literal["reject", "local"] = Field(
        default="reject",
        description="budgets and rate limits: `reject` answers 503 (fail closed); "
        "`local` enforces them per process until Redis returns",
    )
    cache: Literal["bypass", "reject"] = Field(
        default="bypass",
        description="exact cache: `bypass` treats it as a miss and calls upstream; "
        "`reject` answers 503",
    )


class RedisConfig(_Model):
    """A Redis 7 / Valkey endpoint (ElastiCache: the primary or configuration endpoint,
    in-transit encryption = ``tls``, AUTH token or RBAC user = ``username``/``password``)."""

    host: str
    port: int = Field(default=6379, ge=1, le=65535)
    db: int = Field(default=0, ge=0, description="0 on a cluster-mode endpoint")
    tls: bool = False
    tls_ca_file: Path | None = Field(default=None, description="CA bundle; None = system")
    username: str | None = Field(default=None, description="RBAC user; None = `default`")
    password: SecretRef | None = Field(default=None, description="AUTH token or password")
    cluster: bool = Field(default=False, description="cluster mode enabled (RedisCluster)")
    key_prefix: str = Field(default="spectra:ai", pattern=r"^[A-Za-z0-9:._-]+$")
    max_connections: int = Field(
        default=64, ge=1, le=10_000, description="pooled connections per process"
    )
    connect_timeout_s: float = Field(default=0.5, gt=0, le=10)
    op_timeout_s: float = Field(
        default=0.25, gt=0, le=10, description="every Redis call gives up after this"
    )
    backoff_max_s: float = Field(default=5.0, gt=0, description="reconnect backoff ceiling")
    flight_wait_s: float = Field(
        default=30.0,
        gt=0,
        description="how long an identical request waits for another instance's upstream "
        "call (the lock's lifetime)",
    )
    on_unavailable: RedisStanceConfig = RedisStanceConfig()


class StateConfig(_Model):
    """Where budgets and meters are kept across restarts (``ai.state``), and where
    budgets, rate windows and the exact cache are shared (``backend``)."""

    backend: Literal["local", "redis"] = Field(
        default="local",
        description="`local`: SQLite + memory, one process; `redis`: budgets, rate "
        "windows and the exact cache shared through `redis` by every instance",
    )
    redis: RedisConfig | None = None

    path: Path | None = Field(
        default=None,
        description="SQLite file; default <audit file stem>-state.sqlite3 next to the "
        "audit log, in memory when neither is set",
    )
    write_window_s: float = Field(
        default=0.02,
        ge=0,
        le=1,
        description="changes within this window are committed together (the most a hard "
        "kill can lose)",
    )

    @model_validator(mode="after")
    def _redis_named(self) -> StateConfig:
        if self.backend == "redis" and self.redis is None:
            raise ValueError("state.backend `redis` needs `state.redis` (host, port, ...)")
        return self

    def resolved_path(self, audit: AuditConfig) -> Path | None:
        if self.path is not None or audit.path is None:
            return self.path
        return audit.path.with_name(f"{audit.path.stem}-state.sqlite3")


class AIConfig(_Model):
    """The AI gateway: listener, upstreams, routes, keys, budgets, caches, audit."""

    listen_host: str = "0.0.0.0"
    listen_port: int = Field(default=8090, ge=0, le=65535)
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    key_secret: SecretRef = SecretRef(env="SPECTRA_AI_KEY_SECRET")
    providers: dict[str, ProviderConfig] = {}
    routes: tuple[RouteConfig, ...] = ()
    keys: tuple[KeyConfig, ...] = ()
    prices: tuple[PriceConfig, ...] = ()
    completion_reserve_tokens: int = Field(
        default=1024, ge=1, description="budget reserved when a request names no max_tokens"
    )
    exact_cache: ExactCacheConfig = ExactCacheConfig()
    semantic_cache: SemanticRoutingConfig = SemanticRoutingConfig()
    audit: AuditConfig = AuditConfig()
    state: StateConfig = StateConfig()

    @model_validator(mode="after")
    def _routes_name_providers(self) -> AIConfig:
        for route in self.routes:
            if route.provider not in self.providers:
                known = ", ".join(sorted(self.providers)) or "none"
                raise ValueError(
                    f"route {route.pattern!r} names provider {route.provider!r}; known: {known}"
                )
        return self
