"""AWS Gateway Load Balancer GENEVE options: the option registry of class 0x0108 and
the validation an appliance applies to every packet.

GWLB sends three TLVs of class 0x0108 with every packet and expects them back
unchanged (https://docs.aws.amazon.com/elasticloadbalancing/latest/gateway/introduction.html,
"Gateway Load Balancer ... uses GENEVE ... with TLVs"; RFC 8926 3.5 for the TLV format):

====  =====================  ======
type  meaning                bytes
====  =====================  ======
1     GWLB endpoint ID       8
2     attachment ID          8
3     flow cookie            4
====  =====================  ======

The registry is a dict (never an ``elif`` chain); the C side mirrors it in
``xdp/include/spectra/geneve.h`` and tests/unit/geneve/test_reasons.py checks both
agree.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from geneve.codec import GeneveHeader, GeneveOption
from geneve.errors import MalformedError, MissingGwlbOptionError, UnknownCriticalOptionError

AWS_OPTION_CLASS = 0x0108


@dataclass(frozen=True, slots=True)
class OptionSpec:
    """One registered option: its name and exact data size in bytes."""

    name: str
    size: int


AWS_OPTIONS: dict[int, OptionSpec] = {
    1: OptionSpec("endpoint_id", 8),
    2: OptionSpec("attachment_id", 8),
    3: OptionSpec("flow_cookie", 4),
}


def understood(option: GeneveOption) -> bool:
    """True when this implementation knows what the option means."""
    return option.option_class == AWS_OPTION_CLASS and option.option_type in AWS_OPTIONS


@dataclass(frozen=True, slots=True)
class GwlbTlvs:
    """The three values GWLB attaches to a flow."""

    endpoint_id: int
    attachment_id: int
    flow_cookie: int

    def options(self) -> tuple[GeneveOption, ...]:
        """The TLVs in the order GWLB sends them (types 1, 2, 3)."""
        return (
            GeneveOption(AWS_OPTION_CLASS, 1, struct.pack("!Q", self.endpoint_id)),
            GeneveOption(AWS_OPTION_CLASS, 2, struct.pack("!Q", self.attachment_id)),
            GeneveOption(AWS_OPTION_CLASS, 3, struct.pack("!I", self.flow_cookie)),
        )

    def header(self, protocol: int, vni: int = 0) -> GeneveHeader:
        return GeneveHeader(protocol=protocol, vni=vni, options=self.options())


def validate(header: GeneveHeader, max_options: int | None = None) -> GwlbTlvs:
    """Apply the appliance's acceptance rules; return the TLVs or raise.

    Order matches the data plane: unknown critical options first (RFC 8926 3.5: MUST
    drop), then sizes of known options, then presence of all three.  ``max_options``
    models the data plane's bound on the option walk (geneve.dataplane.MAX_OPTIONS).
    """
    if max_options is not None and len(header.options) > max_options:
        raise MalformedError(
            f"{len(header.options)} options: the data plane walks at most {max_options}"
        )
    found: dict[int, bytes] = {}
    for opt in header.options:
        if not understood(opt):
            if opt.critical:
                raise UnknownCriticalOptionError(opt.option_class, opt.option_type)
            continue
        spec = AWS_OPTIONS[opt.option_type]
        if len(opt.data) != spec.size:
            raise MalformedError(
                f"GWLB option {spec.name} (class 0x0108 type {opt.option_type}): "
                f"{len(opt.data)} bytes, exactly {spec.size} accepted"
            )
        found.setdefault(opt.option_type, opt.data)
    missing = tuple(spec.name for t, spec in AWS_OPTIONS.items() if t not in found)
    if missing:
        raise MissingGwlbOptionError(missing)
    return GwlbTlvs(
        endpoint_id=int.from_bytes(found[1], "big"),
        attachment_id=int.from_bytes(found[2], "big"),
        flow_cookie=int.from_bytes(found[3], "big"),
    )
