"""Field types shared by every section of the config document.

Each type carries its own constraint and a message that says what is accepted, so a
validation error can name the path, the value and the accepted form.  Secret
fields use :data:`Secret`: they never render in ``repr``, logs, API responses or error
messages; only the stores ask for the plain value (``reveal_secrets`` context).
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    SecretStr,
    SerializationInfo,
)

from nfq.domain_pattern import DomainPattern

MASK = "**********"
REVEAL = {"reveal_secrets": True}

_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,15}$")
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.\-]{0,62}$")


class StrictModel(BaseModel):
    """Base of every section: unknown fields are rejected, not ignored; frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


def _serialize_secret(value: SecretStr, info: SerializationInfo) -> str:
    context = info.context
    if isinstance(context, dict) and context.get("reveal_secrets"):
        return value.get_secret_value()
    return MASK


Secret = Annotated[
    SecretStr,
    Field(min_length=1, max_length=4096, json_schema_extra={"writeOnly": True}),
    PlainSerializer(_serialize_secret, return_type=str, when_used="always"),
]
"""A credential: masked as ``**********`` everywhere unless a store reveals it."""

Port = Annotated[int, Field(ge=1, le=65535, description="TCP/UDP port 1..65535")]


def _ordered(value: tuple[int, int]) -> tuple[int, int]:
    if value[0] > value[1]:
        raise ValueError(f"expected [low, high] with low <= high, got [{value[0]}, {value[1]}]")
    return value


PortRange = Annotated[
    tuple[Port, Port],
    AfterValidator(_ordered),
    Field(description="inclusive [low, high] port range, 1 <= low <= high <= 65535"),
]

Proto = Literal["tcp", "udp", "icmp"]
PortProto = Literal["tcp", "udp"]


def _ifname(value: str) -> str:
    if not _IFNAME_RE.match(value):
        raise ValueError(
            "expected a Linux interface name: 1-15 characters of letters, digits, '_', '.', '-'"
        )
    return value


IfName = Annotated[
    str,
    AfterValidator(_ifname),
    Field(examples=["eth0"], json_schema_extra={"pattern": _IFNAME_RE.pattern}),
]


Domain = DomainPattern
"""A domain pattern: :mod:`nfq.domain_pattern`, the one form of every domain list."""


def _name(value: str) -> str:
    if not _NAME_RE.match(value):
        raise ValueError(
            "expected a name of 1-63 lower-case letters, digits, '_', '.', '-' "
            "starting with a letter or digit"
        )
    return value


Name = Annotated[str, AfterValidator(_name), Field(json_schema_extra={"pattern": _NAME_RE.pattern})]

Seconds = Annotated[int, Field(ge=1, le=7 * 24 * 3600, description="seconds, 1..604800")]
