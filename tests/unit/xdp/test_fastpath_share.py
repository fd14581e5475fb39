"""The fast path's share of each flow, from the offloader's removal to the flow log's
record (no privileges): counters of both directions settled before the pair is deleted,
added up over re-offloads, ``PENDING`` while the flow is on the fast path, bounded."""

from __future__ import annotations

from dataclasses import replace

from tests.unit.xdp.test_offload_events import INSIDE, OUTSIDE, T0, S, make, tcp, udp
from xdp.fastpath_share import ETH_HLEN, PENDING, FastpathShares, Share
from xdp.offload import flow_keys


def _forwarded(table: object, ct: object, fwd: tuple[int, int], back: tuple[int, int]) -> None:
    out_key, back_key = flow_keys(ct, INSIDE, OUTSIDE)  # type: ignore[arg-type]
    entries = table.entries  # type: ignore[attr-defined]
    entries[out_key] = replace(entries[out_key], packets=fwd[0], bytes=fwd[1])
    entries[back_key] = replace(entries[back_key], packets=back[0], bytes=back[1])


def test_a_removed_pair_hands_its_counters_to_the_flow_log() -> None:
    off, table, kernel = make()
    shares = off.shares = FastpathShares()
    shares.enabled = True
    kernel.emit("update", udp(40000))
    off.step(T0)
    assert shares.take(udp(40000).key) is PENDING, "on the fast path: not settled yet"
    _forwarded(table, udp(40000), (10, 10 * 114), (8, 8 * 1014))
    kernel.emit("destroy", udp(40000))
    off.step(T0 + S)
    got = shares.take(udp(40000).key)
    assert got == Share(10, 10 * 100, 8, 8 * 1000), "IP bytes, the Ethernet header off"
    assert shares.take(udp(40000).key) == Share(), "taken once"
    assert len(shares) == 0


def test_a_flow_offloaded_twice_adds_up_and_tcp_fin_settles_before_destroy() -> None:
    off, table, kernel = make()
    shares = off.shares = FastpathShares()
    shares.enabled = True
    kernel.emit("update", tcp())
    off.step(T0)
    _forwarded(table, tcp(), (3, 3 * (ETH_HLEN + 60)), (2, 2 * (ETH_HLEN + 60)))
    kernel.emit("update", tcp(state=5))  # CLOSE_WAIT: the kernel owns the teardown
    off.step(T0 + S)
    assert not off.tracked
    assert shares.take(tcp().key) == Share(3, 180, 2, 120)


def test_without_a_flow_log_nothing_is_kept() -> None:
    off, _, kernel = make()
    shares = off.shares = FastpathShares()
    kernel.emit("update", udp(40000))
    off.step(T0)
    kernel.emit("destroy", udp(40000))
    off.step(T0 + S)
    assert len(shares) == 0


def test_settled_shares_are_bounded_oldest_first() -> None:
    shares = FastpathShares(capacity=2)
    for port in (1, 2, 3):
        shares.removed(udp(port).key, Share(port, 0, 0, 0))
    assert shares.evicted == 1 and len(shares) == 2
    assert shares.take(udp(1).key) == Share() and shares.take(udp(3).key) == Share(3, 0, 0, 0)
