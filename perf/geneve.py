"""The ``geneve`` suite: CPU ns per packet of GWLB two-arm traffic, with the method of
``perf dataplane`` (trafgen pinned to CPU0, the gateway's NAPI thread pinned to CPU1,
schedstat ns of the gateway CPU's threads per packet counted at the sink), against
paths measured in the same run at the same offered rate:

* ``xdp_fastpath``: the product's fast path on a plain (unencapsulated) flow, the
  issue's reference (goal for GENEVE two-arm: <= 1.25x);
* ``kernel_masquerade``: the same plain flow through kernel forwarding + masquerade;
* ``geneve_two_arm``: the same flow GENEVE-encapsulated as a GWLB sends it (three
  class-0x0108 options), decapsulated by ``xdp_gwlb`` (header stored per flow) and,
  the flow being offloaded as the agent offloads an established two-arm flow, NATed
  and redirected by ``xdp_gateway`` (tail call, ``Gwlb.link_fastpath``);
* ``geneve_two_arm_kernel``: the same GENEVE traffic with the flow not offloaded
  (a new or not yet established flow): decap, then kernel forwarding + masquerade;
* ``userspace_geneve``: the same GENEVE traffic through :mod:`perf.gwlbtun`, a Python
  TUN-style handler (gwlbtun's shape) pinned to the gateway CPU; its CPU time is added.

Lab only (the handler and the GWLB programs are started in the gateway's namespace).
Packets travel GWLB -> internet only; the sink drops them with XDP.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from perf import paths
from perf.bpf import inside
from perf.generator import UdpFlow, send
from perf.method import GATEWAY_CPU, cpu_delta, dev_counter, read_schedstat
from perf.paths import IPPROTO_UDP, Flow, SuiteBase
from perf.report import Result
from perf.stats import Run, SchedStat, check_ordering, check_run, summarize
from perf.suites import settings_for
from perf.target import PerfError, Target

log = logging.getLogger("spectra.perf")

PATHS = (
    "xdp_fastpath",
    "kernel_masquerade",
    "geneve_two_arm",
    "geneve_two_arm_kernel",
    "userspace_geneve",
)
GENEVE_XDP_PATHS = ("geneve_two_arm", "geneve_two_arm_kernel")
BASELINE = "xdp_fastpath"
GOAL = 1.25
RATE_FLOW = Flow(IPPROTO_UDP, 40000, 9)
GENEVE_SPORT = 50000
TUN = "gwlbtun0"
PIN_ROOT = Path("/sys/fs/bpf/spectra-perf")
DEFAULT_RATE = 20_000  # the Python handler keeps up (no loss) at this rate on one core


@dataclass(frozen=True, slots=True)
class Settings:
    rate_pps: int = DEFAULT_RATE
    seconds: float = 5.0
    runs: int = 5
    testrun: tuple[int, int] = (7, 2000)

    @classmethod
    def quick(cls, rate_pps: int = DEFAULT_RATE) -> Settings:
        return cls(rate_pps, 2.0, 3, (3, 500))


@dataclass(frozen=True, slots=True)
class RawFrame:
    """trafgen packets: one fixed frame given as bytes."""

    frame: bytes

    def config(self) -> str:
        return "{\n  " + ", ".join(f"0x{b:02x}" for b in self.frame) + "\n}\n"


def geneve_frame(plain: UdpFlow, outer_dst: str) -> bytes:
    """``plain`` as GWLB would deliver it to ``outer_dst``: outer IPv4/UDP to 6081, a
    GENEVE header with the three AWS options, the plain IPv4/UDP packet inside."""
    from scapy.layers.inet import IP, UDP
    from scapy.packet import Raw

    from geneve.aws import GwlbTlvs
    from geneve.encap import encapsulate

    inner = bytes(
        IP(src=plain.saddr, dst=plain.daddr, ttl=64, flags="DF")
        / UDP(sport=plain.sport, dport=plain.dport)
        / Raw(b"A" * 18)
    )
    header = GwlbTlvs(0x0A1B2C3D4E5F6071, 0x8899AABBCCDDEEFF, 0xC00C1E01).header(0x0800)
    ip = encapsulate(inner, header, plain.saddr, outer_dst, GENEVE_SPORT)
    mac = bytes.fromhex(plain.dst_mac.replace(":", "")) + bytes.fromhex(
        plain.src_mac.replace(":", "")
    )
    return mac + b"\x08\x00" + ip


class GeneveSuite(SuiteBase[Settings]):
    def __init__(self, target: Target, settings: Settings, progress: Callable[[str], None]):
        if not target.lab:
            raise PerfError("the geneve suite runs in the lab only (for now)")
        super().__init__(target, settings, progress)
        self.gwlb: Any = None
        self.handler: subprocess.Popen[str] | None = None
        self._sysctls: list[tuple[str, str]] = []

    # ---- orchestration -------------------------------------------------------------

    def run(self) -> list[Result]:
        t, s = self.target, self.settings
        self.preflight()
        self.programs.dataplane()
        gw_ip = self._address(t.ingress_dev)
        plain = UdpFlow(
            src_mac=self.gw.mac(t.generator, t.generator_dev),
            dst_mac=self.gw.mac(t.gateway, t.ingress_dev),
            saddr=t.generator_ip,
            daddr=t.service_ip,
            sport=RATE_FLOW.sport,
            dport=RATE_FLOW.dport,
        )
        encapsulated = RawFrame(geneve_frame(plain, gw_ip))
        rounds: list[dict[str, Run]] = []
        try:
            self.tuning.apply()
            self._load_gwlb()
            self.programs.attach(t.sink, t.sink_dev, "xdp_drop_all")
            self.gw.static_neighbour()
            for i in range(s.runs):
                runs: dict[str, Run] = {}
                for path in PATHS:
                    self.progress(f"geneve run {i + 1}/{s.runs}: {path} at {s.rate_pps} pps")
                    with self._path(path, gw_ip):
                        packets = (
                            plain if path in ("xdp_fastpath", "kernel_masquerade") else encapsulated
                        )
                        runs[path] = self._measure(path, i, packets)
                rounds.append(check_ordering(runs, ("xdp_fastpath", "kernel_masquerade")))
        finally:
            self._stop_handler()
            self._restore_sysctls()
            self.gw.cleanup()
            self.tuning.restore()
            self.programs.close()
            if self.gwlb is not None:
                with inside(t.gateway):
                    self.gwlb.destroy()
        return self._results(rounds) + self._testrun()

    def preflight(self) -> None:
        t = self.target
        for dev in (t.ingress_dev, t.egress_dev):
            if "prog/xdp" in t.gateway.run("ip", "-d", "link", "show", "dev", dev):
                raise PerfError(f"{dev} on {t.gateway} already has an XDP program; stop the agent")
        tables = t.gateway.run("nft", "list", "tables").strip()
        if tables:
            raise PerfError(f"{t.gateway} already has nftables tables ({tables.splitlines()})")

    def _address(self, dev: str) -> str:
        out = self.target.gateway.run("ip", "-4", "-o", "addr", "show", "dev", dev).split()
        if "inet" not in out:
            raise PerfError(f"{dev} on {self.target.gateway} has no IPv4 address")
        return out[out.index("inet") + 1].split("/")[0]

    def _load_gwlb(self) -> None:
        from geneve import Gwlb, GwlbBuild

        with inside(self.target.gateway):
            self.gwlb = Gwlb(
                "perf-geneve",
                self.target.ingress_dev,
                mode="two-arm",
                build=GwlbBuild(flow_table_size=1024),
                pin_root=PIN_ROOT,
            ).load()

    # ---- paths ---------------------------------------------------------------------

    @contextlib.contextmanager
    def _path(self, path: str, gw_ip: str) -> Iterator[None]:
        t = self.target
        if path in ("xdp_fastpath", "kernel_masquerade"):
            paths.setup_rate_path(self.gw, path, RATE_FLOW)
            try:
                yield
            finally:
                paths.teardown_rate_path(self.gw, path)
            return
        self.gw.masquerade(True)
        try:
            if path in GENEVE_XDP_PATHS:
                with inside(t.gateway):
                    self.gwlb.attach("xdp")
                if path == "geneve_two_arm":
                    self._offload_geneve_flow()
            else:
                self._start_handler(gw_ip)
            self.tuning.pin()
            yield
        finally:
            if path in GENEVE_XDP_PATHS:
                with inside(t.gateway):
                    self.gwlb.unlink_fastpath(self.programs.dataplane())
                    self.gwlb.detach()
                with contextlib.suppress(Exception):
                    self.programs.clear_flows()
            else:
                self._stop_handler()
                self._restore_sysctls()
            self.gw.masquerade(False)

    def _offload_geneve_flow(self) -> None:
        """Link decap to the fast path and install the inner flow keyed on the GWLB
        interface, as the offloader does once the kernel established it."""
        t = self.target
        with inside(t.gateway):
            self.gwlb.link_fastpath(self.programs.dataplane())
        self.programs.set_tx_port(t.gateway, t.egress_dev)
        self.gw.install_flow(RATE_FLOW, reverse=False)

    def _start_handler(self, gw_ip: str) -> None:
        t = self.target
        argv = t.gateway.argv(
            "taskset", "-c", str(GATEWAY_CPU), sys.executable, "-m", "perf.gwlbtun",
            "--tun", TUN, "--bind", gw_ip,
        )  # fmt: skip
        self.handler = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        assert self.handler.stdout is not None
        if self.handler.stdout.readline().strip() != "ready":
            raise PerfError("the userspace GENEVE handler did not start")
        t.gateway.run("ip", "link", "set", TUN, "up")
        # Inner sources arrive on the TUN device, not where the route to them points.
        for conf in ("all", TUN):
            key = f"/proc/sys/net/ipv4/conf/{conf}/rp_filter"
            self._sysctls.append((key, t.gateway.read(key).strip()))
            t.gateway.write(key, "0")

    def _stop_handler(self) -> None:
        if self.handler is None:
            return
        self.handler.terminate()
        out, _ = self.handler.communicate(timeout=10)
        log.info("gwlbtun: %s", out.strip().splitlines()[-1:] if out else "")
        self.handler = None

    def _restore_sysctls(self) -> None:
        for key, value in reversed(self._sysctls):
            with contextlib.suppress(PerfError):
                self.target.gateway.write(key, value)
        self._sysctls.clear()

    # ---- measurement -----------------------------------------------------------------

    def _cpu(self) -> tuple[tuple[SchedStat, ...], SchedStat | None]:
        """schedstat of the gateway CPU's threads, and of the userspace handler."""
        handler = read_schedstat(self.handler.pid) if self.handler is not None else None
        return self.tuning.gateway_cpu(), handler

    def _sink_count(self) -> int:
        return dev_counter(self.target.sink, self.target.sink_dev, "xdp_drops")

    def _drained(self) -> int:
        """The sink's count once it stops moving (a slow path may still be busy)."""
        last, deadline = self._sink_count(), time.monotonic() + 3.0
        while time.monotonic() < deadline:
            time.sleep(0.05)
            now = self._sink_count()
            if now == last:
                return now
            last = now
        return last

    def _measure(self, path: str, index: int, packets: Any) -> Run:
        t, s = self.target, self.settings
        offloaded = path in ("xdp_fastpath", "geneve_two_arm")
        fast0 = self.programs.flow_packets() if offloaded else 0
        decap0 = self._decapped() if path in GENEVE_XDP_PATHS else 0
        counted0 = self._sink_count()
        udp0 = self._udp_errors()
        cpu0 = self._cpu()
        gen = send(t.generator, t.generator_dev, packets, s.rate_pps, s.seconds)
        counted = self._drained() - counted0
        cpu1 = self._cpu()
        cpu_ns, wakeups = cpu_delta(cpu0[0], cpu1[0])
        if cpu0[1] is not None and cpu1[1] is not None:
            cpu_ns += (cpu1[1] - cpu0[1]).run_ns  # the handler's own CPU (same core)
        extra = {"udp_rcvbuf_errors": float(self._udp_errors() - udp0)}
        run = Run(
            path, index, s.rate_pps, gen.sent, gen.achieved_pps, counted, cpu_ns, wakeups,
            extra=extra,
        )  # fmt: skip
        if not gen.ok:
            run = run.invalid(gen.message)
        if offloaded:
            fast = self.programs.flow_packets() - fast0
            if fast < 0.98 * max(counted, 1):
                run = run.invalid(f"only {fast} of {counted} packets took the fast path")
        if path in GENEVE_XDP_PATHS:
            decap = self._decapped() - decap0
            if decap < 0.98 * max(counted, 1):
                run = run.invalid(f"only {decap} of {counted} packets were decapsulated")
        return check_run(run)

    def _udp_errors(self) -> int:
        """The gateway's UDP RcvbufErrors (a userspace handler that fell behind)."""
        lines = [ln.split() for ln in self.target.gateway.read("/proc/net/snmp").splitlines()]
        udp = [ln for ln in lines if ln and ln[0] == "Udp:"]
        return int(dict(zip(udp[0], udp[1], strict=True))["RcvbufErrors"])

    def _decapped(self) -> int:
        return int(self.gwlb.counters()["DECAP"]["packets"])

    # ---- results ---------------------------------------------------------------------

    def _results(self, rounds: list[dict[str, Run]]) -> list[Result]:
        s = self.settings
        summaries = {}
        for path in PATHS:
            runs = [r[path] for r in rounds if path in r]
            summ = summarize([r.ns_per_packet for r in runs], [r.valid for r in runs])
            valid = [r for r in runs if r.valid]
            ppw = summarize([r.pkts_per_wakeup for r in valid]).median if valid else None
            summaries[path] = (runs, summ, ppw)

        def result(path: str, baseline: str, note: str) -> Result:
            runs, summ, ppw = summaries[path]
            return Result(
                "cpu_ns_per_packet",
                path,
                "ns/packet",
                summ.median,
                baseline,
                summaries[baseline][1].median,
                [r.as_json() for r in runs],
                s.rate_pps,
                ppw,
                summ.valid_runs > 0,
                note if summ.valid_runs else "no valid run",
                summ.minimum,
                summ.maximum,
            )

        return [
            result("xdp_fastpath", BASELINE, "plain UDP flow, offloaded (the reference)"),
            result("kernel_masquerade", BASELINE, "plain UDP flow, kernel forward + masquerade"),
            result(
                "geneve_two_arm",
                BASELINE,
                f"goal <= {GOAL}x xdp_fastpath; xdp_gwlb decap + fast-path NAT and redirect "
                "(offloaded two-arm flow)",
            ),
            result(
                "geneve_two_arm_kernel",
                "kernel_masquerade",
                "flow not offloaded: decap overhead over the same kernel NAT",
            ),
            result(
                "userspace_geneve",
                "geneve_two_arm",
                "Python TUN handler (gwlbtun-style) + kernel NAT, handler CPU included",
            ),
        ]

    def _testrun(self) -> list[Result]:
        """BPF_PROG_TEST_RUN ns of the GWLB programs vs xdp_gateway (perf.gwlbprogcost)."""
        from perf import gwlbprogcost

        self.progress("BPF_PROG_TEST_RUN: xdp_gwlb, tc_gwlb_encap, xdp_gateway")
        try:
            r = gwlbprogcost.measure(*self.settings.testrun)
        except (ImportError, OSError, PerfError) as exc:
            return [
                Result(
                    "prog_test_run_ns", "xdp_gwlb", "ns/packet", None, valid=False, note=str(exc)
                )
            ]
        note = "net of xdp_drop_all on the same frame"
        return [
            Result(
                "prog_test_run_ns", "xdp_gwlb", "ns/packet", r["decap_net_ns"],
                "xdp_gateway", r["fastpath_net_ns"], note=note,
            ),
            Result(
                "prog_test_run_ns", "tc_gwlb_encap", "ns/packet", r["encap_ns"],
                "xdp_gateway", r["fastpath_ns"], note="gross (tc test-run skb allocation included)",
            ),
        ]  # fmt: skip


def run(args: argparse.Namespace, target: Target, progress: Callable[[str], None]) -> list[Result]:
    """``python -m perf geneve``: settings from the command line."""
    return GeneveSuite(target, settings_for(args, Settings(), Settings.quick()), progress).run()
