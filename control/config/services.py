"""Sections of the config document for the services the appliance runs.

Forward proxy (squid), TLS termination (HAProxy with ACM certificates), the L4 load
balancer, GWLB integration, logging, metrics and the config API itself.  Their
renderers live with their issues; these models are the contract.
"""

from __future__ import annotations

import re
from ipaddress import IPv4Address, IPv4Network
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from control.config.issues import Issue, Issues, fail
from control.config.types import (
    Domain,
    IfName,
    Name,
    Port,
    PortProto,
    Seconds,
    Secret,
    StrictModel,
)

_ACM_ARN_RE = re.compile(r"^arn:aws[a-z-]*:acm:[a-z0-9-]+:\d{12}:certificate/[A-Za-z0-9-]{1,128}$")
_TOKEN_HASH_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


def _acm_arn(value: str) -> str:
    if not _ACM_ARN_RE.match(value):
        raise ValueError(
            "expected an ACM certificate ARN like "
            "arn:aws:acm:eu-west-1:123456789012:certificate/<id>"
        )
    return value


AcmArn = Annotated[str, AfterValidator(_acm_arn)]


def _unique_names(field: str, names: list[str]) -> None:
    seen: set[str] = set()
    issues = []
    for i, name in enumerate(names):
        if name in seen:
            issues.append(Issue((field, i, "name"), name, "duplicate name"))
        seen.add(name)
    if issues:
        raise Issues(issues)


class ProxyUser(StrictModel):
    """A forward-proxy user for basic authentication."""

    name: Name
    password: Secret


class ProxyAuth(StrictModel):
    """Proxy authentication: none, or basic with the listed users."""

    mode: Literal["none", "basic"] = "none"
    users: list[ProxyUser] = Field(default_factory=list, max_length=1024)

    @model_validator(mode="after")
    def _users(self) -> ProxyAuth:
        if self.mode == "basic" and not self.users:
            raise fail(("users",), [], 'expected at least one user when mode is "basic"')
        _unique_names("users", [u.name for u in self.users])
        return self


class ProxyCache(StrictModel):
    """Squid's object cache."""

    enabled: bool = False
    size_mb: int = Field(default=1024, ge=16, le=1_048_576)


class Proxy(StrictModel):
    """The squid forward proxy on the inside interface."""

    enabled: bool = False
    port: Port = 3128
    auth: ProxyAuth = ProxyAuth()
    allowed_domains: list[Domain] = Field(
        default_factory=list, max_length=4096, description="empty: every domain is allowed"
    )
    cache: ProxyCache = ProxyCache()
    bandwidth_kbps: int | None = Field(
        default=None, ge=8, le=100_000_000, description="None: unlimited"
    )


class Backend(StrictModel):
    """One backend server of a TLS or L4 listener."""

    address: IPv4Address
    port: Port
    weight: int = Field(default=1, ge=1, le=256)


class TlsListener(StrictModel):
    """HAProxy terminates TLS on ``port`` with an ACM certificate, then proxies."""

    name: Name
    port: Port = 443
    certificate_arn: AcmArn
    mode: Literal["http", "tcp"] = "http"
    backends: list[Backend] = Field(min_length=1, max_length=256)


class Tls(StrictModel):
    """TLS termination (HAProxy)."""

    enabled: bool = False
    listeners: list[TlsListener] = Field(default_factory=list, max_length=64)

    @model_validator(mode="after")
    def _names(self) -> Tls:
        _unique_names("listeners", [listener.name for listener in self.listeners])
        return self


class HealthCheck(StrictModel):
    """How a backend (or the appliance itself) is probed."""

    protocol: Literal["tcp", "http"] = "tcp"
    port: Port | None = Field(default=None, description="default: the traffic port")
    path: str = Field(default="/", pattern=r"^/[\x21-\x7e]*$", max_length=512)
    interval_seconds: int = Field(default=10, ge=1, le=300)


class LbListener(StrictModel):
    """An L4 listener spreading ``proto``/``port`` over its backends."""

    name: Name
    proto: PortProto = "tcp"
    port: Port
    algorithm: Literal["roundrobin", "leastconn", "source"] = "roundrobin"
    backends: list[Backend] = Field(min_length=1, max_length=256)
    health_check: HealthCheck = HealthCheck()


class LoadBalancer(StrictModel):
    """The L4 load balancer."""

    enabled: bool = False
    listeners: list[LbListener] = Field(default_factory=list, max_length=64)

    @model_validator(mode="after")
    def _names(self) -> LoadBalancer:
        _unique_names("listeners", [listener.name for listener in self.listeners])
        return self


class GwlbHealthCheck(StrictModel):
    """The port and protocol the GWLB target group probes."""

    protocol: Literal["tcp", "http"] = "tcp"
    port: Port = 80
    path: str = Field(default="/healthz", pattern=r"^/[\x21-\x7e]*$", max_length=512)


class Gwlb(StrictModel):
    """Gateway Load Balancer integration (GENEVE on UDP 6081).

    The agent attaches decap (XDP, or tc ingress: ``decap_hook``) and re-encap (tc
    egress) to ``interface`` (default: the inside interface), answers the health check
    on ``health_check.port``, takes GENEVE only from ``allowed_sources`` (when set),
    puts established two-arm flows on the XDP fast path (decap in XDP), and in one-arm
    mode routes what arrived on ``interface`` back out of it (via ``next_hop``; default
    the subnet's first address, the VPC router on AWS).
    """

    enabled: bool = False
    interface: IfName | None = Field(
        default=None, description="the GWLB-facing interface; default: interfaces.inside"
    )
    mode: Literal["one-arm", "two-arm"] = Field(
        default="one-arm",
        description="one-arm: replies re-encapsulated to the GWLB; two-arm: "
        "decapsulated traffic leaves by the outside interface (sNAT)",
    )
    decap_hook: Literal["auto", "xdp", "tc"] = Field(
        default="auto",
        description="auto: XDP where the driver and MTU allow it, else tc ingress; "
        "xdp: never tc; tc: always tc ingress",
    )
    next_hop: IPv4Address | None = Field(
        default=None,
        description="one-arm: where traffic goes back to the GWLB; default: the first "
        "address of the interface's subnet (the VPC router)",
    )
    health_check: GwlbHealthCheck = GwlbHealthCheck()
    flow_idle_timeout_seconds: Seconds = Field(
        default=350, description="GWLB's own idle timeout: 350"
    )
    allowed_sources: list[IPv4Network] = Field(
        default_factory=list,
        max_length=64,
        description="GWLB endpoint subnets GENEVE is accepted from (outer source, checked "
        "in the decap program); empty: any",
    )


class Logging(StrictModel):
    """Log level and format of every appliance process."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "text"] = "json"
    flow_logs: bool = False


class Metrics(StrictModel):
    """Prometheus metrics (served by the API at /metrics) and CloudWatch export."""

    enabled: bool = True
    cloudwatch: bool = False
    cloudwatch_namespace: str = Field(default="CloudSpectra", pattern=r"^[A-Za-z0-9./_#:-]{1,255}$")


class ApiToken(StrictModel):
    """A bearer token of the config API, stored only as its hash (``sha256:<hex>``)."""

    name: Name
    role: Literal["read", "admin"]
    hash: Secret

    @model_validator(mode="after")
    def _hash_format(self) -> ApiToken:
        if not _TOKEN_HASH_RE.match(self.hash.get_secret_value()):
            raise fail(("hash",), None, "expected sha256:<64 hex digits> (see `spectra token new`)")
        return self


class Api(StrictModel):
    """The config API (this document's own endpoint)."""

    host: IPv4Address = IPv4Address("0.0.0.0")
    port: Port = 8080
    max_body_bytes: int = Field(default=1_048_576, ge=1024, le=16_777_216)
    tokens: list[ApiToken] = Field(default_factory=list, max_length=256)

    @model_validator(mode="after")
    def _names(self) -> Api:
        _unique_names("tokens", [token.name for token in self.tokens])
        return self
