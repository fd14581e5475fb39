"""Plain records of the data plane: flow keys/entries and stateless deny rules.

Frozen, slotted, validated on construction, free of ctypes so the control plane and
the tests can build them without privileges.  ``xdp.maps`` converts them to the C
layouts of ``xdp/bpf/maps.h``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from xdp.prefixes import Prefix, from_network

IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
FLOW_PROTOCOLS = (IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP)
PORT_PROTOCOLS = (IPPROTO_TCP, IPPROTO_UDP)

FLOW_F_CLOSING = 1 << 0
FLOW_F_GWLB = 1 << 1  # two-arm GWLB return: re-encapsulated with the stored header
# hairpin leg: the deny list judges the translated destination (the forward chain's view)
FLOW_F_DENY_TRANSLATED = 1 << 2
MAX_DENY_RULES = 4096  # the default build's (BuildOptions.max_deny_rules)

ANY_NETWORK = IPv4Network("0.0.0.0/0")
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


class RecordError(ValueError):
    """A flow key, flow entry or deny rule field is out of range."""


def _check_u16(field: str, value: int) -> None:
    if not isinstance(value, int) or not 0 <= value <= 0xFFFF:
        raise RecordError(f"{field}={value!r}: expected an integer 0..65535")


def _check_ifindex(field: str, value: int) -> None:
    if not isinstance(value, int) or not 0 <= value <= 0xFFFFFFFF:
        raise RecordError(f"{field}={value!r}: expected an interface index 0..2**32-1")


def _check_mac(field: str, value: str) -> None:
    if not isinstance(value, str) or not _MAC_RE.match(value):
        raise RecordError(f"{field}={value!r}: expected a lower-case MAC like 02:00:00:00:00:01")


def _check_addr(field: str, value: IPv4Address) -> None:
    if not isinstance(value, IPv4Address):
        raise RecordError(f"{field}={value!r}: expected an ipaddress.IPv4Address")


@dataclass(frozen=True, slots=True)
class FlowKey:
    """One direction of a flow as it arrives on ``ifindex`` (``struct flow_key``).

    ICMP echo request and reply alike: ``sport`` is the echo identifier and ``dport``
    is 0, as Linux conntrack keeps the id in the tuple's source slot and NAT rewrites
    it like a source port.  Build those keys with :meth:`icmp_echo`.
    """

    ifindex: int
    saddr: IPv4Address
    daddr: IPv4Address
    sport: int
    dport: int
    proto: int

    def __post_init__(self) -> None:
        _check_ifindex("ifindex", self.ifindex)
        _check_addr("saddr", self.saddr)
        _check_addr("daddr", self.daddr)
        _check_u16("sport", self.sport)
        _check_u16("dport", self.dport)
        if self.proto not in FLOW_PROTOCOLS:
            raise RecordError(f"proto={self.proto!r}: expected one of 6 (TCP), 17 (UDP), 1 (ICMP)")
        if self.proto == IPPROTO_ICMP and self.dport != 0:
            raise RecordError(f"dport={self.dport!r}: ICMP echo keys use dport 0 (id in sport)")

    @classmethod
    def icmp_echo(cls, ifindex: int, saddr: IPv4Address, daddr: IPv4Address, ident: int) -> FlowKey:
        """Key of an ICMP echo request or reply carrying identifier ``ident``."""
        return cls(ifindex, saddr, daddr, ident, 0, IPPROTO_ICMP)


@dataclass(frozen=True, slots=True)
class FlowEntry:
    """Translation and forwarding of one flow direction (``struct flow_value``).

    ``packets``, ``bytes`` and ``last_seen_ns`` are written by the program; set them
    only to seed a test.
    """

    new_saddr: IPv4Address
    new_daddr: IPv4Address
    new_sport: int
    new_dport: int
    egress_ifindex: int
    src_mac: str
    dst_mac: str
    flags: int = 0
    packets: int = 0
    bytes: int = 0
    last_seen_ns: int = 0

    def __post_init__(self) -> None:
        _check_addr("new_saddr", self.new_saddr)
        _check_addr("new_daddr", self.new_daddr)
        _check_u16("new_sport", self.new_sport)
        _check_u16("new_dport", self.new_dport)
        _check_ifindex("egress_ifindex", self.egress_ifindex)
        _check_mac("src_mac", self.src_mac)
        _check_mac("dst_mac", self.dst_mac)

    @property
    def closing(self) -> bool:
        return bool(self.flags & FLOW_F_CLOSING)

    @property
    def gwlb(self) -> bool:
        return bool(self.flags & FLOW_F_GWLB)


@dataclass(frozen=True, slots=True)
class DenyRule:
    """A stateless deny rule: drop IPv4 packets matching every field.

    ``proto`` None matches any protocol.  ``ports`` is an inclusive destination port
    range and applies to TCP/UDP only: a rule with ports never matches ICMP or other
    protocols, nor packets whose ports are not visible (non-first fragments).
    ``src_set`` / ``dst_set`` (an IP set: :data:`xdp.prefixes.Prefix` pairs that do not
    overlap) replace ``src`` / ``dst``, which must then stay 0.0.0.0/0.
    """

    src: IPv4Network = ANY_NETWORK
    dst: IPv4Network = ANY_NETWORK
    proto: int | None = None
    ports: tuple[int, int] | None = None
    src_set: tuple[Prefix, ...] | None = None
    dst_set: tuple[Prefix, ...] | None = None

    def __post_init__(self) -> None:
        for field in ("src", "dst"):
            value = getattr(self, field)
            if not isinstance(value, IPv4Network):
                raise RecordError(f"{field}={value!r}: expected an ipaddress.IPv4Network")
            if getattr(self, f"{field}_set") is not None and value != ANY_NETWORK:
                raise RecordError(f"{field}={value} with {field}_set: expected one of the two")
        if self.proto is not None and (
            not isinstance(self.proto, int) or not 0 <= self.proto <= 255
        ):
            raise RecordError(f"proto={self.proto!r}: expected None (any) or an IP protocol 0..255")
        if self.ports is not None:
            ok = (
                isinstance(self.ports, tuple)
                and len(self.ports) == 2
                and all(isinstance(p, int) and 0 <= p <= 0xFFFF for p in self.ports)
                and self.ports[0] <= self.ports[1]
            )
            if not ok:
                raise RecordError(
                    f"ports={self.ports!r}: expected None (any) or (low, high) with "
                    "0 <= low <= high <= 65535"
                )
            if self.proto not in (None, *PORT_PROTOCOLS):
                raise RecordError(
                    f"ports={self.ports!r} with proto={self.proto!r}: ports apply only to "
                    "proto 6 (TCP), 17 (UDP) or None (TCP and UDP)"
                )

    @property
    def port_protocols(self) -> tuple[int, ...]:
        """Protocols whose port table this rule is expanded into."""
        if self.ports is None:
            return ()
        return PORT_PROTOCOLS if self.proto is None else (self.proto,)

    def prefixes(self, side: str) -> tuple[Prefix, ...]:
        """What one side (``"src"`` or ``"dst"``) matches: the set, or the one CIDR."""
        found: tuple[Prefix, ...] | None = getattr(self, f"{side}_set")
        return (from_network(getattr(self, side)),) if found is None else found

    def matches_proto(self, proto: int) -> bool:
        return self.proto is None or self.proto == proto
