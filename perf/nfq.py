"""The ``nfq`` suite: inspection-path cost per packet and capacity, against a naive
Python accept-all NFQUEUE consumer measured in the same run.

One 64-byte UDP flow (trafgen, pinned to the generator CPU) goes from cs-ws-a through
cs-gw-a (kernel NAT + the product's inspection chain). The method of the dataplane
suite, adapted: the gateway gets one CPU for everything it does — its ingress NAPI
thread (threaded NAPI, pinned, at normal priority so it shares the CPU with the
consumer instead of starving it) and the consumer process. Paths:

* ``kernel_nat`` - no queue at all (the ceiling);
* ``naive_nfqueue`` - the baseline: ``netfilterqueue`` callback doing ``accept()``;
* ``builtin_inspect`` - the built-in engine with a 300-rule set, stream depth 0 (every
  packet parsed, flow-tracked and scanned by Hyperscan);
* ``builtin_bypass`` - the same with a 64 KiB stream depth: the flow is inspected, then
  bypassed through the conntrack mark and no longer queued.

Every queue is fail-closed here (no ``--queue-bypass``, no NFQA_CFG_F_FAIL_OPEN): a
packet the consumer cannot take is dropped, never delivered uninspected, so a
delivered packet is an inspected (or verdict-bypassed) one. Two figures per path:

* ``gateway_cpu_ns_per_packet`` at COST_RATE, below every path's capacity: on-CPU ns
  of the NAPI thread, ``ksoftirqd`` and the consumer's threads (schedstat) per
  delivered packet; a run that lost more than 2 % is invalid;
* ``delivered_pps`` at ``--rate`` (default 300k, above the consumers' capacity):
  packets leaving the outside interface per second — the path's capacity on one core.

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
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from perf import report
from perf.generator import UdpFlow, send
from perf.method import GATEWAY_CPU, Tuning, dev_counter
from perf.report import Result
from perf.target import Host, PerfError, lab_target

log = logging.getLogger("spectra.perf")
ROOT = str(Path(__file__).resolve().parents[1])
PATHS = ("kernel_nat", "naive_nfqueue", "builtin_inspect", "builtin_bypass")
BASELINE = "naive_nfqueue"
COST_RATE = 30_000  # pps every path delivers in full on one core
MAX_LOSS = 0.02
NAIVE = (
    "import netfilterqueue,signal,sys\n"
    "q=netfilterqueue.NetfilterQueue();q.bind(0,lambda p:p.accept(),max_len=16384)\n"
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

    if path == "kernel_nat":
        yield None
        return
    depth = 65536 if path == "builtin_bypass" else 0
    policy = InspectionPolicy(queues=QueueRange(), fail_open=False, stream_depth=depth)
    netfilter.apply(policy, in_interface="inside", netns=gw.netns, backend="iptables")
    ready = workdir / f"{path}.ready"
    ready.unlink(missing_ok=True)
    if path == "naive_nfqueue":
        argv = [sys.executable, "-c", NAIVE, str(ready)]
    else:
        rules = workdir / "bench.rules"
        rules.write_text("\n".join(RULES) + "\n")
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
        deadline = time.monotonic() + 20
        while not ready.exists():
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
            tuning: Tuning) -> list[Measure]:  # fmt: skip
    """One consumer session of ``path``: a warm-up, then one measurement per rate."""
    t = tuning.target
    gw = t.gateway
    gw.run("conntrack", "-F", check=False)
    flow = UdpFlow(
        src_mac=t.generator.read(f"/sys/class/net/{t.generator_dev}/address").strip(),
        dst_mac=gw.read(f"/sys/class/net/{t.ingress_dev}/address").strip(),
        saddr=t.generator_ip,
        daddr=t.service_ip,
    )
    out = []
    with _consumer(path, gw, workdir) as pid:
        # warm-up: ARP, conntrack entry, and (bypass path) the inspected head of the flow
        send(t.generator, t.generator_dev, flow, min(COST_RATE, 20000), 0.5)
        time.sleep(0.3)
        for rate in rates:
            out0, q0 = dev_counter(gw, t.egress_dev, "tx_packets"), _queued(gw)
            cpu0 = sum(x.run_ns for x in tuning.gateway_cpu()) + (_cpu_ns(pid) if pid else 0)
            gen = send(t.generator, t.generator_dev, flow, rate, seconds)
            time.sleep(0.2)
            out1, q1 = dev_counter(gw, t.egress_dev, "tx_packets"), _queued(gw)
            cpu1 = sum(x.run_ns for x in tuning.gateway_cpu()) + (_cpu_ns(pid) if pid else 0)
            if not gen.ok:
                raise PerfError(f"{path}: generator failed: {gen.message}")
            out.append(Measure(path, rate, gen.sent, out1 - out0, gen.seconds or seconds,
                               cpu1 - cpu0, q1 - q0))  # fmt: skip
    return out


def run(rate: int, seconds: float, runs: int) -> list[Result]:
    tuning = Tuning(lab_target("a"))
    cost: dict[str, list[Measure]] = {p: [] for p in PATHS}
    capacity: dict[str, list[Measure]] = {p: [] for p in PATHS}
    try:
        tuning.apply()
        tuning.pin(sink=False, fifo=False)
        with tempfile.TemporaryDirectory(prefix="spectra-nfq-") as tmp:
            for i in range(runs):
                for path in PATHS:
                    print(f"# run {i + 1}/{runs}: {path} at {COST_RATE} and {rate} pps",
                          file=sys.stderr, flush=True)  # fmt: skip
                    c, cap = measure(path, (COST_RATE, rate), seconds, Path(tmp), tuning)
                    cost[path].append(c)
                    capacity[path].append(cap)
    finally:
        tuning.restore()
    return _cost_results(cost) + _capacity_results(capacity, rate)


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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m perf.nfq",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--json", type=Path, required=True)
    p.add_argument("--quick", action="store_true", help="1 run x 2 s per path")
    p.add_argument("--rate", type=int, default=300_000, help="offered pps (default 300000)")
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args(argv)
    runs, seconds = (1, 2.0) if args.quick else (args.runs, args.seconds)
    from perf.lab import Lab, LabError, exclusive, require_root

    started = time.monotonic()
    try:
        require_root()
        with exclusive():
            lab = Lab()
            was_up = bool(lab.status()["up"])
            if not was_up:
                lab.up()
            try:
                results = run(args.rate, seconds, runs)
            finally:
                if not was_up:
                    lab.down()
    except (PerfError, LabError) as exc:
        print(f"perf nfq: {exc}", file=sys.stderr)
        return 1
    wall = time.monotonic() - started
    doc = report.document("nfq", results, wall_seconds=round(wall, 1), quick=args.quick, lab=True)
    report.write_json(doc, args.json)
    print(report.markdown(results))
    print(f"wall time {wall:.0f} s; JSON in {args.json}")
    print(json.dumps({r.path: round(r.ratio or 0, 2) for r in results
                      if r.metric == "delivered_pps"}))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
