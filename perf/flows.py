"""The offloader at NAT-gateway scale: many concurrent NATed flows, the agent's cost.

For each size (default 10,000, 50,000 and 250,000 flows) the product's agent runs in
the gateway namespace of a :class:`perf.lab.flowlab.FlowLab` (its real steps: sysctl,
nftables NAT, XDP attached, the offloader), once with the event offloader and, at the
sizes where it finishes in reasonable time, once with the dump-per-tick reference
(``spectra run --offloader dump``, the offloader before events): every figure is a
ratio against that baseline measured in the same run. The flows are real packets
(:class:`perf.lab.flowlab.Sender`): one packet each with a reply, a packet more than
2 s later (the kernel marks the entry assured: the offload decision), then a packet
per flow every ``interval`` seconds through the fast path.

Measured:

The flows are made at ``rate_pps`` (10,000 new flows per second; ``nat.timeouts.udp``
is 60 s so the slowest phase fits in it).

* ``steady_cpu``: the agent's CPU (cores: ``/proc/<pid>/stat`` utime + stime over the
  window) while every flow carries packets and needs its conntrack keepalives, at the
  product's default ``nat.timeouts.udp_stream`` (180 s; quick: 12 s). The window is one
  keepalive period (the timeout less the offloader's look-ahead margin, plus 10 s),
  starting when the last flow was offloaded: every flow is looked at and refreshed once
  in it, which is the steady keepalive rate (``keepalives`` says how many were sent);
* ``cpu_per_10k_new``: agent CPU from the first assuring packet until every flow is
  offloaded, per 10,000 flows;
* ``delay_p50`` / ``delay_p99``: from the assuring packet leaving the workload to the
  flow's XDP entry existing (a sample of flows, polled in the pinned map);
* ``config_apply``: a new document written to the store -> the agent reports it
  applied (``--poll 0.2``; the largest of three changes during the window);
* ``lost_to_expiry``: offloaded flows whose conntrack entry was destroyed during the
  window although packets kept flowing (each flow sends every ``interval`` s);
* ``one_packet_offloaded`` / ``one_packet_cpu_per_10k``: up to 10,000 more flows of one
  packet each way (what ``hping3 -2`` makes): how many reach the fast path anyway (the
  choice is that none should: not worth a map entry) and the agent CPU they cost;
* ``stop``: SIGTERM -> the agent has exited.

Needs root; the host-wide ``nf_conntrack_max`` is raised to fit the largest size.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from control.agent import read_state
from control.config import parse_document
from control.store import SqliteStore
from perf import report
from perf.lab.flowlab import (
    ASK_REPLY,
    CLIENT_IP,
    DESTINATIONS,
    DPORT,
    NO_REPLY,
    Flow,
    FlowLab,
    flows,
)
from perf.report import Result
from xdp import Dataplane, loader
from xdp.records import IPPROTO_UDP, FlowKey

log = logging.getLogger("spectra.perf")

INSTANCE = "perf-flows"
CT_MAX = Path("/proc/sys/net/netfilter/nf_conntrack_max")
TICK = os.sysconf("SC_CLK_TCK")
ONE_PACKET_SPORT = 40_000  # above the steady flows' source ports (at most 250,000 / 8)
ONE_PACKET_SETTLE_S = 5.0


@dataclass(frozen=True, slots=True)
class Settings:
    sizes: tuple[int, ...] = (10_000, 50_000, 250_000)
    baseline_sizes: tuple[int, ...] = (10_000,)
    udp_stream: int = 180  # the product's default (control.config.network)
    interval_s: float = 10.0
    rate_pps: int = 10_000  # new flows per second (each phase)
    samples: int = 300
    offload_timeout_s: float = 120.0

    @property
    def window_s(self) -> float:
        """One keepalive period: each flow is looked at once, its margin before expiry
        (an eighth of the timeout, 2 s at least) ahead (:mod:`xdp.offload_events`)."""
        return self.udp_stream - max(2.0, self.udp_stream / 8) + 10.0


QUICK = Settings(sizes=(2_000,), baseline_sizes=(2_000,), udp_stream=12, interval_s=4.0,
                 samples=100, offload_timeout_s=40.0)  # fmt: skip


@dataclass(slots=True)
class Run:
    """What one (offloader, size) run measured."""

    kind: str
    flows: int
    figures: dict[str, float | None] = field(default_factory=dict)
    status: dict[str, Any] = field(default_factory=dict)


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def _offload(instance: str) -> dict[str, Any]:
    state = read_state(instance) or {}
    off: dict[str, Any] = state.get("offload", {})
    return off


def _pct(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Agent:
    """The product's agent in the gateway namespace, on a store of this run's own."""

    def __init__(self, lab: FlowLab, kind: str, store: Path, table_size: int) -> None:
        self.log = (store.parent / f"agent-{kind}.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "control", "run", "--netns", lab.gateway,
             "--instance", INSTANCE, "--store", f"local:{store}", "--no-api",
             "--poll", "0.2", "--offloader", kind, "--flow-table-size", str(table_size)],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def wait_applied(self, version: int, timeout: float = 120.0) -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            st = read_state(INSTANCE)
            if st and st.get("pid") == self.proc.pid and st.get("applied_version") == version:
                return time.monotonic() - start
            if self.proc.poll() is not None:
                raise RuntimeError(f"the agent exited ({self.proc.returncode}); see its log")
            time.sleep(0.01)
        raise RuntimeError(f"config version {version} not applied within {timeout} s")

    def stop(self) -> float:
        start = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.log.close()
        return time.monotonic() - start


def _document(udp_stream: int, icmp: int) -> dict[str, Any]:
    return {
        "interfaces": {"inside": "inside", "outside": "outside"},
        "nat": {"timeouts": {"udp": 60, "udp_stream": udp_stream, "icmp": icmp}},
    }


class Sampler(threading.Thread):
    """Polls the pinned flow table for a sample of flows' inside keys: when each
    appears after its assuring packet was sent."""

    def __init__(self, inside_ifindex: int, sample: dict[int, Flow], timeout: float) -> None:
        super().__init__(daemon=True)
        self.keys = {
            i: FlowKey(inside_ifindex, _ip(CLIENT_IP), _ip(f.daddr), f.sport, DPORT, IPPROTO_UDP)
            for i, f in sample.items()
        }
        self.sent: dict[int, int] = {}
        self.found: dict[int, int] = {}
        self.timeout = timeout
        self.stop = threading.Event()

    def run(self) -> None:
        dp = Dataplane.adopt(INSTANCE)
        try:
            deadline = time.monotonic() + self.timeout
            while not self.stop.is_set() and time.monotonic() < deadline:
                for i in [i for i in self.sent if i not in self.found]:
                    if dp.flow(self.keys[i]) is not None:
                        self.found[i] = time.monotonic_ns()
                if len(self.found) == len(self.keys):
                    return
                time.sleep(0.005)
        finally:
            dp.close()

    def delays_ms(self) -> list[float]:
        return [(self.found[i] - self.sent[i]) / 1e6 for i in self.found]


def _ip(addr: str) -> Any:
    from ipaddress import IPv4Address

    return IPv4Address(addr)


def measure(kind: str, size: int, s: Settings, tmp: Path) -> Run:
    run = Run(kind, size)
    lab = FlowLab("csflows")
    lab.up()
    lab.start_reflector()
    store_path = tmp / f"config-{kind}-{size}.db"
    store = SqliteStore(store_path)
    store.put(parse_document(_document(s.udp_stream, 30)), 0, "perf flows")
    table_size = 1 << max(16, (4 * size).bit_length())
    agent = Agent(lab, kind, store_path, table_size)
    sender = lab.sender()
    try:
        agent.wait_applied(1)
        pid = agent.proc.pid
        batch = flows(size)
        report.progress(f"flows {kind} {size}: first packets")
        sender.send(batch, ASK_REPLY, s.rate_pps)
        time.sleep(2.3)
        inside = int(
            subprocess.run(["ip", "netns", "exec", lab.gateway, "cat",
                            "/sys/class/net/inside/ifindex"],
                           capture_output=True, text=True, check=True).stdout
        )  # fmt: skip
        step = max(1, size // s.samples)
        sample = {i: batch[i] for i in range(0, size, step)}
        sampler = Sampler(inside, sample, s.offload_timeout_s)
        report.progress(f"flows {kind} {size}: assuring packets")
        cpu0, t0 = _cpu_s(pid), time.monotonic()
        sampler.start()
        sender.send_stamped(batch, NO_REPLY, s.rate_pps, sampler.sent, set(sample))
        deadline = t0 + s.offload_timeout_s
        while time.monotonic() < deadline and _offload(INSTANCE).get("active", 0) < size:
            time.sleep(0.2)
        active = _offload(INSTANCE).get("active", 0)
        cpu1 = _cpu_s(pid)
        sampler.stop.set()
        sampler.join()
        run.figures["offloaded"] = active
        run.figures["cpu_per_10k_new"] = (cpu1 - cpu0) / max(1, active) * 10_000
        delays = sampler.delays_ms()
        run.figures["delay_p50"] = _pct(delays, 0.5)
        run.figures["delay_p99"] = _pct(delays, 0.99)
        run.figures["delay_missing"] = len(sample) - len(delays)
        report.progress(f"flows {kind} {size}: steady window {s.window_s:.0f} s")
        run.figures.update(_steady(agent, store, sender, batch, s))
        run.figures.update(_one_packet_flows(agent, sender, min(size, 10_000), s))
        run.status = _offload(INSTANCE)
    finally:
        sender.close()
        run.figures["stop"] = agent.stop()
        store.close()
        lab.down()
        # the pinned table keys flows by ifindex: the next run's new namespaces reuse
        # those numbers, so no entry of this run may survive into it
        loader.unpin(loader.pin_dir_for(INSTANCE))
    return run


def _steady(
    agent: Agent, store: SqliteStore, sender: Any, batch: list[Flow], s: Settings
) -> dict[str, float | None]:
    pid = agent.proc.pid
    before = _offload(INSTANCE)
    cpu0, t0 = _cpu_s(pid), time.monotonic()
    applies: list[float] = []
    version = store.head()
    change_at = [t0 + s.window_s * f for f in (0.3, 0.6, 0.9)]
    chunk = max(1, len(batch) // max(1, int(s.interval_s * 4)))  # a quarter second each
    i = 0
    while time.monotonic() - t0 < s.window_s:
        part = batch[i : i + chunk] or batch[:chunk]
        i = (i + chunk) % len(batch)
        sender.send(part, NO_REPLY, len(batch) / s.interval_s)
        if change_at and time.monotonic() >= change_at[0]:
            change_at.pop(0)
            doc = _document(s.udp_stream, 30 + len(applies) % 2 + 1)
            version = store.put(parse_document(doc), version, "perf flows change")
            # The dump baseline may take most of a window to apply a change: that is its figure.
            applies.append(agent.wait_applied(version, timeout=s.window_s))
    cpu1, t1 = _cpu_s(pid), time.monotonic()
    after = _offload(INSTANCE)

    def delta(name: str) -> int:
        removed_a = after.get("removed", {}).get(name, 0)
        return int(removed_a - before.get("removed", {}).get(name, 0))

    return {
        "steady_cpu": (cpu1 - cpu0) / (t1 - t0),
        "config_apply": max(applies) if applies else None,
        "lost_to_expiry": delta("conntrack_destroyed"),
        "keepalives": after.get("keepalives", 0) - before.get("keepalives", 0),
    }


def _one_packet_flows(
    agent: Agent, sender: Any, count: int, s: Settings
) -> dict[str, float | None]:
    """``count`` flows of one packet each way (as ``hping3 -2`` makes them): how many
    the offloader puts on the fast path anyway, and what they cost it."""
    pid = agent.proc.pid
    n = len(DESTINATIONS)
    extra = [Flow(ONE_PACKET_SPORT + i // n, DESTINATIONS[i % n]) for i in range(count)]
    before = _offload(INSTANCE).get("offloaded_total", 0)
    cpu0 = _cpu_s(pid)
    sender.send(extra, ASK_REPLY, s.rate_pps)
    time.sleep(ONE_PACKET_SETTLE_S)
    return {
        "one_packet_offloaded": _offload(INSTANCE).get("offloaded_total", 0) - before,
        "one_packet_cpu_per_10k": (_cpu_s(pid) - cpu0) / count * 10_000,
    }


FIGURES = (
    ("steady_cpu", "cores"),
    ("cpu_per_10k_new", "cpu s"),
    ("delay_p50", "ms"),
    ("delay_p99", "ms"),
    ("config_apply", "s"),
    ("lost_to_expiry", "flows"),
    ("one_packet_offloaded", "flows"),
    ("one_packet_cpu_per_10k", "cpu s"),
    ("stop", "s"),
)


def results(runs: list[Run]) -> list[Result]:
    base = {r.flows: r for r in runs if r.kind == "dump"}
    out = []
    for r in runs:
        b = base.get(r.flows)
        for metric, unit in FIGURES:
            value = r.figures.get(metric)
            out.append(
                Result(
                    metric=metric,
                    path=f"{r.kind}_{r.flows}",
                    unit=unit,
                    value=value,
                    baseline=f"dump_{r.flows}" if b and r.kind != "dump" else None,
                    baseline_value=b.figures.get(metric) if b and r.kind != "dump" else None,
                    valid=value is not None,
                    extra={"figures": r.figures, "offload": r.status} if metric == "stop" else {},
                )
            )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m perf flows", description=__doc__)
    p.add_argument("--json", type=Path, required=True, metavar="FILE")
    p.add_argument("--quick", action="store_true", help="2,000 flows, under 2 minutes")
    p.add_argument("--sizes", help="comma-separated flow counts (default 10000,50000,250000)")
    p.add_argument("--baseline-sizes", help="sizes also run with the dump offloader")
    args = p.parse_args(argv)
    s = QUICK if args.quick else Settings()
    if args.sizes:
        s = Settings(**{**_asdict(s), "sizes": _ints(args.sizes)})
    if args.baseline_sizes is not None:
        s = Settings(**{**_asdict(s), "baseline_sizes": _ints(args.baseline_sizes)})
    started = time.monotonic()
    need = 2 * max(s.sizes) + 65536
    ct_max = int(CT_MAX.read_text())
    if ct_max < need:
        CT_MAX.write_text(str(need))
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            for size in s.sizes:
                if size in s.baseline_sizes:
                    runs.append(measure("dump", size, s, Path(tmp)))
                runs.append(measure("events", size, s, Path(tmp)))
        finally:
            loader.unpin(loader.pin_dir_for(INSTANCE))
            if ct_max < need:
                CT_MAX.write_text(str(ct_max))
    for r in runs:
        print(json.dumps({"run": f"{r.kind}_{r.flows}", **r.figures}), file=sys.stderr)
    report.publish("flows", results(runs), args.json, started=started, quick=args.quick)
    return 0


def _asdict(s: Settings) -> dict[str, Any]:
    return {f: getattr(s, f) for f in Settings.__dataclass_fields__}


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x)


if __name__ == "__main__":
    sys.exit(main())
