"""ctnetlink wire format of :mod:`xdp.ctevents`: messages built attribute by attribute
parse back to the same entry, the one-pack fast paths agree with the generic ones, and
the socket filter is a well-formed classic-BPF program."""

from __future__ import annotations

import struct
from ipaddress import IPv4Address

import pytest

from xdp import ctevents as c
from xdp.offload import IPS_ASSURED, IPS_SEEN_REPLY, IPS_SRC_NAT, CtFlow, CtTuple

ORIG = CtTuple(IPv4Address("10.0.1.10"), IPv4Address("198.51.100.10"), 40000, 443)
REPLY = CtTuple(IPv4Address("198.51.100.10"), IPv4Address("203.0.113.2"), 443, 61000)


def message(proto: int, kind: int, flags: int, *, state: int | None = None) -> bytes:
    payload = c._tuple_attr_any(c.CTA_TUPLE_ORIG, proto, ORIG)
    payload += c._tuple_attr_any(c.CTA_TUPLE_REPLY, proto, REPLY)
    payload += c._nla(c.CTA_STATUS, struct.pack(">I", IPS_SRC_NAT | IPS_SEEN_REPLY | IPS_ASSURED))
    payload += c._nla(c.CTA_TIMEOUT, struct.pack(">I", 120))
    payload += c._nla(c.CTA_MARK, struct.pack(">I", 2))
    if state is not None:
        tcp = c._nla(c.CTA_PROTOINFO_TCP_STATE, bytes([state]))
        payload += c._nla(c.CTA_PROTOINFO | c.NLA_F_NESTED,
                          c._nla(c.CTA_PROTOINFO_TCP | c.NLA_F_NESTED, tcp))  # fmt: skip
    return c._msg(kind, flags, 7, payload)


@pytest.mark.parametrize(
    ("kind", "flags", "what"),
    [(c.MSG_NEW, c.NLM_F_CREATE, "new"), (c.MSG_NEW, 0, "update"), (c.MSG_DELETE, 0, "destroy")],
)
def test_messages_parse_back(kind: int, flags: int, what: str) -> None:
    data = message(6, kind, flags, state=3) + c._msg(c.NLMSG_DONE, 0, 7, b"")
    items = list(c.parse(data))
    assert items[1] == 0, "the end of a dump"
    event = items[0]
    assert isinstance(event, c.CtEvent) and event.kind == what
    assert event.flow == CtFlow(6, ORIG, REPLY, IPS_SRC_NAT | IPS_SEEN_REPLY | IPS_ASSURED,
                                3, 2, 120)  # fmt: skip


def test_icmp_echo_keeps_its_identifier() -> None:
    (event,) = c.parse(message(1, c.MSG_NEW, 0))
    assert isinstance(event, c.CtEvent)
    assert event.flow.orig == CtTuple(ORIG.saddr, ORIG.daddr, ORIG.sport, 0)


def test_an_error_answer_is_its_errno() -> None:
    err = c.HDR.pack(c.HDR.size + 4, c.NLMSG_ERROR, 0, 1, 0) + struct.pack("=i", -2)
    assert list(c.parse(err)) == [2]


@pytest.mark.parametrize("proto", [6, 17])
def test_fast_builders_match_the_generic_ones(proto: int) -> None:
    assert c.tuple_attr(c.CTA_TUPLE_ORIG, proto, ORIG) == c._tuple_attr_any(
        c.CTA_TUPLE_ORIG, proto, ORIG
    )


def test_parsed_addresses_hash_and_pack_like_plain_ones() -> None:
    flow = next(e for e in c.parse(message(17, c.MSG_NEW, 0)) if isinstance(e, c.CtEvent)).flow
    assert flow.orig == ORIG and hash(flow.orig) == hash(ORIG)
    assert flow.orig.saddr.packed == ORIG.saddr.packed and str(flow.orig.saddr) == "10.0.1.10"
    assert {ORIG.daddr: 1}[flow.orig.daddr] == 1


def test_the_filter_is_well_formed() -> None:
    prog = c.candidate_filter(1234)
    assert 0 < len(prog) < 4096
    for i, (code, jt, jf, _) in enumerate(prog):
        if code & 0x07 == c.BPF_JMP:
            assert i + 1 + jt < len(prog) and i + 1 + jf < len(prog)
    assert prog[-1] == (c.BPF_RET | c.BPF_K, 0, 0, c.DROP)
    assert prog[-2] == (c.BPF_RET | c.BPF_K, 0, 0, c.ACCEPT)
