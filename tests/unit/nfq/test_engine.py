"""The built-in engine on scapy-built packets: content semantics, Hyperscan candidates,
HTTP / TLS / DNS buffers, TCP reassembly, flow direction, verdicts, bypass, thresholds,
alerts as eve.json records."""

from __future__ import annotations

import json
from typing import Any

import pytest
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.tls.extensions import ServerName, TLS_Ext_ServerName
from scapy.layers.tls.handshake import TLSClientHello
from scapy.layers.tls.record import TLS

from nfq.engine import Decision, Inspector, Ruleset, load_rules
from nfq.engine.eve import alert_record
from nfq.engine.matcher import match_contents
from nfq.engine.packet import parse
from nfq.engine.reject import checksum, icmp_unreachable, tcp_rst
from nfq.engine.rules import Content

C, S = ("10.0.1.10", 40000), ("198.51.100.10", 80)


class Conn:
    """A TCP connection driven through an inspector, with real sequence numbers."""

    def __init__(
        self, ins: Inspector, client: tuple[str, int] = C, server: tuple[str, int] = S
    ) -> None:
        self.ins, self.c, self.s = ins, client, server
        self.cseq, self.sseq = 1000, 5000

    def pkt(
        self, to_server: bool, flags: str, data: bytes = b"", seq: int | None = None
    ) -> Decision:
        src, dst = (self.c, self.s) if to_server else (self.s, self.c)
        mine = self.cseq if to_server else self.sseq
        theirs = self.sseq if to_server else self.cseq
        raw = bytes(IP(src=src[0], dst=dst[0]) / TCP(sport=src[1], dport=dst[1], flags=flags,
                    seq=mine if seq is None else seq, ack=theirs) / data)  # fmt: skip
        if seq is None:
            step = len(data) + (1 if "S" in flags else 0)
            if to_server:
                self.cseq += step
            else:
                self.sseq += step
        return self.ins.inspect(raw)

    def handshake(self) -> None:
        assert self.pkt(True, "S") is Decision.ACCEPT
        assert self.pkt(False, "SA") is Decision.ACCEPT
        assert self.pkt(True, "A") is Decision.ACCEPT


def inspector(*rules: str, depth: int = 0) -> tuple[Inspector, list[dict[str, Any]]]:
    alerts: list[dict[str, Any]] = []
    ins = Inspector(
        Ruleset.build(load_rules(rules)),
        stream_depth=depth,
        alert=lambda r, p, f, b, t: alerts.append(alert_record(r, p, f, b, t)),
    )
    return ins, alerts


@pytest.mark.parametrize(
    ("contents", "data", "hit"),
    [
        ([Content(b"abc", offset=2, depth=3)], b"xxabc", True),
        ([Content(b"abc", offset=3)], b"xxabc", False),
        ([Content(b"a"), Content(b"b", distance=0, within=1)], b"a-a-ab", True),
        ([Content(b"a"), Content(b"b", distance=1, within=2)], b"ab", False),
        ([Content(b"a"), Content(b"b", distance=1, within=2)], b"axb", True),
        ([Content(b"ABC", nocase=True)], b"xabc", True),
        ([Content(b"b"), Content(b"a", distance=-2, within=1)], b"ab", True),
    ],
)
def test_content_modifiers(contents: list[Content], data: bytes, hit: bool) -> None:
    assert match_contents(data, data.lower(), contents) is hit


def test_hyperscan_db_per_buffer_with_shared_patterns() -> None:
    rs = Ruleset.build(load_rules([
        'alert tcp any any -> any any (content:"shared"; sid:1;)',
        'alert tcp any any -> any any (content:"SHARED"; nocase; content:"x"; sid:2;)',
        'alert tls any any -> any any (tls.sni; content:"shared"; sid:3;)',
        'alert tcp any any -> any any (pcre:"/q+/"; sid:4;)',
    ]))  # fmt: skip
    assert set(rs.dbs) == {"payload", "tls.sni"}
    hits: set[int] = set()
    rs.dbs["payload"].scan(b"..Shared..", hits)
    assert rs.candidates("payload", hits) == {1}  # caseless id matched; rule 0 is exact
    assert not rs.complete(1, {"payload": hits})
    assert rs.contentless == {"tcp": (3,)}


def test_http_host_across_segments_drop_then_flow_stays_dropped() -> None:
    ins, alerts = inspector(
        'drop http any any -> any any (msg:"deny"; flow:established,'
        'to_server; http.host; content:"evil.example"; sid:1;)'
    )
    conn = Conn(ins)
    conn.handshake()
    req = b"GET /x HTTP/1.1\r\nHost: EVIL.example:8080\r\nAccept: */*\r\n\r\n"
    assert conn.pkt(True, "PA", req[:20]) is Decision.ACCEPT
    assert conn.pkt(True, "PA", req[20:]) is Decision.DROP
    assert conn.pkt(False, "A") is Decision.DROP  # the rest of the flow too
    assert alerts[0]["http"] == {"hostname": "evil.example", "url": "/x"}
    assert alerts[0]["alert"]["action"] == "blocked" and alerts[0]["src_port"] == 40000
    json.dumps(alerts[0])


def test_out_of_order_segment_is_reassembled() -> None:
    ins, alerts = inspector('alert tcp any any -> any any (msg:"m"; content:"needle"; sid:1;)')
    conn = Conn(ins)
    conn.handshake()
    start = conn.cseq
    assert conn.pkt(True, "PA", b"dle!", seq=start + 4) is Decision.ACCEPT
    assert not alerts
    assert conn.pkt(True, "PA", b"nee-", seq=start) is Decision.ACCEPT  # wrong bytes: no
    assert not alerts
    ins2, alerts2 = inspector('alert tcp any any -> any any (msg:"m"; content:"needle"; sid:1;)')
    conn2 = Conn(ins2)
    conn2.handshake()
    s2 = conn2.cseq
    conn2.pkt(True, "PA", b"dle!", seq=s2 + 3)
    conn2.pkt(True, "PA", b"nee", seq=s2)
    assert [a["alert"]["signature_id"] for a in alerts2] == [1]


def test_direction_and_established() -> None:
    ins, alerts = inspector(
        'alert tcp any any -> any any (msg:"to client"; flow:to_client; content:"200 OK"; sid:1;)',
        'alert tcp any any -> any any (msg:"est"; flow:established; content:"early"; sid:2;)',
    )
    conn = Conn(ins)
    assert conn.pkt(True, "S") is Decision.ACCEPT
    conn.pkt(False, "SA")
    conn.pkt(True, "PA", b"early 200 OK")  # not to_client; established after SA + ACK
    assert [a["alert"]["signature_id"] for a in alerts] == [2]
    conn.pkt(False, "PA", b"HTTP/1.1 200 OK\r\n")
    assert [a["alert"]["signature_id"] for a in alerts] == [2, 1]


def test_tls_sni_and_reject() -> None:
    ins, alerts = inspector(
        'reject tls any any -> any 443 (msg:"sni"; tls.sni; content:"blocked.example"; sid:7;)'
    )
    conn = Conn(ins, server=("198.51.100.10", 443))
    conn.handshake()
    hello = bytes(TLS(msg=[TLSClientHello(ext=[TLS_Ext_ServerName(
        servernames=[ServerName(servername=b"www.blocked.example")])])]))  # fmt: skip
    assert conn.pkt(True, "PA", hello) is Decision.REJECT
    assert alerts[0]["tls"] == {"sni": "www.blocked.example"} and alerts[0]["app_proto"] == "tls"


def test_dns_query_rule_and_threshold() -> None:
    ins, alerts = inspector(
        'alert dns any any -> any 53 (msg:"q"; dns.query; content:"tracker";'
        " threshold: type limit, track by_src, count 2, seconds 60; sid:3;)"
    )
    for sport in range(5):
        raw = bytes(IP(src="10.0.1.10", dst="198.51.100.10") / UDP(sport=30000 + sport, dport=53)
                    / DNS(rd=1, qd=DNSQR(qname="a.tracker.example")))  # fmt: skip
        assert ins.inspect(raw) is Decision.ACCEPT
    assert len(alerts) == 2 and ins.counters["alerts_thresholded"] == 3
    assert alerts[0]["dns"]["query"][0]["rrname"] == "a.tracker.example"


def test_pass_rule_and_stream_depth_bypass() -> None:
    ins, alerts = inspector(
        'pass tcp any any -> any 5201 (msg:"trusted"; sid:1;)',
        'alert tcp any any -> any any (msg:"late"; content:"late-needle"; sid:2;)',
        depth=100,
    )
    trusted = Conn(ins, server=("198.51.100.10", 5201))
    assert trusted.pkt(True, "S") is Decision.BYPASS
    conn = Conn(ins)
    conn.handshake()
    assert conn.pkt(False, "PA", b"x" * 60) is Decision.ACCEPT
    assert conn.pkt(False, "PA", b"x" * 60) is Decision.BYPASS  # 120 B > depth 100
    assert conn.pkt(False, "PA", b"late-needle") is Decision.BYPASS
    assert not alerts and ins.counters["bypassed_depth"] == 1


def test_no_rule_for_the_protocol_bypasses_at_once_and_pass_beats_drop() -> None:
    ins, _ = inspector('drop tcp any any -> any any (msg:"all"; content:"x"; sid:1;)')
    icmp = bytes(IP(src="10.0.1.10", dst="198.51.100.10") / ICMP())
    assert ins.inspect(icmp) is Decision.BYPASS
    ins, alerts = inspector(
        'drop udp any any -> any any (msg:"d"; content:"x"; sid:1;)',
        'pass udp any any <> any 9 (msg:"p"; content:"x"; sid:2;)',
    )
    raw = bytes(IP(src="10.0.1.10", dst="198.51.100.10") / UDP(sport=9, dport=4000) / b"x")
    assert ins.inspect(raw) is Decision.BYPASS and not alerts  # <> matched the reverse


def test_reject_packets_are_valid() -> None:
    syn = parse(
        bytes(
            IP(src="10.0.1.10", dst="1.2.3.4")
            / TCP(sport=5, dport=80, flags="PA", seq=10, ack=20)
            / b"abc"
        )
    )
    assert syn is not None
    rst = IP(tcp_rst(syn))
    assert rst.src == "1.2.3.4" and rst[TCP].flags == "RA" and rst[TCP].seq == 20
    assert rst[TCP].ack == 13
    assert checksum(tcp_rst(syn)[:20]) == 0
    udp = parse(bytes(IP(src="10.0.1.10", dst="1.2.3.4") / UDP(sport=5, dport=53) / b"q"))
    assert udp is not None
    icmp = IP(icmp_unreachable(udp))
    assert icmp[ICMP].type == 3 and icmp[ICMP].code == 3 and icmp.dst == "10.0.1.10"


def test_garbage_is_accepted_uninspected() -> None:
    ins, _ = inspector('drop ip any any -> any any (msg:"all"; sid:1;)')
    for raw in (b"", b"\x60" + b"\0" * 40, b"\x45\0\0\x14" + b"\0" * 5):
        assert ins.inspect(raw) is Decision.ACCEPT
    assert ins.counters["unparsed"] == 3
