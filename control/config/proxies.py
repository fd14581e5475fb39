"""Sections of the config document for the appliance's proxies.

``proxy`` (the squid forward proxy), ``tls`` (TLS termination by HAProxy with ACM
certificates) and ``load_balancer`` (the L4 load balancer). No converge step renders
them: the document validates them, and an instance reports an enabled one in its
status (``not_yet_rendered``).
"""

from __future__ import annotations

import re
from ipaddress import IPv4Address
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from control.config.issues import fail, unique_names
from control.config.types import Domain, Name, Port, PortProto, Secret, StrictModel

_ACM_ARN_RE = re.compile(r"^arn:aws[a-z-]*:acm:[a-z0-9-]+:\d{12}:certificate/[A-Za-z0-9-]{1,128}$")


def _acm_arn(value: str) -> str:
    if not _ACM_ARN_RE.match(value):
        raise ValueError(
            "expected an ACM certificate ARN like "
            "arn:aws:acm:eu-west-1:123456789012:certificate/<id>"
        )
    return value


AcmArn = Annotated[str, AfterValidator(_acm_arn)]


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
        unique_names("users", [u.name for u in self.users])
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
        unique_names("listeners", [listener.name for listener in self.listeners])
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
        unique_names("listeners", [listener.name for listener in self.listeners])
        return self
