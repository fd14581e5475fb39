"""GENEVE / AWS GWLB packet cases as readable scapy expressions.

Each :class:`GeneveCase` is an input frame as the GWLB sends it to the appliance's
GWLB interface, the expected verdict and reason of ``xdp_gwlb``, and the expected
output frame (built independently: an Ethernet header in front of the inner packet).
The same cases drive the BPF_PROG_TEST_RUN tests, the Python reference model
(``geneve.decapsulate``) and ``perf/gwlbprogcost.py``.

Story: GWLB 172.16.1.1 -> appliance 172.16.1.2 (UDP 6081); workload 10.0.100.10
talks to 198.51.100.10.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any

from scapy.contrib.geneve import GENEVE, GeneveOptions
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Ether
from scapy.packet import Packet, Raw

from geneve.reasons import GwlbReason
from tests.fixtures.packets import EGRESS_IFINDEX, TEST_IFINDEX
from xdp.reasons import XdpAction
from xdp.records import FLOW_F_GWLB, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, FlowEntry, FlowKey

GWLB_IP, LOCAL_IP = "172.16.1.1", "172.16.1.2"
GWLB_MAC, LOCAL_MAC = "02:00:00:00:0b:01", "02:00:00:00:0b:02"
WORKLOAD, SERVER = "10.0.100.10", "198.51.100.10"
WORKLOAD6, SERVER6 = "fd00:100::10", "2001:db8::10"
GWLB_SPORT = 51234
AWS = 0x0108
ENDPOINT_ID = bytes.fromhex("0a1b2c3d4e5f6071")
ATTACHMENT_ID = bytes.fromhex("8899aabbccddeeff")
COOKIE = bytes.fromhex("c00c1e01")


def tlv(option_type: int, data: bytes, option_class: int = AWS) -> GeneveOptions:
    return GeneveOptions(classid=option_class, type=option_type, data=data)


AWS_TLVS = [tlv(1, ENDPOINT_ID), tlv(2, ATTACHMENT_ID), tlv(3, COOKIE)]


def outer(geneve: Packet, *, flags: int = 0) -> Packet:
    return (
        Ether(src=GWLB_MAC, dst=LOCAL_MAC)
        / IP(src=GWLB_IP, dst=LOCAL_IP, ttl=254, flags=flags)
        / UDP(sport=GWLB_SPORT, dport=6081, chksum=0)
        / geneve
    )


def decapped(inner: Packet) -> Packet:
    etype = 0x86DD if inner.haslayer(IPv6) else 0x0800
    return Ether(src=GWLB_MAC, dst=LOCAL_MAC, type=etype) / inner


TCP_SYN = IP(src=WORKLOAD, dst=SERVER) / TCP(sport=40000, dport=80, flags="S", seq=1)
UDP_DNS = IP(src=WORKLOAD, dst=SERVER) / UDP(sport=40001, dport=53) / Raw(b"q" * 20)
PING = IP(src=WORKLOAD, dst=SERVER) / ICMP(type=8, id=0x77, seq=1)
TCP6 = IPv6(src=WORKLOAD6, dst=SERVER6) / TCP(sport=40002, dport=443, flags="S")


@dataclass(frozen=True, slots=True)
class GeneveCase:
    name: str
    packet: Packet
    action: XdpAction
    reason: GwlbReason
    inner: Packet | None = None  # expected output = decapped(inner) when decapsulated

    def input_bytes(self) -> bytes:
        return bytes(self.packet)

    def expected_bytes(self) -> bytes:
        if self.inner is not None:
            return bytes(decapped(self.inner))
        return self.input_bytes()


def _ok(name: str, inner: Packet, options: list[GeneveOptions] | None = None) -> GeneveCase:
    proto = 0x86DD if inner.haslayer(IPv6) else 0x0800
    pkt = outer(GENEVE(proto=proto, options=AWS_TLVS if options is None else options) / inner)
    reason = GwlbReason.DECAP_IPV6 if proto == 0x86DD else GwlbReason.DECAP
    return GeneveCase(name, pkt, XdpAction.PASS, reason, inner)


def _drop(name: str, packet: Packet, reason: GwlbReason) -> GeneveCase:
    return GeneveCase(name, packet, XdpAction.DROP, reason)


def _g(options: list[GeneveOptions], inner: Packet = TCP_SYN, **kw: Any) -> Packet:
    return outer(GENEVE(proto=0x0800, options=options, **kw) / inner)


CASES: tuple[GeneveCase, ...] = (
    # --- accepted layouts ------------------------------------------------------------
    _ok("aws_order_1_2_3_tcp", TCP_SYN),
    _ok("aws_order_3_2_1", UDP_DNS, [tlv(3, COOKIE), tlv(2, ATTACHMENT_ID), tlv(1, ENDPOINT_ID)]),
    _ok("extra_noncritical_first", PING, [tlv(0x10, b"\0" * 8, 0x0101), *AWS_TLVS]),
    _ok(
        "extra_noncritical_between",
        TCP_SYN,
        [tlv(1, ENDPOINT_ID), tlv(0x7F, b"", 0xFFFF), tlv(2, ATTACHMENT_ID), tlv(3, COOKIE)],
    ),
    _ok("aws_unknown_type_noncritical", TCP_SYN, [*AWS_TLVS, tlv(4, b"\1\2\3\4")]),
    _ok("eight_options", TCP_SYN, [*AWS_TLVS, *[tlv(0x20 + i, b"", 0x0101) for i in range(5)]]),
    _ok("inner_ipv6_to_kernel", TCP6),
    # --- the critical bit -----------------------------------------------------------
    _drop(
        "critical_unknown_class",
        _g([*AWS_TLVS, tlv(0x81, b"\0" * 4, 0x0101)]),
        GwlbReason.DROP_CRITICAL_OPTION,
    ),
    _drop(
        "critical_aws_unknown_type",
        _g([tlv(0x84, b""), *AWS_TLVS]),
        GwlbReason.DROP_CRITICAL_OPTION,
    ),
    # --- missing / malformed options ------------------------------------------------
    _drop("missing_cookie", _g(AWS_TLVS[:2]), GwlbReason.DROP_MISSING_OPTION),
    _drop("missing_endpoint", _g(AWS_TLVS[1:]), GwlbReason.DROP_MISSING_OPTION),
    _drop("no_options", _g([]), GwlbReason.DROP_MISSING_OPTION),
    _drop(
        "cookie_wrong_size", _g([*AWS_TLVS[:2], tlv(3, COOKIE + COOKIE)]), GwlbReason.DROP_MALFORMED
    ),
    _drop("option_past_opt_len", _g(AWS_TLVS, optionlen=7), GwlbReason.DROP_MALFORMED),
    _drop(
        "nine_options",
        _g([*AWS_TLVS, *[tlv(0x20 + i, b"", 0x0101) for i in range(6)]]),
        GwlbReason.DROP_MALFORMED,
    ),
    # --- header fields --------------------------------------------------------------
    _drop("version_1", _g(AWS_TLVS, version=1), GwlbReason.DROP_BAD_VERSION),
    _drop("oam_bit", _g(AWS_TLVS, oam=1), GwlbReason.DROP_OAM),
    _drop(
        "inner_ethernet",
        outer(GENEVE(proto=0x6558, options=AWS_TLVS) / Ether() / TCP_SYN),
        GwlbReason.DROP_BAD_PROTO,
    ),
    _drop(
        "outer_fragment",
        outer(GENEVE(proto=0x0800, options=AWS_TLVS) / TCP_SYN, flags=1),
        GwlbReason.DROP_OUTER_FRAGMENT,
    ),
    # --- truncation -----------------------------------------------------------------
    _drop(
        "truncated_base_header",
        outer(Raw(bytes(GENEVE(proto=0x0800))[:5])),
        GwlbReason.DROP_TRUNCATED,
    ),
    _drop(
        "truncated_options",
        outer(Raw(bytes(GENEVE(proto=0x0800, options=AWS_TLVS))[:30])),
        GwlbReason.DROP_TRUNCATED,
    ),
    _drop(
        "truncated_inner",
        outer(GENEVE(proto=0x0800, options=AWS_TLVS) / Raw(b"\x45" * 12)),
        GwlbReason.DROP_TRUNCATED,
    ),
    # --- not GENEVE: untouched to the kernel ----------------------------------------
    GeneveCase(
        "udp_not_6081",
        Ether(src=GWLB_MAC, dst=LOCAL_MAC)
        / IP(src=GWLB_IP, dst=LOCAL_IP)
        / UDP(sport=6081, dport=53),
        XdpAction.PASS,
        GwlbReason.PASS_NOT_GENEVE,
    ),
    GeneveCase(
        "health_check_syn",
        Ether(src=GWLB_MAC, dst=LOCAL_MAC)
        / IP(src=GWLB_IP, dst=LOCAL_IP)
        / TCP(sport=33333, dport=8081, flags="S"),
        XdpAction.PASS,
        GwlbReason.PASS_NOT_GENEVE,
    ),
    GeneveCase(
        "arp",
        Ether(src=GWLB_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(psrc=GWLB_IP, pdst=LOCAL_IP),
        XdpAction.PASS,
        GwlbReason.PASS_NOT_GENEVE,
    ),
)

CASES_BY_NAME = {c.name: c for c in CASES}


# --- two-arm flows on the fast path (test_fastpath*.py) --------------------------------
# The kernel NATs WORKLOAD:WL_PORT to PUBLIC:NAT_PORT (ICMP: identifier ICMP_ID ->
# NAT_ICMP_ID); the outside next hop is UPSTREAM_MAC.

PUBLIC = "203.0.113.7"
OUT_MAC, UPSTREAM_MAC = "02:00:00:00:02:02", "02:00:00:00:00:fe"
NAT_PORT, WL_PORT, ICMP_ID, NAT_ICMP_ID = 61000, 40000, 0x77, 0x4242
SERVICE_PORT = {IPPROTO_TCP: 80, IPPROTO_UDP: 53, IPPROTO_ICMP: 0}


def l4_of(proto: int, *, reply: bool, nat: bool) -> Packet:
    """The L4 header of the flow; ``reply``: server -> workload; ``nat``: the public side."""
    port = NAT_PORT if nat else WL_PORT
    if proto == IPPROTO_ICMP:
        return ICMP(type=0 if reply else 8, id=NAT_ICMP_ID if nat else ICMP_ID, seq=3)
    sport, dport = (SERVICE_PORT[proto], port) if reply else (port, SERVICE_PORT[proto])
    if proto == IPPROTO_TCP:
        return TCP(sport=sport, dport=dport, flags="A", seq=5, ack=9) / Raw(b"data")
    return UDP(sport=sport, dport=dport) / Raw(b"answer" if reply else b"query")


def workload_packet(proto: int, ttl: int = 64) -> Packet:
    return IP(src=WORKLOAD, dst=SERVER, ttl=ttl, id=7) / l4_of(proto, reply=False, nat=False)


def server_packet(proto: int, *, natted: bool, ttl: int = 50) -> Packet:
    dst = PUBLIC if natted else WORKLOAD
    return IP(src=SERVER, dst=dst, ttl=ttl, id=9) / l4_of(proto, reply=True, nat=natted)


def geneve_in(inner: Packet) -> bytes:
    return bytes(outer(GENEVE(proto=0x0800, options=AWS_TLVS) / inner))


def flows(proto: int) -> tuple[tuple[FlowKey, FlowEntry], tuple[FlowKey, FlowEntry]]:
    """Both directions as the offloader installs a GWLB flow (kernel mapping WL_PORT ->
    NAT_PORT; ICMP: identifier ICMP_ID -> NAT_ICMP_ID)."""
    wl, srv, pub = IPv4Address(WORKLOAD), IPv4Address(SERVER), IPv4Address(PUBLIC)
    if proto == IPPROTO_ICMP:
        out_key = FlowKey.icmp_echo(TEST_IFINDEX, wl, srv, ICMP_ID)
        back_key = FlowKey.icmp_echo(TEST_IFINDEX, srv, pub, NAT_ICMP_ID)
        out = FlowEntry(pub, srv, NAT_ICMP_ID, 0, EGRESS_IFINDEX, OUT_MAC, UPSTREAM_MAC)
        back = FlowEntry(
            srv, wl, ICMP_ID, 0, EGRESS_IFINDEX, LOCAL_MAC, GWLB_MAC, flags=FLOW_F_GWLB
        )
        return (out_key, out), (back_key, back)
    port = SERVICE_PORT[proto]
    out_key = FlowKey(TEST_IFINDEX, wl, srv, WL_PORT, port, proto)
    back_key = FlowKey(TEST_IFINDEX, srv, pub, port, NAT_PORT, proto)
    out = FlowEntry(pub, srv, NAT_PORT, port, EGRESS_IFINDEX, OUT_MAC, UPSTREAM_MAC)
    back = FlowEntry(srv, wl, port, WL_PORT, EGRESS_IFINDEX, LOCAL_MAC, GWLB_MAC, flags=FLOW_F_GWLB)
    return (out_key, out), (back_key, back)
