"""Fuzz the two-arm GWLB fast path (``xdp_gwlb`` linked to ``xdp_gateway``) with the
mutations of tests/bpf/test_fuzz.py, applied to GENEVE frames from the GWLB and to
server replies on the outside.

Every frame gets a defined verdict; a redirected forward frame is a plain translated
IPv4 packet of an installed flow; a redirected reply is a GENEVE packet the codec
(``geneve.decapsulate``) accepts, carrying a header stored for the flow, whose inner
packet is translated, has a valid IPv4 checksum, a decremented TTL and an L4 checksum
exactly as valid as the input's; anything ``xdp_gateway`` does not redirect leaves it
unmodified.  SPECTRA_FUZZ_N / SPECTRA_FUZZ_SEED as in test_fuzz.py.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from geneve import Gwlb, decapsulate
from tests.bpf.geneve.cases import (
    OUT_MAC,
    UPSTREAM_MAC,
    flows,
    geneve_in,
    server_packet,
    workload_packet,
)
from tests.bpf.test_fuzz import (
    ETH_LEN,
    FUZZ_N,
    FUZZ_SEED,
    REFRESH_FLOWS_EVERY,
    internet_checksum_ok,
    l4_checksum_ok,
    mutations,
    output_tuple,
)
from xdp import Dataplane, Reason
from xdp.reasons import XdpAction
from xdp.records import IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP
from xdp.testrun import run

pytestmark = pytest.mark.bpf

PROTOCOLS = (IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP)
Tuple4 = tuple[bytes, bytes, int, int]  # (saddr, daddr, sport, dport) as output_tuple gives


def corpus(rng: random.Random) -> tuple[list[bytes], list[bytes]]:
    """(GENEVE frames from the GWLB, replies from the server) with random payloads."""
    forward, back = [], []
    for _ in range(100):
        proto = rng.choice(PROTOCOLS)
        payload = Raw(rng.randbytes(rng.randrange(0, 200)))
        forward.append(geneve_in(workload_packet(proto, ttl=rng.randrange(2, 256)) / payload))
        reply = server_packet(proto, natted=True, ttl=rng.randrange(2, 256)) / payload
        back.append(bytes(Ether(src=UPSTREAM_MAC, dst=OUT_MAC) / reply))
    return forward, back


def install(dp: Dataplane) -> None:
    for proto in PROTOCOLS:
        for key, entry in flows(proto):
            dp.add_flow(key, entry)


def allowed_tuples() -> set[Tuple4]:
    return {
        (e.new_saddr.packed, e.new_daddr.packed, e.new_sport, e.new_dport)
        for proto in PROTOCOLS
        for _, e in flows(proto)
    }


def check_reply(frame_in: bytes, frame_out: bytes, gwlb: Gwlb, allowed: set[Tuple4]) -> None:
    assert frame_out[12:14] == b"\x08\x00"
    outer_ip = frame_out[ETH_LEN:]
    assert internet_checksum_ok(outer_ip[:20]), "bad outer IPv4 checksum"
    model = decapsulate(outer_ip)  # raises on anything the codec would not accept
    assert model.header.raw in {h.header for h in gwlb.maps.flows()}, "header not stored"
    inner = frame_out[:12] + b"\x08\x00" + model.inner
    assert internet_checksum_ok(model.inner[:20]), "bad inner IPv4 checksum"
    assert model.inner[8] == frame_in[ETH_LEN + 8] - 1, "TTL not decremented by one"
    assert output_tuple(inner) in allowed, "untranslated tuple sent to the GWLB"
    assert l4_checksum_ok(inner) == l4_checksum_ok(frame_in), "L4 checksum validity changed"


def check_forward(frame_out: bytes, allowed: set[Tuple4]) -> None:
    assert frame_out[12:14] == b"\x08\x00" and frame_out[ETH_LEN] == 0x45
    assert internet_checksum_ok(frame_out[ETH_LEN : ETH_LEN + 20]), "bad IPv4 checksum"
    assert output_tuple(frame_out) in allowed, "untranslated tuple left the fast path"


def test_fuzz_gwlb_fast_path(linked: tuple[Gwlb, Dataplane]) -> None:
    gwlb, dp = linked
    rng = random.Random(FUZZ_SEED)
    forward, back = corpus(rng)
    allowed = allowed_tuples()
    streams = {"xdp_gwlb": mutations(rng, forward), "xdp_gateway": mutations(rng, back)}
    actions: Counter[tuple[str, XdpAction]] = Counter()

    for index in range(FUZZ_N):
        if index % REFRESH_FLOWS_EVERY == 0:
            install(dp)  # FIN/RST mutations mark flows closing
            for frame in forward[:20]:
                run(gwlb.program_fd("xdp_gwlb"), frame)  # (re)store valid headers
        program = "xdp_gwlb" if index % 2 else "xdp_gateway"
        frame = next(streams[program])
        fd = gwlb.program_fd(program) if program == "xdp_gwlb" else dp.program_fd()
        result = run(fd, frame)
        actions[(program, result.action)] += 1
        where = f"seed {FUZZ_SEED} frame {index} ({program})"
        assert result.action in (XdpAction.PASS, XdpAction.DROP, XdpAction.REDIRECT), where
        try:
            if result.action == XdpAction.REDIRECT and program == "xdp_gwlb":
                check_forward(result.data_out, allowed)
            elif result.action == XdpAction.REDIRECT:
                check_reply(frame, result.data_out, gwlb, allowed)
            elif program == "xdp_gateway":
                assert result.data_out == frame, "non-redirect frame modified"
        except (AssertionError, ValueError) as exc:
            raise AssertionError(
                f"{where}: {exc}\nin  {frame.hex()}\nout {result.data_out.hex()}"
            ) from exc

    assert actions[("xdp_gwlb", XdpAction.REDIRECT)] > 0, actions
    assert actions[("xdp_gateway", XdpAction.REDIRECT)] > 0, actions
    hit = {n for n, c in dp.counters()["reasons"].items() if c["packets"]}
    assert Reason.REDIRECT_GWLB.name in hit, sorted(hit)
