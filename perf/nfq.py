"""The ``nfq`` suite: inspection-path cost per packet and capacity, against a naive
Python accept-all NFQUEUE consumer measured in the same run.

One 64-byte UDP flow (trafgen, pinned to the generator CPU) goes from cs-ws-a through
cs-gw-a (nft masquerade + the product's inspection chain). The method of the dataplane
suite, adapted: the gateway gets one CPU for everything it does — its ingress NAPI
thread (threaded NAPI, pinned, at normal priority so it shares the CPU with the
consumer instead of starving it) and the consumer process. Paths:

* ``kernel_nat`` - no queue at all (the kernel ceiling);
* ``xdp_fastpath`` - no queue, the flow offloaded to the XDP fast path (what a bypassed
  flow should cost);
* ``naive_nfqueue`` - the baseline: ``netfilterqueue`` callback doing ``accept()``, with
  the engine's queue length and socket buffer (with the default buffer it lost a
  quarter of the packets at 10k pps while 90 % idle: netlink overruns);
* ``builtin_inspect`` - the built-in engine with a 300-rule set, stream depth 0 (every
  packet parsed, flow-tracked and scanned by Hyperscan);
* ``builtin_bypass`` - the same with a 64 KiB stream depth: the flow is inspected, then
  bypassed through the conntrack mark and no longer queued;
* ``builtin_bypass_xdp`` - ``builtin_bypass`` as the product runs it: ``xdp_gateway`` on
  both gateway interfaces and the product's offloader (``xdp.offload``) following
  conntrack, so the bypassed flow moves to the XDP fast path (one reply packet from
  the service makes the UDP flow "replied", which offloading requires);
* ``suricata_inspect`` / ``suricata_bypass`` / ``suricata_bypass_xdp`` - the same three
  with the real Suricata 7 (NFQ IPS mode, workers runmode, Hyperscan, the rendered
  ``suricata.yaml`` of the product, pinned to the gateway CPU with all its threads).
  Suricata has no stream depth for UDP: its bypass is a ``pass`` rule matching the flow
  (one more rule; the product renders it with Suricata's ``bypass`` keyword), so the
  flow is decided at its first packet and the rest carries Suricata's bypass mark,
  like the built-in engine's depth bypass after its inspected head; both are measured
  after the warm-up, in the bypassed steady state;
* ``builtin_inspect_10k`` / ``suricata_inspect_10k`` / ``builtin_bypass_10k`` /
  ``suricata_bypass_10k`` - ``*_inspect`` and ``*_bypass`` with 10,000 synthetic
  content rules instead of 300.

Every queue is fail-closed here (no ``--queue-bypass``, no NFQA_CFG_F_FAIL_OPEN): a
packet the consumer cannot take is dropped, never delivered uninspected, so a
delivered packet is an inspected (or verdict-bypassed) one. Two figures per path:

* ``gateway_cpu_ns_per_packet`` at COST_RATE (10k pps), below every path's capacity
  (consumers near their capacity lose bursts to full queues): on-CPU ns
  of the NAPI thread, ``ksoftirqd`` and the consumer's threads (schedstat) per
  delivered packet; a run that lost more than 2 % is invalid;
* ``delivered_pps`` at ``--rate`` (default 300k, above the consumers' capacity):
  packets the service side of the link receives per second — the capacity on one core.

Run: ``python -m perf nfq --json perf-results/nfq.json [--quick]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from perf import rr
from perf.generator import UdpFlow, send
from perf.method import GATEWAY_CPU, Tuning, dev_counter
from perf.paths import NFT_TABLE, nft_masquerade
from perf.report import Result
from perf.suites import settings_for
from perf.target import Host, PerfError, Target

log = logging.getLogger("spectra.perf")
ROOT = str(Path(__file__).resolve().parents[1])
PATHS = (
    "kernel_nat",
    "xdp_fastpath",
    "naive_nfqueue",
    "builtin_inspect",
    "builtin_bypass",
    "builtin_bypass_xdp",
    "suricata_inspect",
    "suricata_bypass",
    "suricata_bypass_xdp",
    "builtin_inspect_10k",
    "suricata_inspect_10k",
    "builtin_bypass_10k",
    "suricata_bypass_10k",
)
# Paths with the product's XDP fast path and offloader behind (or instead of) the queue.
OFFLOADED = ("xdp_fastpath", "builtin_bypass_xdp", "suricata_bypass_xdp")
BASELINE = "naive_nfqueue"
COST_RATE = 10_000  # pps every path delivers in full on one core (naive: ~40k at most)
RR_PORT = 41112  # sockperf client port: a flow of its own
MAX_LOSS = 0.02
NAIVE = (
    "import netfilterqueue,signal,sys\n"
    "q=netfilterqueue.NetfilterQueue()\n"
    "q.bind(0,lambda p:p.accept(),max_len=16384,sock_len=8<<20)\n"
    "signal.signal(signal.SIGTERM,lambda *a:sys.exit(0))\n"
    "open(sys.argv[1],'w').write('ready')\n"
    "q.run()\n"
)
RULES = [
    *(f'alert tcp any any -> any any (msg:"f{n}"; content:"tcp-{n}-pattern"; sid:{5000 + n};)'
      for n in range(280)),
    *(f'alert udp any any -> any any (msg:"u{n}"; content:"udp-{n}-pattern"; nocase; '
      f"sid:{6000 + n};)" for n in range(20)),
]  # fmt: skip
RULES_10K = [
    *(f'alert tcp any any -> any any (msg:"f{n}"; content:"tcp-{n}-pattern"; sid:{100000 + n};)'
      for n in range(9000)),
    *(f'alert udp any any -> any any (msg:"u{n}"; content:"udp-{n}-pattern"; nocase; '
      f"sid:{200000 + n};)" for n in range(1000)),
]  # fmt: skip
SURICATA_BYPASS = 'pass udp any any -> any 9 (msg:"bench pass"; sid:7999;)'
SURICATA_START_SECONDS = 300  # 10k rules: Hyperscan compiles them at start


def _rules(path: str) -> list[str]:
    rules = RULES_10K if path.endswith("_10k") else RULES
    return [*rules, SURICATA_BYPASS] if path.startswith("suricata_bypass") else rules


def _suricata_started(log_file: Path) -> bool:
    """Suricata binds its queue before its workers run: ready once it logged the start."""
    with contextlib.suppress(OSError):
        return "Engine started" in log_file.read_text(errors="replace")
    return False


@dataclass(frozen=True, slots=True)
class Measure:
    path: str
    offered_pps: int
    sent: int
    delivered: int
    seconds: float
    gateway_cpu_ns: int  # NAPI thread + ksoftirqd + consumer threads
    queued: int  # packets that entered an NFQUEUE (id_sequence)

    @property
    def delivered_pps(self) -> float:
        return self.delivered / self.seconds if self.seconds else 0.0

    @property
    def ns_per_packet(self) -> float | None:
        return self.gateway_cpu_ns / self.delivered if self.delivered else None

    @property
    def lossless(self) -> bool:
        return self.sent > 0 and self.delivered >= (1 - MAX_LOSS) * self.sent


def _queued(gw: Host) -> int:
    """Packets ever queued in the gateway's namespace: the sum of id_sequence
    (column 8 of /proc/net/netfilter/nfnetlink_queue)."""
    with contextlib.suppress(PerfError):
        text = gw.read("/proc/net/netfilter/nfnetlink_queue")
        return sum(int(line.split()[7]) for line in text.splitlines() if line.strip())
    return 0


def _cpu_ns(pid: int) -> int:
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            total += int((task / "schedstat").read_text().split()[0])
    return total


@contextlib.contextmanager
def _consumer(path: str, gw: Host, workdir: Path) -> Iterator[int | None]:
    from nfq import netfilter
    from nfq.policy import InspectionPolicy, QueueRange

    if path in ("kernel_nat", "xdp_fastpath"):
        yield None
        return
    depth = 65536 if path.startswith("builtin_bypass") else 0
    policy = InspectionPolicy(queues=QueueRange(), fail_open=False, stream_depth=depth)
    netfilter.apply(policy, in_interface="inside", netns=gw.netns, backend="iptables")
    ready: Path | None = workdir / f"{path}.ready"
    assert ready is not None
    ready.unlink(missing_ok=True)
    rules = workdir / "bench.rules"
    rules.write_text("\n".join(_rules(path)) + "\n")
    started = workdir / "suricata" / "log" / "suricata.log"  # Suricata's readiness
    if path == "naive_nfqueue":
        argv = [sys.executable, "-c", NAIVE, str(ready)]
    elif path.startswith("suricata"):
        from nfq.suricata.config import SuricataPaths, write_config

        paths = SuricataPaths.under(workdir / "suricata")
        write_config(policy.model_copy(update={"rule_files": (rules,)}), paths)
        argv = ["suricata", "-c", str(paths.config), "-q", "0"]
        started.unlink(missing_ok=True)
        ready = None
    else:
        stats = workdir / "stats.json"
        argv = [sys.executable, "-m", "nfq", "engine", "--queues", "0", "--rules", str(rules),
                "--stream-depth", str(depth), "--stats", str(stats), "--fail-closed"]  # fmt: skip
        ready = workdir / "stats.q0.json"
        ready.unlink(missing_ok=True)
    proc = subprocess.Popen(
        gw.argv("taskset", "-c", str(GATEWAY_CPU), *argv), cwd=ROOT,
        env={**os.environ, "PYTHONPATH": ROOT}, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + (20 if ready is not None else SURICATA_START_SECONDS)
        while not (ready.exists() if ready is not None else _suricata_started(started)):
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise PerfError(f"{path} consumer did not start: {err[-500:]}")
            time.sleep(0.05)
        yield proc.pid  # ip netns exec execs: this is the consumer
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        netfilter.remove(netns=gw.netns)


def measure(path: str, rates: tuple[int, ...], seconds: float, workdir: Path,
            tuning: Tuning) -> tuple[list[Measure], dict[str, float]]:  # fmt: skip
    """One consumer session of ``path``: a warm-up, one measurement per rate, then UDP
    request/response latency (sockperf ping-pong, a new flow: inspected like any)."""
    t = tuning.target
    gw = t.gateway
    gw.run("conntrack", "-F", check=False)
    flow = UdpFlow(
        src_mac=t.generator.read(f"/sys/class/net/{t.generator_dev}/address").strip(),
        dst_mac=gw.read(f"/sys/class/net/{t.ingress_dev}/address").strip(),
        saddr=t.generator_ip,
        daddr=t.service_ip,
    )
    out: list[Measure] = []
    with contextlib.ExitStack() as stack:
        pid = stack.enter_context(_consumer(path, gw, workdir))
        # warm-up: ARP, conntrack entry, and (bypass path) the inspected head of the flow
        send(t.generator, t.generator_dev, flow, min(COST_RATE, 20000), 0.5)
        time.sleep(0.3)
        if path in OFFLOADED:
            stack.enter_context(_offloaded(tuning, flow))
        for rate in rates:
            out.append(_one(path, rate, seconds, tuning, flow, pid))
        try:
            latency = rr.sockperf(t.generator, t.service_ip, t.sockperf_port, seconds, RR_PORT)
        except PerfError as exc:
            log.warning("%s: sockperf: %s", path, exc)
            latency = {}
    return out, latency


def _one(path: str, rate: int, seconds: float, tuning: Tuning, flow: UdpFlow,
         pid: int | None) -> Measure:  # fmt: skip
    t = tuning.target
    gw = t.gateway

    def counters() -> tuple[int, int, int]:
        cpu = sum(x.run_ns for x in tuning.gateway_cpu()) + (_cpu_ns(pid) if pid else 0)
        return dev_counter(t.sink, t.sink_dev, "rx_packets"), _queued(gw), cpu

    before = counters()
    gen = send(t.generator, t.generator_dev, flow, rate, seconds)
    time.sleep(0.2)
    after = counters()
    if not gen.ok:
        raise PerfError(f"{path}: generator failed: {gen.message}")
    delivered, queued, cpu = (a - b for a, b in zip(after, before, strict=True))
    return Measure(path, rate, gen.sent, delivered, gen.seconds or seconds, cpu, queued)


@contextlib.contextmanager
def _offloaded(tuning: Tuning, flow: UdpFlow) -> Iterator[None]:
    """The product's fast path behind the engine: ``xdp_gateway`` on both interfaces
    and the offloader syncing every 0.2 s from a thread in the gateway's namespace;
    returns once the (bypassed) flow is in the flow table."""
    from perf.bpf import Programs
    from xdp.ctnetlink import PyrouteKernel
    from xdp.offload import Interface, Offloader

    t = tuning.target
    progs = Programs()
    stop = threading.Event()
    offloaders: list[Offloader] = []
    errors: list[BaseException] = []

    def loop(ports: list[Interface]) -> None:
        from pyroute2 import netns

        try:
            netns.setns(str(t.gateway.netns))  # this thread only: ctnetlink of the gateway
            kernel = PyrouteKernel()
            dp = progs.dataplane()
            off = Offloader(dp, kernel, ports[0], ports[1], dp.flow_table.capacity)
            offloaders.append(off)
            try:
                while not stop.wait(0.2):
                    off.sync()
            finally:
                kernel.close()
        except BaseException as exc:  # reported by the waiting caller
            errors.append(exc)

    thread: threading.Thread | None = None
    try:
        ports = []
        for dev in (t.ingress_dev, t.egress_dev):
            progs.attach(t.gateway, dev, "xdp_gateway")
            mac = t.gateway.read(f"/sys/class/net/{dev}/address").strip()
            ports.append(Interface(progs.ifindex(t.gateway, dev), mac))
        tuning.pin(sink=False, fifo=False)  # the attach recreated the NAPI thread
        thread = threading.Thread(target=loop, args=(ports,), name="offloader", daemon=True)
        thread.start()
        # one reply from the service: the flow becomes "replied", hence offloadable
        reply = (
            "import socket,sys;s=socket.socket(2,2);s.bind((sys.argv[1],int(sys.argv[2])));"
            "s.sendto(b'r',(sys.argv[3],int(sys.argv[4])))"
        )
        t.sink.run(sys.executable, "-c", reply, flow.daddr, str(flow.dport), t.public_ip,
                   str(flow.sport))  # fmt: skip
        deadline = time.monotonic() + 5
        while not (offloaders and offloaders[0].offloaded):
            if errors or time.monotonic() > deadline:
                why = repr(errors[0]) if errors else offloaders[0].stats.as_dict()
                raise PerfError(f"the bypassed flow was not offloaded: {why}")
            send(t.generator, t.generator_dev, flow, 1000, 0.1)
        yield
    finally:
        stop.set()
        if thread is not None:
            thread.join()
        progs.detach_all()
        progs.close()
        tuning.pin(sink=False, fifo=False)  # and the detach recreated it again


@dataclass(frozen=True, slots=True)
class Settings:
    rate_pps: int = 300_000  # capacity: above every consumer's
    seconds: float = 4.0
    runs: int = 3

    @classmethod
    def quick(cls) -> Settings:
        return cls(runs=1, seconds=2.0)


def run(args: argparse.Namespace, target: Target, progress: Callable[[str], None]) -> list[Result]:
    """``python -m perf nfq``: settings from the command line."""
    if not target.lab:
        raise PerfError("the nfq suite runs in the lab only (for now)")
    return measure_all(target, settings_for(args, Settings(), Settings.quick()), progress)


def measure_all(target: Target, s: Settings, progress: Callable[[str], None]) -> list[Result]:
    """Every path, round-robin, ``s.runs`` times: cost at COST_RATE, capacity at
    ``s.rate_pps``, latency."""
    tuning = Tuning(target)
    cost: dict[str, list[Measure]] = {p: [] for p in PATHS}
    capacity: dict[str, list[Measure]] = {p: [] for p in PATHS}
    latency: dict[str, list[dict[str, float]]] = {p: [] for p in PATHS}
    gw = tuning.target.gateway
    masquerade = nft_masquerade(tuning.target.egress_dev)
    try:
        tuning.apply()
        tuning.pin(sink=False, fifo=False)
        gw.run("sh", "-c", f"printf '%s' '{masquerade}' | nft -f -")  # NAT, as the product
        with tempfile.TemporaryDirectory(prefix="spectra-nfq-") as tmp:
            for i in range(s.runs):
                for path in PATHS:
                    progress(f"run {i + 1}/{s.runs}: {path} at {COST_RATE} and {s.rate_pps} pps")
                    (c, cap), lat = measure(
                        path, (COST_RATE, s.rate_pps), s.seconds, Path(tmp), tuning
                    )
                    cost[path].append(c)
                    capacity[path].append(cap)
                    latency[path].append(lat)
    finally:
        gw.run("nft", "delete", "table", "ip", NFT_TABLE, check=False)
        tuning.restore()
    return _cost_results(cost) + _capacity_results(capacity, s.rate_pps) + _latency_results(latency)


def _latency_results(latency: dict[str, list[dict[str, float]]]) -> list[Result]:
    """sockperf percentiles per path against the path without a queue."""
    out = []
    for key in ("p50", "p99", "p99.9"):
        med = {
            p: statistics.median(v) if (v := [r[key] for r in rs if key in r]) else None
            for p, rs in latency.items()
        }
        for p, rs in latency.items():
            vals = [r[key] for r in rs if key in r]
            out.append(Result(
                f"udp_rr_{key}", p, "usec", med[p], "kernel_nat", med["kernel_nat"],
                runs=[{"value": r.get(key), "valid": key in r} for r in rs],
                valid=bool(vals), minimum=min(vals, default=None), maximum=max(vals, default=None),
                note="sockperf ping-pong, 64 B UDP, a new flow through the inspection chain",
            ))  # fmt: skip
    return out


def _cost_results(cost: dict[str, list[Measure]]) -> list[Result]:
    def med(ms: list[Measure]) -> float | None:
        vals = [m.ns_per_packet for m in ms if m.lossless and m.ns_per_packet is not None]
        return statistics.median(vals) if vals else None

    base = med(cost[BASELINE])
    out = []
    for p, ms in cost.items():
        vals = [m.ns_per_packet for m in ms if m.lossless and m.ns_per_packet is not None]
        out.append(Result(
            "gateway_cpu_ns_per_packet", p, "ns/packet", med(ms), BASELINE, base,
            runs=[_asdict(m) for m in ms], offered_pps=COST_RATE, valid=bool(vals),
            minimum=min(vals, default=None), maximum=max(vals, default=None),
            note=f"queued {sum(m.queued for m in ms)} of {sum(m.sent for m in ms)} sent"
            if vals else "no lossless run",
        ))  # fmt: skip
    return out


def _capacity_results(capacity: dict[str, list[Measure]], rate: int) -> list[Result]:
    med = {p: statistics.median(m.delivered_pps for m in ms) for p, ms in capacity.items()}
    out = []
    for p, ms in capacity.items():
        pps = [m.delivered_pps for m in ms]
        out.append(Result(
            "delivered_pps", p, "packets/s", med[p], BASELINE, med[BASELINE],
            runs=[_asdict(m) for m in ms], offered_pps=rate, minimum=min(pps),
            maximum=max(pps), lower_is_better=False,
            note="fail-closed: packets the consumer could not take were dropped",
        ))  # fmt: skip
    return out


def _asdict(m: Measure) -> dict[str, Any]:
    return {f: getattr(m, f) for f in m.__slots__}


def winners(results: Sequence[Result]) -> dict[str, str]:
    """Per metric and row (inspect, bypass, bypass_xdp, inspect_10k, bypass_10k): which
    engine wins (``builtin``, ``suricata``, or ``none`` when either has no valid value)."""
    by = {(r.metric, r.path): r for r in results}
    out = {}
    for metric in ("gateway_cpu_ns_per_packet", "delivered_pps"):
        for row in ("inspect", "bypass", "bypass_xdp", "inspect_10k", "bypass_10k"):
            b, s = by.get((metric, f"builtin_{row}")), by.get((metric, f"suricata_{row}"))
            if b is None or s is None:
                continue
            if b.value is None or s.value is None or not (b.valid and s.valid):
                out[f"{metric}:{row}"] = "none"
                continue
            builtin_better = b.value > s.value if not b.lower_is_better else b.value < s.value
            out[f"{metric}:{row}"] = "builtin" if builtin_better else "suricata"
    return out


def summary(results: Sequence[Result]) -> str:
    """Capacity of each path against the naive consumer, and the winner per row, one
    JSON line."""
    ratios = {r.path: round(r.ratio or 0, 2) for r in results if r.metric == "delivered_pps"}
    return json.dumps({"capacity_vs_naive": ratios, "winner": winners(results)}) if ratios else ""


def main(argv: list[str] | None = None) -> int:
    """``python -m perf.nfq ARGS`` is ``python -m perf nfq ARGS``."""
    from perf.__main__ import main as perf_main

    return perf_main(["nfq", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
