"""XDP deny drops as per-packet samples: the ``deny_samples`` ring buffer read.

The deny list drops in XDP, before netfilter, so the nftables NFLOG twins never see
those packets.  ``gw_deny`` (``xdp/bpf/spectra.bpf.c``) counts every drop per rule and,
at most ``deny_sample_rate`` packets per second and CPU (a per-CPU token bucket of
one-second windows), writes a :class:`DenySample` to a BPF ring buffer; the budget map
counts what was sampled, what the rate suppressed and what a full ring buffer lost.
:class:`DenySampleReader` polls the ring buffer in a thread of its own and hands each
sample to a callback (the agent turns it into a firewall-log record naming the rule).
"""

from __future__ import annotations

import ctypes
import logging
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address

from xdp import libbpf
from xdp.maps import DenySampleC, SampleBudgetC

log = logging.getLogger("spectra.xdp")

SAMPLE_SIZE = ctypes.sizeof(DenySampleC)
_HEAD, _PORTS, _TAIL = struct.Struct("=II4s4s"), struct.Struct(">HH"), struct.Struct("=B3xI")
POLL_MS = 200


@dataclass(frozen=True, slots=True)
class DenySample:
    """One denied packet: the rule id (0-based, document order of the deny rules) of
    the generation ``deny_gen`` it matched, and its header fields (``sport``/``dport``
    None when not visible; ICMP: ``sport`` is the type, ``dport`` the code)."""

    rule: int
    deny_gen: int
    src: IPv4Address
    dst: IPv4Address
    proto: int
    sport: int | None
    dport: int | None
    pkt_len: int


def parse(raw: bytes) -> DenySample:
    """A ring-buffer record as the program wrote it (``struct deny_sample``)."""
    if len(raw) < SAMPLE_SIZE:
        raise ValueError(f"deny sample of {len(raw)} bytes, expected {SAMPLE_SIZE}")
    rule, gen, src, dst = _HEAD.unpack_from(raw)
    sport, dport = _PORTS.unpack_from(raw, _HEAD.size)
    proto, pkt_len = _TAIL.unpack_from(raw, _HEAD.size + _PORTS.size)
    a, b = IPv4Address(src), IPv4Address(dst)
    if proto == 1:  # type and code
        return DenySample(rule, gen, a, b, 1, sport >> 8, sport & 0xFF, pkt_len)
    seen = proto in (6, 17) and bool(sport or dport)
    return DenySample(rule, gen, a, b, proto, sport if seen else None,
                      dport if seen else None, pkt_len)  # fmt: skip


def budget_counters(fd: int) -> dict[str, int]:
    """``sampled``, ``suppressed`` (over the rate) and ``ring_full``, summed over CPUs."""
    values = (SampleBudgetC * libbpf.num_possible_cpus())()
    if not libbpf.map_lookup(fd, ctypes.c_uint32(0), values):
        return {"sampled": 0, "suppressed": 0, "ring_full": 0}
    return {k: sum(getattr(v, k) for v in values) for k in ("sampled", "suppressed", "ring_full")}


class DenySampleReader:
    """Polls the ring buffer ``fd`` in a daemon thread until :meth:`stop`."""

    def __init__(self, fd: int, on_sample: Callable[[DenySample], object]) -> None:
        self.read = 0
        self.malformed = 0

        def take(raw: bytes) -> None:
            try:
                sample = parse(raw)
            except ValueError:
                self.malformed += 1
                return
            self.read += 1
            on_sample(sample)

        self._ring = libbpf.RingBuffer(fd, take)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="spectra-deny-samples", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def poll(self, timeout_ms: int = 0) -> int:
        """Consume what is there (the thread does this; tests call it directly)."""
        return self._ring.poll(timeout_ms)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._ring.poll(POLL_MS)
            except OSError as exc:
                log.warning("deny sample ring buffer: %s", exc)
                self._stop.wait(1.0)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2.0)
        self._ring.close()
