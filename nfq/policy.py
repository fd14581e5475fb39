"""The inspection policy: which forwarded flows are handed to the inspector, how, and to
which engine.

Self-contained pydantic v2 models (``extra="forbid"``) so the control plane can embed
:class:`InspectionPolicy` in its config document as ``inspection``. A flow is inspected
when it matches any :class:`Selector` (fields of one selector must all match); selected
flows are queued to NFQUEUE numbers ``queues.first .. queues.last`` (flow-hash balanced).
"""

from __future__ import annotations

from ipaddress import IPv4Network
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from nfq.domain_pattern import DomainPattern

MAX_QUEUE = 65535


class _Span(BaseModel):
    """An inclusive ``first..last`` span, given as ``N``, ``"N"`` or ``"A:B"``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    _what: ClassVar[str] = "span"

    first: int
    last: int

    @model_validator(mode="before")
    @classmethod
    def _from_scalar(cls, value: Any) -> Any:
        if isinstance(value, int):
            return {"first": value, "last": value}
        if isinstance(value, str):
            first, _, last = value.partition(":")
            try:
                return {"first": int(first), "last": int(last or first)}
            except ValueError:
                raise ValueError(f"{cls._what} {value!r}: expected N or A:B") from None
        return value

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.first > self.last:
            raise ValueError(f"{self._what} {self.first}:{self.last}: first is above last")
        return self


class PortRange(_Span):
    """One port or an inclusive range; accepts ``443``, ``"443"`` or ``"8000:8080"``."""

    _what: ClassVar[str] = "port range"

    first: int = Field(ge=1, le=65535)
    last: int = Field(ge=1, le=65535)

    def __str__(self) -> str:
        return str(self.first) if self.first == self.last else f"{self.first}:{self.last}"


class QueueRange(_Span):
    """NFQUEUE numbers ``first..last``; accepts ``"0:3"`` or ``2``."""

    _what: ClassVar[str] = "queues"

    first: int = Field(default=0, ge=0, le=MAX_QUEUE)
    last: int = Field(default=0, ge=0, le=MAX_QUEUE)

    @property
    def numbers(self) -> range:
        return range(self.first, self.last + 1)


class Selector(BaseModel):
    """Flows to inspect: every given field must match (empty = everything)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    src: tuple[IPv4Network, ...] = ()
    dst: tuple[IPv4Network, ...] = ()
    proto: Literal["tcp", "udp", "icmp", "any"] = "any"
    ports: tuple[PortRange, ...] = Field(default=(), description="destination ports (tcp/udp)")

    @model_validator(mode="after")
    def _ports_need_l4(self) -> Selector:
        if self.ports and self.proto not in ("tcp", "udp"):
            raise ValueError(f"ports need proto tcp or udp, not {self.proto!r}")
        if len(self.ports) > 15:
            raise ValueError(f"at most 15 port entries per selector, got {len(self.ports)}")
        return self


class DomainList(BaseModel):
    """An AWS Network Firewall stateful domain list rule group (``RulesSourceList``):
    ``targets`` are domain patterns (:mod:`nfq.domain_pattern`, the one form every
    domain list of the document uses: ``www.example.com`` that name, ``.example.com``
    the domain and every subdomain, ``*.example.com`` subdomains only);
    ``ALLOWLIST`` passes matching flows and drops the rest of the inspected HTTP/TLS
    traffic, ``DENYLIST`` drops matching flows. Compiled into rules by
    :func:`nfq.domains.compile_domain_lists`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    targets: tuple[DomainPattern, ...] = Field(min_length=1)
    target_types: tuple[Literal["TLS_SNI", "HTTP_HOST"], ...] = Field(
        default=("TLS_SNI", "HTTP_HOST"), min_length=1
    )
    generated_rules_type: Literal["ALLOWLIST", "DENYLIST"]


class InspectionPolicy(BaseModel):
    """What the gateway inspects and with which engine (the config's ``inspection``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    selectors: tuple[Selector, ...] = (Selector(),)
    queues: QueueRange = QueueRange()
    fail_open: bool = Field(
        default=True,
        description="accept traffic when no inspector is bound (--queue-bypass); "
        "false blocks selected flows while the engine is down",
    )
    engine: Literal["suricata", "builtin"] = "builtin"
    stream_depth: int = Field(
        default=1_048_576,
        ge=0,
        description="bytes per direction inspected before the flow is bypassed (0 = no limit)",
    )
    vars: dict[str, str] = Field(
        default_factory=lambda: {"HOME_NET": "[10.0.0.0/8,172.16.0.0/12,192.168.0.0/16]"},
        description="address/port variables for rules, e.g. HOME_NET; EXTERNAL_NET "
        "defaults to !$HOME_NET",
    )
    rules: tuple[str, ...] = Field(default=(), description="inline rules (Suricata syntax)")
    rule_files: tuple[Path, ...] = Field(default=(), description="rule sources on disk")
    domain_lists: tuple[DomainList, ...] = Field(
        default=(), description="AWS Network Firewall style domain allow/deny lists"
    )

    @field_validator("vars")
    @classmethod
    def _var_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not name.replace("_", "").isalnum() or not name[:1].isalpha():
                raise ValueError(f"variable name {name!r}: letters, digits and _ only")
        return value
