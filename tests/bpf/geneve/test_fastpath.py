"""Two-arm GWLB flows on the XDP fast path, through BPF_PROG_TEST_RUN: ``xdp_gwlb``
linked to ``xdp_gateway`` (``Gwlb.link_fastpath``).

* forward: decap, then the flow-table hit NATs and redirects, as for native traffic;
* return: reverse NAT, re-encapsulated with the stored header, byte for byte what the
  codec (``geneve.encapsulate``) and ``tc_gwlb_encap`` build for the same reply;
* a miss or a flagged entry without a usable header: the kernel path, as before.

Both "interfaces" are lo here (BPF_PROG_TEST_RUN's ingress); the keys differ by tuple.
"""

from __future__ import annotations

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.l2 import Ether

from geneve import GeneveHeader, Gwlb, decapsulate, encapsulate
from geneve.testrun import TC_ACT_OK, run_tc
from tests.bpf.geneve.cases import (
    GWLB_IP,
    GWLB_MAC,
    GWLB_SPORT,
    LOCAL_IP,
    LOCAL_MAC,
    OUT_MAC,
    PUBLIC,
    SERVER,
    UPSTREAM_MAC,
    decapped,
    flows,
    geneve_in,
    l4_of,
    server_packet,
    workload_packet,
)
from tests.fixtures.packets import TEST_IFINDEX, layer_diff
from xdp import Dataplane
from xdp.records import IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP
from xdp.testrun import run

pytestmark = pytest.mark.bpf


def reasons(dp: Dataplane) -> dict[str, int]:
    return {n: c["packets"] for n, c in dp.counters()["reasons"].items() if c["packets"]}


def stored_header(gwlb: Gwlb) -> GeneveHeader:
    (entry,) = gwlb.maps.flows()
    header, rest = GeneveHeader.decode(entry.header)
    assert rest == b""
    return header


def recomputed(frame: bytes) -> bytes:
    """``frame`` with every checksum recomputed by scapy (outer UDP 0 stays 0)."""
    pkt = Ether(frame)
    for layer in pkt.iterpayloads():
        if isinstance(layer, (IP, TCP, ICMP)) or (isinstance(layer, UDP) and layer.chksum):
            del layer.chksum
    return bytes(pkt)


@pytest.mark.parametrize("proto", [IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP])
def test_forward_decap_nat_redirect(linked: tuple[Gwlb, Dataplane], proto: int) -> None:
    gwlb, dp = linked
    (out_key, out), _ = flows(proto)
    dp.add_flow(out_key, out)

    result = run(gwlb.program_fd("xdp_gwlb"), geneve_in(workload_packet(proto)))

    expected = (
        Ether(src=OUT_MAC, dst=UPSTREAM_MAC)
        / IP(src=PUBLIC, dst=SERVER, ttl=63, id=7)
        / l4_of(proto, reply=False, nat=True)
    )
    assert result.action.name == "REDIRECT"
    assert result.data_out == bytes(expected), layer_diff(bytes(expected), result.data_out)
    assert recomputed(result.data_out) == result.data_out
    assert gwlb.counters()["DECAP"]["packets"] == 1
    assert reasons(dp) == {"REDIRECT": 1}
    entry = dp.flow(out_key)
    assert entry is not None and entry.packets == 1
    sent = decapsulate(bytes(Ether(geneve_in(workload_packet(proto)))[IP]))
    assert stored_header(gwlb).raw == sent.header.raw


@pytest.mark.parametrize("proto", [IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP])
@pytest.mark.parametrize("padded", [False, True], ids=["exact", "ethernet_padding"])
def test_return_reverse_nat_reencap_matches_codec_and_tc(
    linked: tuple[Gwlb, Dataplane], proto: int, padded: bool
) -> None:
    gwlb, dp = linked
    _, (back_key, back) = flows(proto)
    dp.add_flow(back_key, back)
    run(gwlb.program_fd("xdp_gwlb"), geneve_in(workload_packet(proto)))  # header stored (miss)
    header = stored_header(gwlb)
    dp.stats.clear()
    frame = bytes(Ether(src=UPSTREAM_MAC, dst=OUT_MAC) / server_packet(proto, natted=True))
    if padded:
        frame += b"\0" * max(6, 60 - len(frame))

    result = run(dp.program_fd(), frame)

    translated = bytes(server_packet(proto, natted=False, ttl=49))
    eth = bytes(Ether(src=LOCAL_MAC, dst=GWLB_MAC, type=0x0800))
    model = eth + encapsulate(translated, header, LOCAL_IP, GWLB_IP, GWLB_SPORT)
    assert result.action.name == "REDIRECT"
    assert result.data_out == model, layer_diff(model, result.data_out)
    # tc_gwlb_encap, given the reply the kernel would have translated, builds the same.
    tc = run_tc(gwlb.program_fd("tc_gwlb_encap"), eth + translated)
    assert tc.action == TC_ACT_OK and tc.data_out == result.data_out
    assert recomputed(result.data_out) == result.data_out
    assert reasons(dp) == {"REDIRECT_GWLB": 1}
    entry = dp.flow(back_key)
    assert entry is not None and entry.packets == 1


def test_forward_miss_takes_the_kernel_path_unchanged(linked: tuple[Gwlb, Dataplane]) -> None:
    gwlb, dp = linked
    inner = workload_packet(IPPROTO_TCP)

    result = run(gwlb.program_fd("xdp_gwlb"), geneve_in(inner))

    assert result.action.name == "PASS"
    assert result.data_out == bytes(decapped(inner))
    assert gwlb.counters()["DECAP"]["packets"] == 1
    assert reasons(dp) == {"PASS_NO_FLOW": 1}
    assert len(gwlb.maps.flows()) == 1  # the reply still finds its header at tc


def test_unlinked_decap_never_reaches_the_fast_path(gwlb: Gwlb, dataplane: Dataplane) -> None:
    (out_key, out), _ = flows(IPPROTO_TCP)
    dataplane.add_flow(out_key, out)
    inner = workload_packet(IPPROTO_TCP)

    result = run(gwlb.program_fd("xdp_gwlb"), geneve_in(inner))

    assert result.action.name == "PASS" and result.data_out == bytes(decapped(inner))
    assert reasons(dataplane) == {}
    assert not gwlb.maps.fastpath_linked() and dataplane.gwlb_ifindex() is None


@pytest.mark.parametrize("why", ["no_header", "expired", "unlinked"])
def test_flagged_return_without_usable_header_goes_to_the_kernel(
    linked: tuple[Gwlb, Dataplane], why: str
) -> None:
    gwlb, dp = linked
    _, (back_key, back) = flows(IPPROTO_TCP)
    dp.add_flow(back_key, back)
    if why != "no_header":
        run(gwlb.program_fd("xdp_gwlb"), geneve_in(workload_packet(IPPROTO_TCP)))
    if why == "expired":
        gwlb.idle_timeout = 0.5
        gwlb.configure(local_addr=LOCAL_IP)
        (stored,) = gwlb.maps.flows()
        gwlb.maps.age(stored.key, 0.6)
    if why == "unlinked":
        gwlb.unlink_fastpath(dp)
    dp.stats.clear()
    frame = bytes(Ether(src=UPSTREAM_MAC, dst=OUT_MAC) / server_packet(IPPROTO_TCP, natted=True))

    result = run(dp.program_fd(), frame)

    assert result.action.name == "PASS"
    assert result.data_out == frame  # untouched: the kernel reverse-NATs, tc decides
    assert reasons(dp) == {"PASS_GWLB_NO_HEADER": 1}
    entry = dp.flow(back_key)
    assert entry is not None and entry.packets == 0


def test_return_uses_a_header_refreshed_after_the_clock_read(
    linked: tuple[Gwlb, Dataplane],
) -> None:
    """Another CPU may store last_seen after this one read the clock: not expired."""
    gwlb, dp = linked
    _, (back_key, back) = flows(IPPROTO_TCP)
    dp.add_flow(back_key, back)
    run(gwlb.program_fd("xdp_gwlb"), geneve_in(workload_packet(IPPROTO_TCP)))
    (stored,) = gwlb.maps.flows()
    gwlb.maps.age(stored.key, -10)
    dp.stats.clear()
    frame = bytes(Ether(src=UPSTREAM_MAC, dst=OUT_MAC) / server_packet(IPPROTO_TCP, natted=True))

    result = run(dp.program_fd(), frame)

    assert result.action.name == "REDIRECT"
    assert reasons(dp) == {"REDIRECT_GWLB": 1}


def test_link_state_is_readable_from_the_pins(linked: tuple[Gwlb, Dataplane]) -> None:
    gwlb, dp = linked
    assert gwlb.maps.fastpath_linked()
    assert dp.gwlb_ifindex() == TEST_IFINDEX
    dp.set_deny_rules([])  # the deny list's generation flip keeps the link
    assert dp.gwlb_ifindex() == TEST_IFINDEX
