"""The XDP deny list's dropped packets in the firewall log.

The fast path drops denied packets before netfilter, so nftables' NFLOG twins never see
them; ``gw_deny`` samples them (at most ``logging.firewall_logs.xdp_samples_per_second``
per CPU, a token bucket in BPF) into a ring buffer (:mod:`xdp.deny_samples`).
:class:`XdpDenyLog` reads it in a thread of its own and turns each sample into the same
record the NFLOG path writes (:func:`control.firewall_log.record`, ``source: xdp``),
naming the rule by its document path: rule id r is the r-th deny rule of
``rules.entries`` in the generation it matched (the names of both live generations are
kept, so a sample read after a replacement still names its own rule).  Records go to
the firewall log through the steps' shared :class:`control.logfile.Feed`.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from control.firewall_log import Denied, record
from control.logfile import Feed
from xdp import Dataplane
from xdp.deny_samples import DenySample, DenySampleReader

Names = tuple[tuple[str, str], ...]  # (path, comment) per deny rule id


class XdpDenyLog:
    """Samples of one data plane's deny drops, handed to ``feed`` as firewall records."""

    def __init__(self, dataplane: Dataplane, feed: Feed) -> None:
        self.dataplane, self.feed = dataplane, feed
        self.rate = 0
        self.unnamed = 0  # samples of a rule id no generation names (counted, logged)
        self._names: dict[int, Names] = {}
        self._reader: DenySampleReader | None = None

    def configure(self, rate: int, names: Names) -> None:
        """After the deny rules of ``names`` were loaded: sample ``rate`` drops per
        second and CPU (0: stop)."""
        self._names[self.dataplane.deny.active_generation()] = names
        if rate != self.rate:
            self.dataplane.set_deny_sample_rate(rate)
            self.rate = rate
        if rate and self._reader is None:
            self._reader = self.dataplane.deny_sample_reader(self._on_sample)
            self._reader.start()
        elif not rate and self._reader is not None:
            self._reader.stop()
            self._reader = None

    def _on_sample(self, s: DenySample) -> None:
        names = self._names.get(s.deny_gen & 1, ())
        if s.rule < len(names):
            path, comment = names[s.rule]
        else:
            self.unnamed += 1
            path, comment = f"xdp rule {s.rule}", ""
        d = Denied(path, s.src, s.dst, s.proto, s.sport, s.dport, None, None, None)
        self.feed.offer(record(d, {path: comment}, time.time_ns() // 1000, source="xdp"))

    def counters(self) -> dict[str, Any]:
        if not self.rate and self._reader is None:
            return {}
        read = self._reader.read if self._reader is not None else 0
        return {"rate": self.rate, "read": read, "unnamed": self.unnamed,
                **self.dataplane.deny_sample_counters()}  # fmt: skip

    def close(self) -> None:
        """Stop reading; the pinned program stops sampling (the counters go on)."""
        if self.rate:
            with contextlib.suppress(OSError):  # the data plane is going away with us
                self.dataplane.set_deny_sample_rate(0)
            self.rate = 0
        if self._reader is not None:
            self._reader.stop()
            self._reader = None
