"""The fast path's share of each flow, handed from the offloader to the flow log.

Packets the XDP fast path forwards bypass conntrack, so an offloaded flow's conntrack
counters hold only its slow-path share; the rest is in the flow table's per-direction
counters (``flow_value.packets`` / ``bytes`` in ``xdp/bpf/maps.h``), which the
offloader deletes with the pair.  :class:`FastpathShares` joins the two: the offloader
says when it installs a flow (:meth:`FastpathShares.offloaded`) and, when it removes the
pair (destroy event, FIN/RST, idle, resync, ...), reads both directions' counters first
and settles them (:meth:`FastpathShares.removed`, added up over every time the flow was
on the fast path).  The flow log takes them at the flow's DESTROY
(:meth:`FastpathShares.take`); a flow still on the fast path then (the offloader has
not yet seen the same DESTROY on its own socket) is answered :data:`PENDING` and asked
again shortly.

Bounded: live keys are the offloaded flows (bounded by the flow table); settled shares
are kept for at most ``capacity`` flows, the oldest evicted first and counted in
``evicted``.  Only while a flow log is on (``enabled``) does the offloader pay the two
extra map reads per removal (a removal while it is off only forgets the key).
Thread-safe: the offloader and the flow log run in
threads of their own.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

from xdp.offload import CtTuple

CtKey = tuple[int, CtTuple]
ETH_HLEN = 14  # the fast path counts whole untagged frames; conntrack counts IP bytes
CAPACITY = 262144


@dataclass(frozen=True, slots=True)
class Share:
    """What the fast path forwarded of one flow, per conntrack direction (bytes as
    conntrack counts them: the IP packet, without the Ethernet header)."""

    packets_orig: int = 0
    bytes_orig: int = 0
    packets_reply: int = 0
    bytes_reply: int = 0

    @staticmethod
    def from_frames(orig: tuple[int, int], reply: tuple[int, int]) -> Share:
        """From the flow table's (packets, frame bytes) of the forward and return entry."""
        return Share(
            orig[0],
            max(0, orig[1] - ETH_HLEN * orig[0]),
            reply[0],
            max(0, reply[1] - ETH_HLEN * reply[0]),
        )

    def __add__(self, other: Share) -> Share:
        return Share(
            self.packets_orig + other.packets_orig,
            self.bytes_orig + other.bytes_orig,
            self.packets_reply + other.packets_reply,
            self.bytes_reply + other.bytes_reply,
        )

    @property
    def packets(self) -> int:
        return self.packets_orig + self.packets_reply

    @property
    def bytes(self) -> int:
        return self.bytes_orig + self.bytes_reply


class _Pending:
    """The answer for a flow the offloader still has on the fast path."""

    def __repr__(self) -> str:
        return "PENDING"


PENDING: Final = _Pending()
NONE = Share()


class FastpathShares:
    """The bounded, thread-safe hand-over (see the module docstring)."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        self.capacity = capacity
        self.enabled = False  # set while a flow log consumes the shares
        self.evicted = 0
        self._lock = threading.Lock()
        self._live: set[CtKey] = set()
        self._settled: OrderedDict[CtKey, Share] = OrderedDict()

    def offloaded(self, key: CtKey) -> None:
        """The offloader installed the flow ``key`` (its counters start at zero)."""
        with self._lock:
            self._live.add(key)

    def removed(self, key: CtKey, share: Share) -> None:
        """The offloader removed the flow's pair, whose counters were ``share``."""
        with self._lock:
            self._live.discard(key)
            old = self._settled.pop(key, None)
            self._settled[key] = share if old is None else old + share
            while len(self._settled) > self.capacity:
                self._settled.popitem(last=False)
                self.evicted += 1

    def take(self, key: CtKey) -> Share | _Pending:
        """The fast-path share of the ended flow ``key`` (zero when it never was on the
        fast path, or its share was evicted), or :data:`PENDING` while it still is."""
        with self._lock:
            if key in self._live:
                return PENDING
            return self._settled.pop(key, NONE)

    def forget(self, key: CtKey) -> None:
        """Nothing to keep of ``key``: removed while no flow log runs, or the flow log
        gave up waiting for it (its record says ``-``)."""
        with self._lock:
            self._live.discard(key)
            self._settled.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._live.clear()
            self._settled.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._live) + len(self._settled)
