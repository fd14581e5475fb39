"""Fuzz xdp_gateway through BPF_PROG_TEST_RUN with random and mutated frames.

Every frame must get a defined verdict (PASS, DROP or REDIRECT), and every REDIRECTed
frame must carry a valid IPv4 header checksum, a decremented TTL, a tuple translated
to one of the installed flow entries, and an L4 checksum exactly as valid as the
input's (an incremental update preserves validity: the fast path, like any router,
does not repair or verify end-to-end checksums).  Checksums are verified with scapy's
``checksum``.

SPECTRA_FUZZ_N sets the number of frames (default 20000, e.g. 1000000 for a long
run); SPECTRA_FUZZ_SEED the seed (default fixed, printed on failure).
"""

from __future__ import annotations

import os
import random
import struct
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
from scapy.layers.inet import ICMP, TCP, UDP
from scapy.utils import checksum

from tests.bpf.conftest import install
from tests.fixtures.packets import (
    ALL_FLOWS,
    CASES,
    DENY_RULES,
    from_client,
    from_server,
)
from xdp import Dataplane, Reason
from xdp.reasons import XdpAction
from xdp.testrun import run

pytestmark = pytest.mark.bpf

FUZZ_N = int(os.environ.get("SPECTRA_FUZZ_N", "20000"))
FUZZ_SEED = int(os.environ.get("SPECTRA_FUZZ_SEED", "1624"))
ETH_LEN = 14
REFRESH_FLOWS_EVERY = 256  # FIN/RST mutations mark flows closing; reinstall them
# Reachable only with GWLB return entries and linked GWLB maps: fuzzed in
# tests/bpf/geneve/test_fastpath_fuzz.py.
GWLB_REASONS = {Reason.PASS_GWLB_NO_HEADER, Reason.REDIRECT_GWLB, Reason.DROP_GWLB_ENCAP}


def valid_hits(rng: random.Random, count: int) -> list[bytes]:
    """Well-formed frames of the installed flows with random non-key fields."""
    frames = []
    for _ in range(count):
        payload = rng.randbytes(rng.randrange(0, 300))
        ttl = rng.randrange(2, 256)
        choice = rng.randrange(5)
        if choice == 0:
            l4 = TCP(
                sport=40000,
                dport=443,
                flags=rng.choice(["A", "PA", "U", "AE"]),
                seq=rng.getrandbits(32),
            )
            frames.append(bytes(from_client(l4 / payload, ttl=ttl)))
        elif choice == 1:
            l4 = TCP(sport=443, dport=61000, flags="A", window=rng.getrandbits(16))
            frames.append(bytes(from_server(l4 / payload, ttl=ttl)))
        elif choice == 2:
            udp = (
                UDP(sport=40000, dport=53)
                if rng.random() < 0.8
                else UDP(sport=40000, dport=53, chksum=0)
            )
            frames.append(bytes(from_client(udp / payload, ttl=ttl)))
        elif choice == 3:
            frames.append(
                bytes(
                    from_client(ICMP(type=8, id=0x1234, seq=rng.getrandbits(16)) / payload, ttl=ttl)
                )
            )
        else:
            frames.append(bytes(from_server(ICMP(type=0, id=0x9A9A) / payload, ttl=ttl)))
    return frames


def mutations(rng: random.Random, corpus: list[bytes]) -> Iterator[bytes]:
    """An endless stream of fuzz frames, each at least an Ethernet header long."""

    def flip_bits(frame: bytes) -> bytes:
        buf = bytearray(frame)
        for _ in range(rng.randrange(1, 9)):
            bit = rng.randrange(len(buf) * 8)
            buf[bit // 8] ^= 1 << (bit % 8)
        return bytes(buf)

    def truncate(frame: bytes) -> bytes:
        return frame[: rng.randrange(ETH_LEN, len(frame) + 1)]

    def extend(frame: bytes) -> bytes:
        return frame + rng.randbytes(rng.randrange(1, 64))

    def random_frame(_: bytes) -> bytes:
        ethertype = rng.choice(
            [b"\x08\x00", b"\x81\x00", b"\x88\xa8", b"\x86\xdd", rng.randbytes(2)]
        )
        return rng.randbytes(12) + ethertype + rng.randbytes(rng.randrange(0, 120))

    # (offset, width) of header fields in an untagged IPv4 frame.
    fields = [
        (12, 2),
        (14, 1),
        (16, 2),
        (20, 2),
        (22, 1),
        (23, 1),
        (34, 4),
        (36, 2),
        (38, 2),
        (46, 2),
        (47, 1),
    ]

    def random_field(frame: bytes) -> bytes:
        offset, width = rng.choice(fields)
        if offset + width > len(frame):
            return frame
        return frame[:offset] + rng.randbytes(width) + frame[offset + width :]

    def valid(frame: bytes) -> bytes:
        return frame

    kinds: list[Callable[[bytes], bytes]] = [
        flip_bits,
        truncate,
        extend,
        random_frame,
        random_field,
        random_field,
        valid,
    ]
    while True:
        yield rng.choice(kinds)(rng.choice(corpus))


def internet_checksum_ok(data: bytes) -> bool:
    return checksum(data) == 0


def l4_checksum_ok(frame: bytes) -> bool:
    """Validity of the L4 checksum of an untagged, option-less IPv4 frame."""
    ip = frame[ETH_LEN : ETH_LEN + 20]
    tot_len = struct.unpack("!H", ip[2:4])[0]
    proto = ip[9]
    l4 = frame[ETH_LEN + 20 : ETH_LEN + tot_len]
    if proto == 1:
        return internet_checksum_ok(l4)
    if proto == 17 and l4[6:8] == b"\x00\x00":
        return True  # no checksum (RFC 768)
    pseudo = ip[12:20] + bytes([0, proto]) + struct.pack("!H", len(l4))
    return internet_checksum_ok(pseudo + l4)


def translated_tuples() -> set[tuple[bytes, bytes, int, int]]:
    """What may leave: the translation of every flow installed (every case's too)."""
    out = set()
    for flow in (*ALL_FLOWS, *(f for case in CASES for f in case.flows)):
        e = flow.entry
        out.add((e.new_saddr.packed, e.new_daddr.packed, e.new_sport, e.new_dport))
    return out


def output_tuple(frame: bytes) -> tuple[bytes, bytes, int, int]:
    ip = frame[ETH_LEN : ETH_LEN + 20]
    l4 = frame[ETH_LEN + 20 :]
    if ip[9] == 1:
        return (ip[12:16], ip[16:20], struct.unpack("!H", l4[4:6])[0], 0)
    sport, dport = struct.unpack("!HH", l4[:4])
    return (ip[12:16], ip[16:20], sport, dport)


def check_redirect(
    frame_in: bytes, frame_out: bytes, allowed: set[tuple[bytes, bytes, int, int]]
) -> None:
    ip_out = frame_out[ETH_LEN : ETH_LEN + 20]
    assert frame_out[12:14] == b"\x08\x00" and ip_out[0] == 0x45, (
        "redirected a non-plain IPv4 frame"
    )
    assert internet_checksum_ok(ip_out), "bad IPv4 header checksum after rewrite"
    assert ip_out[8] == frame_in[ETH_LEN + 8] - 1, "TTL not decremented by one"
    assert output_tuple(frame_out) in allowed, "untranslated tuple left the fast path"
    assert l4_checksum_ok(frame_out) == l4_checksum_ok(frame_in), "L4 checksum validity changed"


def test_fuzz_frames_get_defined_verdicts_and_valid_rewrites(dataplane: Dataplane) -> None:
    rng = random.Random(FUZZ_SEED)
    corpus = [case.input_bytes() for case in CASES if len(case.input_bytes()) >= ETH_LEN]
    corpus += valid_hits(rng, 200)
    for case in CASES:
        install(dataplane, case)  # the union of every case's deny rules / flows
    dataplane.set_deny_rules(DENY_RULES)
    allowed = translated_tuples()
    prog_fd = dataplane.program_fd()
    actions: Counter[XdpAction] = Counter()
    frames = mutations(rng, corpus)

    for index in range(FUZZ_N):
        if index % REFRESH_FLOWS_EVERY == 0:
            for flow in ALL_FLOWS:
                dataplane.add_flow(flow.key, flow.entry)
        frame = next(frames)
        result = run(prog_fd, frame)
        actions[result.action] += 1
        assert result.action in (XdpAction.PASS, XdpAction.DROP, XdpAction.REDIRECT), (
            f"seed {FUZZ_SEED} frame {index}: {result.action!r} for {frame.hex()}"
        )
        if result.action == XdpAction.REDIRECT:
            try:
                check_redirect(frame, result.data_out, allowed)
            except AssertionError as exc:
                raise AssertionError(
                    f"seed {FUZZ_SEED} frame {index}: {exc}\n"
                    f"in  {frame.hex()}\nout {result.data_out.hex()}"
                ) from exc
        else:
            assert result.data_out == frame, (
                f"seed {FUZZ_SEED} frame {index}: non-redirect frame modified"
            )

    reasons_hit = {name for name, c in dataplane.counters()["reasons"].items() if c["packets"]}
    assert sum(actions.values()) == FUZZ_N
    assert min(actions[a] for a in (XdpAction.PASS, XdpAction.DROP, XdpAction.REDIRECT)) > 0, (
        actions
    )
    assert len(reasons_hit) >= len(Reason) - len(GWLB_REASONS) - 3, sorted(reasons_hit)
