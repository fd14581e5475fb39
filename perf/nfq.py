"""The ``nfq`` suite: inspection-path packet rate and CPU per packet, against a naive
Python accept-all NFQUEUE consumer measured in the same run.

One 64-byte UDP flow (trafgen, pinned to the generator CPU) is offered at a fixed rate
from cs-ws-a through cs-gw-a (kernel NAT baseline + the product's inspection chain);
the consumer is pinned to the gateway CPU. Paths:

* ``kernel_nat`` - no queue at all (the ceiling);
* ``naive_nfqueue`` - the baseline: ``netfilterqueue`` callback doing ``accept()``;
* ``builtin_inspect`` - the built-in engine with a 300-rule set, stream depth 0 (every
  packet parsed, flow-tracked and scanned by Hyperscan);
* ``builtin_bypass`` - the same with a 64 KiB stream depth: the flow is inspected, then
  bypassed through the conntrack mark and no longer queued.

Delivered rate = packets leaving the gateway's outside interface per second; CPU per
packet = on-CPU ns of the consumer's threads (``/proc/<pid>/task/*/schedstat``) per
delivered packet. Run: ``python -m perf.nfq --json perf-results/nfq.json [--quick]``.
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
from perf.method import GATEWAY_CPU, dev_counter
from perf.report import Result
from perf.target import Host, PerfError, lab_target

log = logging.getLogger("spectra.perf")
ROOT = str(Path(__file__).resolve().parents[1])
PATHS = ("kernel_nat", "naive_nfqueue", "builtin_inspect", "builtin_bypass")
BASELINE = "naive_nfqueue"
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
    delivered_pps: float
    consumer_ns_per_packet: float | None
    seconds: float


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
    policy = InspectionPolicy(queues=QueueRange(), fail_open=True, stream_depth=depth)
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
                "--stream-depth", str(depth), "--stats", str(stats)]  # fmt: skip
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


def measure(path: str, rate: int, seconds: float, workdir: Path) -> Measure:
    t = lab_target("a")
    gw = t.gateway
    gw.run("conntrack", "-F", check=False)
    flow = UdpFlow(
        src_mac=t.generator.read(f"/sys/class/net/{t.generator_dev}/address").strip(),
        dst_mac=gw.read(f"/sys/class/net/{t.ingress_dev}/address").strip(),
        saddr=t.generator_ip,
        daddr=t.service_ip,
    )
    with _consumer(path, gw, workdir) as pid:
        # warm-up: ARP, conntrack entry, and (bypass path) the inspected head of the flow
        send(t.generator, t.generator_dev, flow, min(rate, 20000), 0.5)
        time.sleep(0.3)
        out0 = dev_counter(gw, t.egress_dev, "tx_packets")
        cpu0 = _cpu_ns(pid) if pid else 0
        gen = send(t.generator, t.generator_dev, flow, rate, seconds)
        time.sleep(0.2)
        out1 = dev_counter(gw, t.egress_dev, "tx_packets")
        cpu1 = _cpu_ns(pid) if pid else 0
    if not gen.ok:
        raise PerfError(f"{path}: generator failed: {gen.message}")
    delivered = out1 - out0
    secs = gen.seconds or seconds
    return Measure(
        path, rate, gen.sent, delivered / secs,
        (cpu1 - cpu0) / delivered if pid and delivered else None, secs,
    )  # fmt: skip


def run(rate: int, seconds: float, runs: int) -> list[Result]:
    rounds: dict[str, list[Measure]] = {p: [] for p in PATHS}
    with tempfile.TemporaryDirectory(prefix="spectra-nfq-") as tmp:
        for i in range(runs):
            for path in PATHS:
                print(f"# run {i + 1}/{runs}: {path} at {rate} pps", file=sys.stderr, flush=True)
                rounds[path].append(measure(path, rate, seconds, Path(tmp)))
    med = {p: statistics.median(m.delivered_pps for m in ms) for p, ms in rounds.items()}
    results = []
    for p, ms in rounds.items():
        pps = [m.delivered_pps for m in ms]
        results.append(Result(
            "delivered_pps", p, "packets/s", med[p], BASELINE, med[BASELINE],
            runs=[_asdict(m) for m in ms],
            offered_pps=rate, minimum=min(pps), maximum=max(pps), lower_is_better=False,
        ))  # fmt: skip
        cpu = [m.consumer_ns_per_packet for m in ms if m.consumer_ns_per_packet is not None]
        if cpu:
            base = [m.consumer_ns_per_packet for m in rounds[BASELINE]
                    if m.consumer_ns_per_packet is not None]  # fmt: skip
            results.append(Result(
                "consumer_cpu_ns_per_packet", p, "ns/packet", statistics.median(cpu),
                BASELINE, statistics.median(base) if base else None, offered_pps=rate,
                minimum=min(cpu), maximum=max(cpu),
            ))  # fmt: skip
    return results


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
