"""The measurement method of issue 4: make the gateway's packet work land on one CPU
and measure it exactly.

* the sender's veth without TSO (with TSO the kernel skips NAPI and the work stays on
  the sender's CPU) and GRO on the gateway's ingress veth (so it has a NAPI instance);
* threaded NAPI on the gateway's ingress and the sink's device; the gateway's
  ``napi/<dev>-N`` thread pinned to the gateway CPU, the sink's to the generator CPU,
  both SCHED_FIFO 50 (at normal priority the sink's ring drops packets);
* CPU time from ``/proc/<tid>/schedstat`` field 1 (exact ns, not tick-sampled like
  ``/proc/stat``) of the gateway NAPI thread plus ``ksoftirqd/<cpu>``.

NAPI threads are recreated by every XDP attach/detach and GRO change, so callers
re-run :meth:`Tuning.pin` after each; threads are told apart from same-named threads
of other namespaces by toggling ``threaded`` and diffing the thread list.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from perf.stats import SchedStat, parse_schedstat
from perf.target import Host, PerfError, Target

log = logging.getLogger("spectra.perf")

GENERATOR_CPU = 0
GATEWAY_CPU = 1
FIFO_PRIORITY = 50
TASK_COMM_LEN = 15  # kernel thread names are cut to 15 characters


def read_schedstat(tid: int, host: Host | None = None) -> SchedStat:
    path = f"/proc/{tid}/schedstat"
    if host is None or host.local:
        return parse_schedstat(Path(path).read_text())
    return parse_schedstat(host.read(path))


def threads_named(host: Host, prefix: str) -> set[int]:
    """Kernel threads whose name starts with ``prefix`` (cut like the kernel cuts it)."""
    prefix = prefix[:TASK_COMM_LEN]
    out = host.run("ps", "-e", "-o", "pid=,comm=")
    found = set()
    for line in out.splitlines():
        pid, _, comm = line.strip().partition(" ")
        if comm.strip().startswith(prefix):
            found.add(int(pid))
    return found


def enable_threaded_napi(host: Host, dev: str) -> list[int]:
    """Switch ``dev`` to threaded NAPI (afresh) and return the tids of its threads.

    The kernel stops a device's threads when ``threaded`` goes to 0 and starts new
    ones at 1, so the difference of the two thread lists is exactly this device's,
    even when another namespace has a device of the same name."""
    sysfs = f"/sys/class/net/{dev}/threaded"
    prefix = f"napi/{dev}-"
    with contextlib.suppress(PerfError):
        host.write(sysfs, "0")
    before = threads_named(host, prefix)
    host.write(sysfs, "1")
    for _ in range(50):
        new = threads_named(host, prefix) - before
        if new:
            return sorted(new)
        time.sleep(0.02)
    raise PerfError(f"no napi/{dev}-N thread appeared on {host} after enabling threaded NAPI")


def pin_thread(host: Host, tid: int, cpu: int, priority: int | None = FIFO_PRIORITY) -> None:
    """Pin ``tid`` to ``cpu``; at SCHED_FIFO ``priority``, or SCHED_OTHER when None."""
    host.run("taskset", "-p", "-c", str(cpu), str(tid))
    if priority is None:
        host.run("chrt", "-o", "-p", "0", str(tid))
    else:
        host.run("chrt", "-f", "-p", str(priority), str(tid))


@contextlib.contextmanager
def pinned_process(pid: int | None, cpus: set[int]) -> Iterator[None]:
    """Every thread of local process ``pid`` on ``cpus`` meanwhile, then back to the
    affinity it had (nothing when ``pid`` is None)."""
    if pid is None:
        yield
        return
    tids = [int(t.name) for t in Path(f"/proc/{pid}/task").iterdir()]
    saved = {tid: os.sched_getaffinity(tid) for tid in tids}
    try:
        for tid in tids:
            os.sched_setaffinity(tid, cpus)
        yield
    finally:
        for tid, mask in saved.items():
            with contextlib.suppress(OSError):
                os.sched_setaffinity(tid, mask)


def ethtool_features(host: Host, dev: str) -> dict[str, str]:
    out = host.run("ethtool", "-k", dev)
    feats = {}
    for line in out.splitlines()[1:]:
        name, _, value = line.partition(":")
        if value:
            feats[name.strip()] = value.split()[0]
    return feats


def set_feature(host: Host, dev: str, feature: str, value: str) -> None:
    host.run("ethtool", "-K", dev, feature, value)


@dataclass
class Tuning:
    """Applies the method to a target and undoes it (features, threaded NAPI)."""

    target: Target
    gateway_threads: list[int] = field(default_factory=list)
    sink_threads: list[int] = field(default_factory=list)
    _saved: list[tuple[Host, str, str, str]] = field(default_factory=list)
    _threaded: list[tuple[Host, str, str]] = field(default_factory=list)

    def apply(self) -> None:
        t = self.target
        self._feature(t.generator, t.generator_dev, "tso", "tcp-segmentation-offload", "off")
        self._feature(t.gateway, t.ingress_dev, "gro", "generic-receive-offload", "on")
        for host, dev in ((t.gateway, t.ingress_dev), (t.sink, t.sink_dev)):
            if host.local or host.netns is not None:
                self._threaded.append((host, dev, host.read(f"/sys/class/net/{dev}/threaded")))

    def _feature(self, host: Host, dev: str, short: str, long: str, value: str) -> None:
        before = ethtool_features(host, dev).get(long)
        if before is not None and before != value:
            self._saved.append((host, dev, short, before))
        set_feature(host, dev, short, value)

    def pin(self, *, sink: bool = True, fifo: bool = True) -> None:
        """(Re)create and pin the NAPI threads; call after every XDP or GRO change.
        ``fifo=False`` leaves the gateway's thread at normal priority, for a gateway
        CPU it shares with a userspace consumer (NFQUEUE) that FIFO would starve."""
        t = self.target
        self.gateway_threads = enable_threaded_napi(t.gateway, t.ingress_dev)
        for tid in self.gateway_threads:
            pin_thread(t.gateway, tid, GATEWAY_CPU, FIFO_PRIORITY if fifo else None)
        self.sink_threads = []
        if sink and (t.sink.local or t.sink.netns is not None):
            self.sink_threads = enable_threaded_napi(t.sink, t.sink_dev)
            for tid in self.sink_threads:
                pin_thread(t.sink, tid, GENERATOR_CPU)

    def gateway_cpu(self) -> tuple[SchedStat, ...]:
        """schedstat of the gateway NAPI threads and of ksoftirqd on the gateway CPU."""
        tids = [*self.gateway_threads, ksoftirqd(GATEWAY_CPU)]
        return tuple(read_schedstat(tid) for tid in tids)

    def restore(self) -> None:
        for host, dev, original in reversed(self._threaded):
            with contextlib.suppress(PerfError):
                host.write(f"/sys/class/net/{dev}/threaded", original.strip() or "0")
        for host, dev, short, before in reversed(self._saved):
            with contextlib.suppress(PerfError):
                set_feature(host, dev, short, before)
        self._threaded.clear()
        self._saved.clear()


def ksoftirqd(cpu: int) -> int:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == f"ksoftirqd/{cpu}":
                    return int(entry.name)
    raise PerfError(f"no ksoftirqd/{cpu} thread")


def cpu_delta(before: tuple[SchedStat, ...], after: tuple[SchedStat, ...]) -> tuple[int, int]:
    """(on-CPU ns of all threads, NAPI wake-ups = timeslices of the NAPI threads)."""
    deltas = [a - b for a, b in zip(after, before, strict=True)]
    napi = deltas[:-1]
    return sum(d.run_ns for d in deltas), sum(d.timeslices for d in napi)


def dev_counter(host: Host, dev: str, name: str) -> int:
    """A ``/sys/class/net/<dev>/statistics`` counter, or a sum over the per-queue
    ``ethtool -S`` counters ending in ``name`` (e.g. ``xdp_drops``)."""
    if name in ("rx_packets", "tx_packets", "rx_dropped", "tx_dropped"):
        return int(host.read(f"/sys/class/net/{dev}/statistics/{name}"))
    total = 0
    for line in host.run("ethtool", "-S", dev).splitlines():
        key, _, value = line.partition(":")
        if key.strip().endswith(name) and value.strip().isdigit():
            total += int(value)
    return total
