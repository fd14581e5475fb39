"""The config document: the whole desired state of the appliance, one versioned model.

``schema_version`` is the document format (bumped on incompatible change); the store
numbers revisions of a document separately.  Section models live in
:mod:`control.config.network` (the packet path), :mod:`control.config.proxies`,
:mod:`control.config.operations` and :mod:`control.config.aws`; this module adds the
checks that span sections (ports claimed twice, interfaces, XDP limits) and the entry
points: :func:`parse_document`,
:func:`dump_document`, :func:`json_schema`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from ai.config import AIConfig
from control.config.aws import Aws
from control.config.errors import ConfigValidationError, FieldError, render_errors
from control.config.ha import Ha
from control.config.issues import Issue, Issues, Loc, format_path
from control.config.network import Gwlb, Interfaces, Nat, PortForward, Rules
from control.config.operations import Api, Logging, Metrics
from control.config.proxies import LoadBalancer, Proxy, Tls
from control.config.secrets import secret_field_names
from control.config.types import REVEAL, StrictModel
from nfq import InspectionPolicy
from xdp.loader import DEFAULT_OPTIONS
from xdp.records import MAX_DENY_RULES

SCHEMA_VERSION = 1
GENEVE_PORT = 6081
SSH_PORT = 22  # the appliance's own SSH (the AMI's sshd), never a service port


class ConfigDocument(StrictModel):
    """Desired state of every instance of one gateway deployment."""

    schema_version: Literal[1] = 1
    interfaces: Interfaces
    nat: Nat = Nat()
    rules: Rules = Rules()
    inspection: InspectionPolicy = InspectionPolicy(enabled=False)
    port_forwards: list[PortForward] = Field(default_factory=list, max_length=1024)
    proxy: Proxy = Proxy()
    tls: Tls = Tls()
    load_balancer: LoadBalancer = LoadBalancer()
    gwlb: Gwlb = Gwlb()
    ha: Ha = Ha()
    ai: AIConfig = AIConfig()
    logging: Logging = Logging()
    metrics: Metrics = Metrics()
    api: Api = Api()
    aws: Aws = Aws()

    @property
    def gwlb_interface(self) -> str | None:
        """The GWLB-facing interface when GWLB mode is on (default: the inside one)."""
        if not self.gwlb.enabled:
            return None
        return self.gwlb.interface or self.interfaces.inside

    @property
    def one_arm_nat(self) -> bool:
        """One interface both ways without GWLB: a NAT instance on its primary ENI (the
        kernel path only; XDP's redirect needs a second interface)."""
        return self.interfaces.inside == self.interfaces.outside and not self.gwlb.enabled

    @model_validator(mode="after")
    def _cross_section(self) -> ConfigDocument:
        issues = (
            _interface_issues(self)
            + _port_claim_issues(self)
            + _deny_limit_issues(self)
            + _zone_issues(self)
        )
        if issues:
            raise Issues(issues)
        return self


def _interface_issues(doc: ConfigDocument) -> list[Issue]:
    one_arm = doc.gwlb.enabled and doc.gwlb.mode == "one-arm"
    kernel = doc.interfaces.data_plane == "kernel"  # one-arm NAT: see one_arm_nat
    if doc.interfaces.inside == doc.interfaces.outside and not (one_arm or kernel):
        return [
            Issue(
                ("interfaces", "outside"),
                doc.interfaces.outside,
                "expected an interface other than inside (one interface for both: GWLB "
                "one-arm mode, or data_plane kernel for one-arm NAT; XDP needs two)",
            )
        ]
    return []


def _zone_issues(doc: ConfigDocument) -> list[Issue]:
    if doc.nat.outside_addresses == "zone" and not doc.aws.zones:
        return [
            Issue(
                ("nat", "outside_addresses"),
                "zone",
                "expected aws.zones to name each Availability Zone's nat_address",
            )
        ]
    return []


def _port_claims(doc: ConfigDocument) -> list[tuple[Loc, str, int]]:
    claims: list[tuple[Loc, str, int]] = [
        (("api", "port"), "tcp", doc.api.port),
        (("(appliance ssh)",), "tcp", SSH_PORT),
    ]
    if doc.gwlb.enabled:
        claims.append((("gwlb", "health_check", "port"), "tcp", doc.gwlb.health_check.port))
        claims.append((("gwlb", "enabled"), "udp", GENEVE_PORT))
    if doc.ai.listen_port:
        claims.append((("ai", "listen_port"), "tcp", doc.ai.listen_port))
    if doc.proxy.enabled:
        claims.append((("proxy", "port"), "tcp", doc.proxy.port))
        if doc.proxy.transparent.enabled:
            claims.append((("proxy", "transparent", "port"), "tcp", doc.proxy.transparent.port))
    if doc.tls.enabled:
        appliance = doc.tls.appliance
        if appliance is not None:
            claims.append((("tls", "appliance", "port"), "tcp", appliance.port))
            if appliance.redirect_http_port:
                redirect: Loc = ("tls", "appliance", "redirect_http_port")
                claims.append((redirect, "tcp", appliance.redirect_http_port))
        for i, tls in enumerate(doc.tls.listeners):
            claims.append((("tls", "listeners", i, "port"), "tcp", tls.port))
            if tls.redirect_http_port:
                loc: Loc = ("tls", "listeners", i, "redirect_http_port")
                claims.append((loc, "tcp", tls.redirect_http_port))
    if doc.load_balancer.enabled:
        for i, lb in enumerate(doc.load_balancer.listeners):
            claims.append((("load_balancer", "listeners", i, "port"), lb.proto, lb.port))
    if doc.ha.conntrack_sync.enabled:
        claims.append((("ha", "conntrack_sync", "port"), "udp", doc.ha.conntrack_sync.port))
    return claims


def _port_claim_issues(doc: ConfigDocument) -> list[Issue]:
    """A port (or a port forward's range) claimed twice: the later claim is named."""
    ranges = [(loc, proto, port, port) for loc, proto, port in _port_claims(doc)]
    ranges += [
        (("port_forwards", i, "port"), f.proto, f.port, f.last_port)
        for i, f in enumerate(doc.port_forwards)
    ]
    issues = []
    for n, (loc, proto, low, high) in enumerate(ranges):
        first = next((r for r in ranges[:n] if r[1] == proto and r[2] <= high and low <= r[3]),
                     None)  # fmt: skip
        if first is None:
            continue
        what = f"{proto}/{low}" if low == high else f"{proto}/{low}-{high}"
        used = "" if first[2:] == (low, high) else f" ({_span(first[2], first[3])})"
        issues.append(Issue(loc, low, f"{what} is already used by {format_path(first[0])}{used}"))
    return issues


def _span(low: int, high: int) -> str:
    return str(low) if low == high else f"{low}-{high}"


def _deny_limit_issues(doc: ConfigDocument) -> list[Issue]:
    if doc.interfaces.data_plane != "xdp":
        return []
    denies = [rule for rule in doc.rules.entries if rule.action == "deny"]
    if len(denies) > MAX_DENY_RULES:
        return [
            Issue(
                ("rules", "entries"),
                f"{len(denies)} deny rules",
                f"expected at most {MAX_DENY_RULES} deny rules with data_plane xdp",
            )
        ]
    budget = DEFAULT_OPTIONS.deny_lpm_size // 2  # per side; the other half: the old list
    issues = []
    for side in ("src", "dst"):
        # the XDP deny list stores each prefix once per word of 64 rules that names it
        distinct = sum(
            len({p for rule in denies[w : w + 64] for p in doc.rules.prefixes(rule, side)})
            for w in range(0, len(denies), 64)
        )
        if distinct > budget:
            issues.append(
                Issue(
                    ("rules", "entries"),
                    f"{distinct} {side} CIDRs in deny rules (distinct per 64 rules)",
                    f"expected at most {budget} per side with data_plane xdp (the XDP "
                    "deny list's LPM size)",
                )
            )
    return issues


SECRET_FIELDS = secret_field_names(ConfigDocument)


def validation_errors(exc: ValidationError) -> list[FieldError]:
    """Path-level errors of a failed :class:`ConfigDocument` validation."""
    return render_errors(exc, ConfigDocument, SECRET_FIELDS)


def parse_document(data: Mapping[str, Any] | str | bytes) -> ConfigDocument:
    """Validate JSON text or data; raise :class:`ConfigValidationError` with path errors."""
    if isinstance(data, str | bytes):
        try:
            data = json.loads(data)
        except ValueError as exc:
            raise ConfigValidationError(
                [FieldError(path="(document)", value=None, message=f"expected JSON: {exc}")]
            ) from None
    if not isinstance(data, Mapping):
        raise ConfigValidationError(
            [
                FieldError(
                    path="(document)", value=type(data).__name__, message="expected a JSON object"
                )
            ]
        )
    try:
        return ConfigDocument.model_validate(data)
    except ValidationError as exc:
        raise ConfigValidationError(validation_errors(exc)) from None


def dump_document(doc: ConfigDocument, *, reveal_secrets: bool = False) -> dict[str, Any]:
    """Plain JSON data of ``doc``; secrets masked unless ``reveal_secrets`` (stores only)."""
    return doc.model_dump(mode="json", context=REVEAL if reveal_secrets else None)


def canonical_json(data: Any) -> str:
    """Deterministic ASCII JSON (sorted keys, no spaces): what stores hash and chunk."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def json_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of the config document, as `spectra config schema` prints."""
    schema = ConfigDocument.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"https://cloud-spectra.invalid/schemas/config-v{SCHEMA_VERSION}.json"
    return schema
