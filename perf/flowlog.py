"""Flow logs at NAT-gateway scale, through the kernel: N conntrack entries end at once.

For each size (default 10,000, 50,000 and 250,000 flows), in a scratch network namespace
with ``nf_conntrack_acct`` and ``nf_conntrack_timestamp`` on (the flow log's settings):
N UDP entries are created over ctnetlink (``IPCTNL_MSG_CT_NEW``, 256 to a datagram; the
kernel attaches zeroed counters and a start timestamp, as for real traffic), then
``conntrack -F`` ends them all at once, the worst burst of DESTROY events a gateway
sees.  The consumers, each on fresh entries:

* ``none``: no listener (flush time only);
* ``count`` (the baseline): a bare DESTROY socket of the same receive buffer that only
  counts the messages, what "logging off, events on" costs;
* ``flowlog_reliable`` / ``flowlog_unreliable`` (``--reliable on|off|both``): the
  product's :class:`control.flowlog.FlowLogger` writing ``flow.jsonl`` (default queue
  65,536, 64 MiB rotation) with reliable delivery on (the kernel keeps and re-delivers
  what the socket cannot take) or off (it is lost and counted).

``--rcvbuf`` sets every socket's receive buffer (default the flow log's own, 192 MiB):
a small one shows what reliable delivery does when the logger cannot keep up.

Figures per size: ``received`` (DESTROY events read) and, for the flow log, ``written``
records, ``dropped`` (queue full), ``kernel_overflows`` (ENOBUFS errors),
``kernel_lost`` (events the kernel could not queue and dropped: unreliable),
``kernel_redelivered`` (deliveries it retried: reliable), ``lost`` (N - written: every
one of them counted in ``kernel_lost`` or ``dropped``), ``held_max`` and ``held_s`` (the
ended entries still in the conntrack table when the flush returned, and how long until
the last was freed: the back-pressure of reliable delivery), ``drain_s`` (flush -> the
last record written), ``cpu_s``
(the consumer process's CPU, user + system, over that window; the flush itself runs in
the ``conntrack`` process), ``peak_rss_mb`` (the process's high-water mark after the
run); ratios against ``count`` at the same size.

Needs root; the host-wide ``nf_conntrack_max`` is raised to fit the largest size.
Runs itself inside the namespace (``ip netns exec``); the host side writes the JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from control.flowlog import FLOW_RCVBUF, FlowLogger, Known, destroy_socket
from control.logfile import Rotation
from perf import report
from perf.report import Result
from xdp.ctevents import (
    CTA_TIMEOUT,
    CTA_TUPLE_ORIG,
    CTA_TUPLE_REPLY,
    MSG_DELETE,
    MSG_NEW,
    NLM_F_CREATE,
    NLM_F_REQUEST,
    _msg,
    _nla,
    _nlsocket,
    messages,
    tuple_attr,
)
from xdp.offload import CtTuple

CT_MAX = Path("/proc/sys/net/netfilter/nf_conntrack_max")
CT_COUNT = Path("/proc/sys/net/netfilter/nf_conntrack_count")
CONSUMERS = {"on": ("flowlog_reliable",), "off": ("flowlog_unreliable",),
             "both": ("flowlog_reliable", "flowlog_unreliable")}  # fmt: skip
SIZES = (10_000, 50_000, 250_000)
PER_DATAGRAM = 256
QUIET_S = 2.0  # a consumer that read nothing for this long has seen everything
FIGURES = (
    ("received", "events"),
    ("written", "records"),
    ("lost", "records"),
    ("dropped", "records"),
    ("kernel_overflows", "ENOBUFS"),
    ("kernel_lost", "events"),
    ("kernel_redelivered", "deliveries"),
    ("held_max", "entries"),
    ("held_s", "s"),
    ("drain_s", "s"),
    ("cpu_s", "s"),
    ("peak_rss_mb", "MiB"),
)
SERVER = IPv4Address("198.51.100.1")


@dataclass(frozen=True, slots=True)
class Run:
    consumer: str
    flows: int
    figures: dict[str, Any]


def _entry(i: int, seq: int) -> bytes:
    client = IPv4Address(int(IPv4Address("10.0.0.0")) + 1 + i // 50_000)
    sport = 10_000 + i % 50_000
    payload = tuple_attr(CTA_TUPLE_ORIG, 17, CtTuple(client, SERVER, sport, 53))
    payload += tuple_attr(CTA_TUPLE_REPLY, 17, CtTuple(SERVER, client, 53, sport))
    payload += _nla(CTA_TIMEOUT, struct.pack(">I", 600))
    return _msg(MSG_NEW, NLM_F_REQUEST | NLM_F_CREATE, seq, payload)


def create(n: int) -> float:
    """``n`` UDP entries in this namespace's conntrack; returns the seconds it took."""
    started = time.monotonic()
    sock = _nlsocket()
    try:
        for first in range(0, n, PER_DATAGRAM):
            batch = b"".join(_entry(i, i + 1) for i in range(first, min(n, first + PER_DATAGRAM)))
            sock.send(batch)
    finally:
        sock.close()
    count = int(CT_COUNT.read_text())
    if count < n:
        raise SystemExit(f"created {count} of {n} conntrack entries (nf_conntrack_max?)")
    return time.monotonic() - started


def flush() -> float:
    started = time.monotonic()
    subprocess.run(["conntrack", "-F"], check=True, capture_output=True)
    return time.monotonic() - started


class Counter(threading.Thread):
    """The baseline consumer: reads the DESTROY socket and counts messages."""

    def __init__(self, rcvbuf: int) -> None:
        super().__init__(daemon=True)
        self.sock = destroy_socket(rcvbuf, reliable=False)
        self.received = 0
        self.kernel_overflows = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                data = self.sock.recv(1 << 16)
            except TimeoutError:
                continue
            except OSError:
                self.kernel_overflows += 1  # ENOBUFS
                continue
            self.received += sum(1 for _, kind, _, _ in messages(data) if kind == MSG_DELETE)

    def stop(self) -> None:
        self.stopping.set()
        self.join(2)
        self.sock.close()


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def _settle(progress: Any, n: int) -> float:
    """Wait until ``progress()`` reached ``n`` or stood still for QUIET_S; the time of
    its last change (monotonic)."""
    last, changed = -1, time.monotonic()
    while True:
        now_value = progress()
        if now_value != last:
            last, changed = now_value, time.monotonic()
        if now_value >= n or time.monotonic() - changed > QUIET_S:
            return changed
        time.sleep(0.02)


class Held(threading.Thread):
    """Watches ``nf_conntrack_count`` after a flush: the entries conntrack still holds
    (undelivered DESTROY events) and when the last of them was freed."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.started = time.monotonic()
        self.first = int(CT_COUNT.read_text())
        self.freed_at: float | None = None
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set() and self.freed_at is None:
            if int(CT_COUNT.read_text()) == 0:
                self.freed_at = time.monotonic()
            time.sleep(0.01)

    def figures(self) -> dict[str, Any]:
        self.stopping.set()
        self.join(2)
        held = None if self.freed_at is None else round(self.freed_at - self.started, 3)
        return {"held_max": self.first, "held_s": held}


def measure(consumer: str, n: int, tmp: Path, rcvbuf: int) -> Run:
    # the listener comes first: with nf_conntrack_events at its default (2) the kernel
    # gives an entry its event extension only while someone listens, as the agent does
    figures: dict[str, Any] = {}
    if consumer == "none":
        figures["create_s"] = round(create(n), 2)
        figures["flush_s"] = round(flush(), 3)
        return Run(consumer, n, figures)
    if consumer == "count":
        counter = Counter(rcvbuf)
        counter.start()
        figures["create_s"] = round(create(n), 2)
        cpu0 = _cpu()
        t0 = time.monotonic()
        figures["flush_s"] = round(flush(), 3)
        done = _settle(lambda: counter.received, n)
        cpu = _cpu() - cpu0
        counter.stop()
        figures.update(received=counter.received, kernel_overflows=counter.kernel_overflows)
    else:
        path = tmp / f"{consumer}-{n}.jsonl"
        reliable = consumer == "flowlog_reliable"
        logger = FlowLogger(Rotation(path, 64 << 20, 5), sampling=1, capacity=65536,
                            known=Known(instance_id="perf"), reliable=reliable,
                            open_socket=lambda r: destroy_socket(rcvbuf, r))  # fmt: skip
        logger.start()
        figures["create_s"] = round(create(n), 2)
        cpu0 = _cpu()
        t0 = time.monotonic()
        figures["flush_s"] = round(flush(), 3)
        held = Held()
        held.start()
        _settle(lambda: logger.events, n)
        done = _settle(lambda: logger.out.written + logger.out.dropped, logger.events)
        cpu = _cpu() - cpu0
        figures.update(held.figures())
        logger.stop()
        c = logger.counters()
        lines = sum(1 for p in tmp.glob(f"{consumer}-{n}.jsonl*") for _ in p.open())
        figures.update(
            received=c["flows"],
            written=c["written"],
            lines=lines,
            dropped=c["dropped"],
            kernel_overflows=c["kernel_overflows"],
            kernel_lost=c["kernel_lost"],
            kernel_redelivered=c.get("kernel_redelivered"),
            lost=n - c["written"],
        )
    figures.update(
        drain_s=round(done - t0, 3),
        cpu_s=round(cpu, 3),
        peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    )
    return Run(consumer, n, figures)


def results(runs: list[Run]) -> list[Result]:
    base = {r.flows: r for r in runs if r.consumer == "count"}
    out = []
    for r in runs:
        b = base.get(r.flows) if r.consumer.startswith("flowlog") else None
        for metric, unit in FIGURES:
            value = r.figures.get(metric)
            if value is None:
                continue
            out.append(
                Result(
                    metric=metric,
                    path=f"{r.consumer}_{r.flows}",
                    unit=unit,
                    value=value,
                    baseline=f"count_{r.flows}" if b else None,
                    baseline_value=b.figures.get(metric) if b else None,
                    lower_is_better=metric not in ("received", "written"),
                    extra={"figures": r.figures} if metric == "received" else {},
                )
            )
    return out


def inside(sizes: tuple[int, ...], rcvbuf: int, loggers: tuple[str, ...]) -> list[Run]:
    """The measurements, in the scratch namespace (this process runs there)."""
    for key in ("nf_conntrack_acct", "nf_conntrack_timestamp"):
        Path(f"/proc/sys/net/netfilter/{key}").write_text("1")
    socket.if_nametoindex("lo")  # the namespace exists and is ours
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            for consumer in ("none", "count", *loggers):
                run = measure(consumer, n, Path(tmp), rcvbuf)
                print(json.dumps({"run": f"{consumer}_{n}", **run.figures}), file=sys.stderr)
                runs.append(run)
    return runs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m perf flowlog", description=__doc__)
    p.add_argument("--json", type=Path, required=True, metavar="FILE")
    p.add_argument("--quick", action="store_true", help="2,000 flows")
    p.add_argument("--sizes", help="comma-separated flow counts (default 10000,50000,250000)")
    p.add_argument("--rcvbuf", type=int, default=FLOW_RCVBUF, help="socket receive buffer, bytes")
    p.add_argument(
        "--reliable",
        choices=sorted(CONSUMERS),
        default="both",
        help="the flow log's reliable delivery (default: both, one after the other)",
    )
    p.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    sizes: tuple[int, ...] = (2000,) if args.quick else SIZES
    if args.sizes:
        sizes = tuple(int(x) for x in args.sizes.split(",") if x)
    if args.inside:  # the child: measure, hand the runs back as JSON on stdout
        runs = inside(sizes, args.rcvbuf, CONSUMERS[args.reliable])
        print(json.dumps([dataclasses.asdict(r) for r in runs]))
        return 0
    started = time.monotonic()
    ns = f"csflowlog{os.getpid()}"
    need = max(sizes) + 65536
    ct_max = int(CT_MAX.read_text())
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        if ct_max < need:
            CT_MAX.write_text(str(need))
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        child = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-m", "perf.flowlog", "--inside",
             "--json", str(args.json), "--sizes", ",".join(map(str, sizes)),
             "--rcvbuf", str(args.rcvbuf), "--reliable", args.reliable],
            check=True, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
        if ct_max < need:
            CT_MAX.write_text(str(ct_max))
    runs = [Run(**r) for r in json.loads(child.stdout)]
    report.publish("flowlog", results(runs), args.json, started=started, quick=args.quick)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
