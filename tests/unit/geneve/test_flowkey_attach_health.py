"""The symmetric flow key model, the attach plan (tc fallback detection) and the
health responder."""

from __future__ import annotations

import asyncio
import socket

from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP
from scapy.layers.inet6 import IPv6

from geneve import HealthResponder, InnerFlow
from geneve.attach import plan
from geneve.flowkey import KEY_SIZE


def test_key_is_symmetric_and_dir_tells_the_sender() -> None:
    out = InnerFlow.parse(
        bytes(IP(src="10.0.100.10", dst="198.51.100.10") / TCP(sport=40000, dport=80))
    )
    back = InnerFlow.parse(
        bytes(IP(src="198.51.100.10", dst="10.0.100.10") / TCP(sport=80, dport=40000))
    )
    assert out is not None and back is not None
    assert out.key()[0] == back.key()[0]
    assert out.key()[1] != back.key()[1]
    assert len(out.key_bytes()) == KEY_SIZE == 40


def test_icmp_echo_request_and_reply_share_a_key() -> None:
    req = InnerFlow.parse(bytes(IP(src="10.0.0.1", dst="10.0.0.2") / ICMP(type=8, id=7)))
    rep = InnerFlow.parse(bytes(IP(src="10.0.0.2", dst="10.0.0.1") / ICMP(type=0, id=7)))
    assert req is not None and rep is not None and req.key()[0] == rep.key()[0]


ports = st.integers(0, 65535)
v4 = st.ip_addresses(v=4).map(str)
v6 = st.ip_addresses(v=6).map(str)


@given(v4, v4, ports, ports)
def test_key_symmetry_property_v4(a: str, b: str, pa: int, pb: int) -> None:
    f = InnerFlow.parse(bytes(IP(src=a, dst=b) / TCP(sport=pa, dport=pb)))
    assert f is not None
    r = f.reversed()
    assert f.key()[0] == r.key()[0]
    if (f.saddr, f.sport) != (f.daddr, f.dport):
        assert f.key()[1] != r.key()[1]


@given(v6, v6, ports, ports)
def test_key_symmetry_property_v6(a: str, b: str, pa: int, pb: int) -> None:
    f = InnerFlow.parse(bytes(IPv6(src=a, dst=b) / TCP(sport=pa, dport=pb)))
    assert f is not None and f.key()[0] == f.reversed().key()[0]


def test_plan_reports_the_ena_limit_and_frags() -> None:
    assert plan("eth1", 8500, "ena").hook == "tc"
    assert "3498" in plan("eth1", 8500, "ena").reason
    assert plan("eth1", 3498, "ena").hook == "native"
    big = plan("eth1", 9001, "ixgbe")
    assert big.tc_fallback_needed and "xdp.frags" in big.reason
    assert plan("gwlb", 3000, "veth", native_ok=False).hook == "generic"
    assert plan("gwlb", 3000, "veth", native_ok=True).hook == "native"


def test_health_responder_http_and_tcp() -> None:
    async def scenario() -> tuple[bytes, bytes, bool]:
        state = {"ok": True}
        responder = HealthResponder("127.0.0.1", 0, healthy=lambda: state["ok"])
        await responder.start()
        try:
            r, w = await asyncio.open_connection("127.0.0.1", responder.port)
            w.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            first = await r.read()
            w.close()
            await w.wait_closed()
            state["ok"] = False
            r, w = await asyncio.open_connection("127.0.0.1", responder.port)
            w.write(b"GET / HTTP/1.1\r\n\r\n")
            second = await r.read()
            w.close()
            await w.wait_closed()
            loop = asyncio.get_running_loop()
            tcp_ok = await loop.run_in_executor(None, _tcp_connect, responder.port)
            await asyncio.sleep(0.05)  # let the handler of the bare TCP check finish
        finally:
            await responder.stop()
        return first, second, tcp_ok

    first, second, tcp_ok = asyncio.run(scenario())
    assert first.startswith(b"HTTP/1.1 200 OK")
    assert second.startswith(b"HTTP/1.1 503")
    assert tcp_ok


def _tcp_connect(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=2):
        return True


def test_health_responder_answers_only_its_path() -> None:
    """gwlb.health_check.path: the configured path gets 200, another one 404."""

    async def ask(port: int, request: bytes) -> bytes:
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(request)
        answer = await r.read()
        w.close()
        await w.wait_closed()
        return answer

    async def scenario() -> list[bytes]:
        responder = HealthResponder("127.0.0.1", 0, path="/ready")
        await responder.start()
        try:
            return [
                await ask(responder.port, b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n"),
                await ask(responder.port, b"GET /ready?probe=1 HTTP/1.1\r\n\r\n"),
                await ask(responder.port, b"GET /healthz HTTP/1.1\r\n\r\n"),
            ]
        finally:
            await responder.stop()

    ready, query, other = asyncio.run(scenario())
    assert ready.startswith(b"HTTP/1.1 200 OK") and query.startswith(b"HTTP/1.1 200 OK")
    assert other.startswith(b"HTTP/1.1 404 Not Found")
