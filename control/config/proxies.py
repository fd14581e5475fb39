"""Sections of the config document for the appliance's proxies.

``proxy`` (the Squid forward proxy, rendered by :mod:`control.steps.squid`), ``tls``
(TLS termination by HAProxy, :mod:`control.steps.haproxy`) and ``load_balancer`` (the L4
load balancer, :mod:`control.steps.lb`: nftables DNAT maps over the backends the agent
finds healthy).

Domain lists use the one domain pattern of the document (:mod:`nfq.domain_pattern`, also
the inspection policy's ``domain_lists`` targets; the form of AWS Network Firewall's
domain lists): ``example.com`` is that name only,
``.example.com`` the domain and every subdomain, ``*.example.com`` subdomains only.
"""

from __future__ import annotations

import re
from ipaddress import IPv4Address, IPv4Network
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, model_validator

from control.config.flowlogs import Shipping
from control.config.issues import fail, unique_names
from control.config.types import Domain, Name, Port, PortProto, Secret, StrictModel

# crypt(3) SHA-256 / SHA-512, what basic_ncsa_auth checks through crypt(3)
CRYPT_HASH_RE = re.compile(
    r"^\$[56]\$(rounds=\d{4,9}\$)?[./0-9A-Za-z]{1,16}\$[./0-9A-Za-z]{43,86}$"
)
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
    """A forward-proxy user for basic authentication. ``password`` is a SHA-512 or
    SHA-256 crypt(3) hash (``$6$<salt>$<hash>``, as ``openssl passwd -6`` prints), used
    as it is, or a password, which the proxy step hashes the same way: Squid's password
    file never holds a plain password."""

    name: Name
    password: Secret

    @property
    def is_hashed(self) -> bool:
        return bool(CRYPT_HASH_RE.match(self.password.get_secret_value()))


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


class BandwidthLimit(StrictModel):
    """A delay pool: the traffic the proxy sends to the listed users and networks
    shares ``kbps`` (one pool per limit; a request takes the first limit it matches)."""

    name: Name
    kbps: int = Field(ge=8, le=100_000_000, description="kilobits per second, 8..100000000")
    users: list[Name] = Field(default_factory=list, max_length=1024)
    networks: list[IPv4Network] = Field(default_factory=list, max_length=1024)

    @model_validator(mode="after")
    def _who(self) -> BandwidthLimit:
        if not self.users and not self.networks:
            raise fail(("users",), [], "expected at least one user or network")
        return self


class ProxyAccessLog(Shipping):
    """Squid's access log: one JSON object per request in the instance's log directory
    (``proxy-access.json``), rotated at ``max_bytes`` keeping ``keep`` files, and
    shipped to CloudWatch Logs (stream ``<instance>/proxy``) and/or S3 like the flow log
    when ``cloudwatch_log_group`` or ``s3_bucket`` is set (needs ``spectra run --aws``).
    ``false`` stands for ``{"enabled": false}`` (no access log)."""

    enabled: bool = True
    max_bytes: int = Field(default=64 * 1024 * 1024, ge=4096, le=1 << 40)
    keep: int = Field(default=5, ge=1, le=100, description="rotated files kept")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"enabled": value} if isinstance(value, bool) else value


class ProxyTransparent(StrictModel):
    """Interception of the inside's plain HTTP (TCP port 80) for workloads not
    configured with a proxy: nftables ``tproxy`` hands each connection to Squid's
    ``port`` (an ``http_port ... tproxy`` on each inside address), where the same domain
    lists apply without authentication. HTTPS (443) is not intercepted: Debian's Squid
    is built with GnuTLS, and SNI-based allow/deny (SslBump ``peek``/``splice``) needs a
    Squid built with OpenSSL. ``true`` stands for ``{"enabled": true}``."""

    enabled: bool = False
    port: Port = Field(default=3129, description="Squid's TPROXY listener on the inside")

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"enabled": value} if isinstance(value, bool) else value


class Proxy(StrictModel):
    """The Squid forward proxy on the inside interface's addresses."""

    enabled: bool = False
    port: Port = 3128
    auth: ProxyAuth = ProxyAuth()
    allowed_domains: list[Domain] = Field(
        default_factory=list, max_length=4096, description="empty: every domain is allowed"
    )
    denied_domains: list[Domain] = Field(
        default_factory=list, max_length=4096, description="denied even when allowed"
    )
    connect_ports: list[Port] = Field(
        default_factory=lambda: [443], min_length=1, max_length=64,
        description="ports HTTPS CONNECT may reach",
    )  # fmt: skip
    connect_domains: list[Domain] = Field(
        default_factory=list, max_length=4096,
        description="domains CONNECT may reach (empty: those the domain lists allow)",
    )  # fmt: skip
    cache: ProxyCache = ProxyCache()
    bandwidth_limits: list[BandwidthLimit] = Field(default_factory=list, max_length=64)
    hosts: dict[Domain, IPv4Address] = Field(
        default_factory=dict, max_length=4096,
        description="static names the proxy resolves before DNS (its hosts file)",
    )  # fmt: skip
    access_log: ProxyAccessLog = ProxyAccessLog()
    transparent: ProxyTransparent = ProxyTransparent()

    @model_validator(mode="after")
    def _references(self) -> Proxy:
        unique_names("bandwidth_limits", [b.name for b in self.bandwidth_limits])
        users = {u.name for u in self.auth.users} if self.auth.mode == "basic" else set()
        for i, limit in enumerate(self.bandwidth_limits):
            for j, user in enumerate(limit.users):
                if user not in users:
                    raise fail(
                        ("bandwidth_limits", i, "users", j), user,
                        f"expected a user of auth.users (basic): {sorted(users) or 'none'}",
                    )  # fmt: skip
        for name in self.hosts:
            if name.startswith(("*", ".")):
                raise fail(("hosts", name), name, "expected a host name, not a wildcard")
        return self


class Backend(StrictModel):
    """One backend server of a TLS or L4 listener."""

    address: IPv4Address
    port: Port
    weight: int = Field(default=1, ge=1, le=256)


def _absolute(value: str) -> str:
    if not value.startswith("/") or "\n" in value or len(value) > 1024:
        raise ValueError("expected an absolute file path like /etc/spectra/tls/site.pem")
    return value


AbsPath = Annotated[str, AfterValidator(_absolute)]


class CertificateSource(StrictModel):
    """Where a TLS certificate comes from: ACM (``certificate_arn``, exported) or PEM
    files on the instance (``certificate_file``: the certificate and its chain;
    ``private_key_file``); a renewed one is picked up without a restart."""

    certificate_arn: AcmArn | None = None
    certificate_file: AbsPath | None = None
    private_key_file: AbsPath | None = None

    @model_validator(mode="after")
    def _certificate(self) -> CertificateSource:
        files = (self.certificate_file, self.private_key_file)
        if self.certificate_arn is None and None in files:
            raise fail(
                ("certificate_file",), self.certificate_file,
                "expected certificate_arn, or certificate_file and private_key_file",
            )  # fmt: skip
        if self.certificate_arn is not None and files != (None, None):
            raise fail(("certificate_arn",), self.certificate_arn,
                       "expected certificate_arn or certificate files, not both")  # fmt: skip
        return self


class TlsListener(CertificateSource):
    """HAProxy terminates TLS on ``port`` and proxies to ``backends``."""

    name: Name
    port: Port = 443
    mode: Literal["http", "tcp"] = "http"
    backends: list[Backend] = Field(min_length=1, max_length=256)
    hsts: bool = Field(default=False, description="Strict-Transport-Security (mode http)")
    redirect_http_port: Port | None = Field(
        default=None, description="a plain-HTTP port redirected to this listener (mode http)"
    )

    @model_validator(mode="after")
    def _http_only(self) -> TlsListener:
        if self.mode == "tcp" and (self.hsts or self.redirect_http_port):
            field = "hsts" if self.hsts else "redirect_http_port"
            raise fail((field,), getattr(self, field), 'expected mode "http" for this')
        return self


APPLIANCE = "appliance"  # the HAProxy frontend of the appliance's own endpoints


class ApplianceTls(CertificateSource):
    """The appliance's own endpoints behind HAProxy: the config API and dashboard
    (``api.port``) and the AI gateway (``ai.listen_port``, by its paths) are served
    over HTTPS on ``port``, with HSTS; their plain-HTTP ports answer on loopback only
    (connections from any other interface are reset)."""

    port: Port = 443
    redirect_http_port: Port | None = Field(
        default=None, description="a plain-HTTP port answering 301 to https on port"
    )


class Tls(StrictModel):
    """TLS termination (HAProxy)."""

    enabled: bool = False
    appliance: ApplianceTls | None = Field(
        default=None, description="HTTPS for the config API, dashboard and AI gateway"
    )
    listeners: list[TlsListener] = Field(default_factory=list, max_length=64)

    @model_validator(mode="after")
    def _names(self) -> Tls:
        unique_names("listeners", [listener.name for listener in self.listeners])
        for i, listener in enumerate(self.listeners):
            if self.appliance is not None and listener.name == APPLIANCE:
                raise fail(("listeners", i, "name"), listener.name,
                           f"expected a name other than {APPLIANCE!r}")  # fmt: skip
        return self


class HealthCheck(StrictModel):
    """How the agent probes a backend: a TCP connect, or an HTTP GET of ``path`` that
    answers 2xx/3xx, every ``interval_seconds``, each probe bounded by
    ``timeout_seconds``. Hysteresis: ``unhealthy_threshold`` failures in a row take a
    backend out, ``healthy_threshold`` successes in a row bring it back."""

    protocol: Literal["tcp", "http"] = "tcp"
    port: Port | None = Field(default=None, description="default: the traffic port")
    path: str = Field(default="/", pattern=r"^/[\x21-\x7e]*$", max_length=512)
    interval_seconds: int = Field(default=10, ge=1, le=300)
    timeout_seconds: float = Field(default=2.0, gt=0, le=60)
    healthy_threshold: int = Field(default=2, ge=1, le=10)
    unhealthy_threshold: int = Field(default=2, ge=1, le=10)

    @model_validator(mode="after")
    def _timeout(self) -> HealthCheck:
        if self.timeout_seconds > self.interval_seconds:
            raise fail(("timeout_seconds",), self.timeout_seconds,
                       f"expected at most interval_seconds ({self.interval_seconds})")  # fmt: skip
        return self


_TG_ARN_RE = re.compile(
    r"^arn:aws[a-z-]*:elasticloadbalancing:[a-z0-9-]+:\d{12}:targetgroup/[A-Za-z0-9-]{1,32}/[0-9a-f]{1,16}$"
)


def _tg_arn(value: str) -> str:
    if not _TG_ARN_RE.match(value):
        raise ValueError(
            "expected an ELBv2 target group ARN like arn:aws:elasticloadbalancing:"
            "eu-west-1:123456789012:targetgroup/<name>/<id>"
        )
    return value


TargetGroupArn = Annotated[str, AfterValidator(_tg_arn)]
# Where a VPC's backends are when the document names no networks (RFC 1918, RFC 6598)
PRIVATE_NETWORKS = tuple(
    IPv4Network(n) for n in ("10.0.0.0/8", "100.64.0.0/10", "172.16.0.0/12", "192.168.0.0/16")
)


class LbListener(StrictModel):
    """A virtual service: new ``proto`` connections to ``address``:``port`` are spread
    over the healthy backends by weight (``roundrobin``: in turn; ``source``: by a hash
    of the client address, so one client keeps its backend). ``address`` is
    ``"outside"`` (the outside interface's addresses), ``"inside"`` (the inside
    interface's) or one address routed to the gateway. Backends are the listed ones,
    plus the healthy targets of ``target_group_arn`` (an ELBv2 target group of target
    type ``ip``) when it is set."""

    name: Name
    address: Literal["outside", "inside"] | IPv4Address = "outside"
    proto: PortProto = "tcp"
    port: Port
    algorithm: Literal["roundrobin", "source"] = "roundrobin"
    backends: list[Backend] = Field(default_factory=list, max_length=256)
    target_group_arn: TargetGroupArn | None = None
    health_check: HealthCheck = HealthCheck()

    @model_validator(mode="after")
    def _some_backend(self) -> LbListener:
        if not self.backends and self.target_group_arn is None:
            raise fail(("backends",), [], "expected at least one backend or a target_group_arn")
        if self.proto == "udp" and self.health_check.protocol == "http":
            raise fail(("health_check", "protocol"), "http", 'expected "tcp" for a udp listener '
                       "(probed on health_check.port over TCP)")  # fmt: skip
        return self


class LoadBalancer(StrictModel):
    """The L4 load balancer (nftables DNAT maps; :mod:`control.steps.lb`)."""

    enabled: bool = False
    listeners: list[LbListener] = Field(default_factory=list, max_length=64)
    backend_networks: list[IPv4Network] = Field(
        default_factory=lambda: list(PRIVATE_NETWORKS), min_length=1, max_length=256,
        description="the subnets backends may be in (default: the private ranges)",
    )  # fmt: skip
    target_group_sync_seconds: int = Field(
        default=10, ge=1, le=3600, description="how often target groups are read"
    )

    @model_validator(mode="after")
    def _names(self) -> LoadBalancer:
        unique_names("listeners", [listener.name for listener in self.listeners])
        for i, listener in enumerate(self.listeners):
            for j, backend in enumerate(listener.backends):
                if not any(backend.address in net for net in self.backend_networks):
                    raise fail(
                        ("listeners", i, "backends", j, "address"), str(backend.address),
                        "expected an address in one of backend_networks: "
                        + ", ".join(str(n) for n in self.backend_networks),
                    )  # fmt: skip
        return self
