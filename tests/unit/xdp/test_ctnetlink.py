"""The ctnetlink adapter's translation of pyroute2 conntrack entries into the
offloader's records (entries built as pyroute2 hands them over; no netlink)."""

from __future__ import annotations

import socket
from ipaddress import IPv4Address
from types import SimpleNamespace

import pytest

from xdp.ctnetlink import ICMP_ECHO_REQUEST, _ct_flow
from xdp.offload import CtFlow, CtTuple


def entry(proto: int, **orig: object) -> SimpleNamespace:
    def tup(saddr: str, daddr: str, sport: int, dport: int) -> SimpleNamespace:
        return SimpleNamespace(
            family=socket.AF_INET, proto=proto, saddr=saddr, daddr=daddr, sport=sport,
            dport=dport, icmp_id=sport, icmp_type=ICMP_ECHO_REQUEST,
        )  # fmt: skip

    original = tup("10.0.1.10", "198.51.100.10", 40000, 80)
    for name, value in orig.items():
        setattr(original, name, value)
    return SimpleNamespace(
        tuple_orig=original,
        tuple_reply=tup("198.51.100.10", "203.0.113.2", 80, 61000),
        protoinfo=SimpleNamespace(state=3) if proto == 6 else None,
        status=0x16,
        mark=0x2,
        timeout=432000,
    )


def test_tcp_entry_keeps_both_tuples_state_mark_and_timeout() -> None:
    ws, inet, nat = (IPv4Address(a) for a in ("10.0.1.10", "198.51.100.10", "203.0.113.2"))
    assert _ct_flow(entry(6)) == CtFlow(
        proto=6,
        orig=CtTuple(ws, inet, 40000, 80),
        reply=CtTuple(inet, nat, 80, 61000),
        status=0x16,
        tcp_state=3,
        mark=0x2,
        timeout=432000,
    )


def test_icmp_echo_uses_the_identifier_as_source_port() -> None:
    flow = _ct_flow(entry(1))
    assert flow is not None
    assert (flow.orig.sport, flow.orig.dport, flow.tcp_state) == (40000, 0, None)


@pytest.mark.parametrize(
    "e",
    [
        entry(47),  # GRE: never offloaded
        entry(1, icmp_type=13),  # ICMP other than echo
        entry(6, family=socket.AF_INET6),
        entry(17, saddr=None),
    ],
    ids=["other_proto", "icmp_not_echo", "ipv6", "no_address"],
)
def test_entries_the_offloader_never_takes_are_skipped(e: SimpleNamespace) -> None:
    assert _ct_flow(e) is None
