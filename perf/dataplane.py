"""The ``dataplane`` suite: CPU ns per forwarded packet of each path at a fixed offered
rate (the method of issue 4), the same for a destination-NATed (port-forwarded) flow,
per-program cost through BPF_PROG_TEST_RUN, and UDP request/response latency, TCP
connection rate and TCP throughput through each path.

Baselines, measured in the same run: ``kernel_masquerade`` (the NAT instance) for
every data-path figure, ``kernel_dnat`` (an nft ``dnat`` rule) for the forwarded flow
on the fast path, ``xdp_drop`` as the floor for the fast path, ``xdp_drop_all`` on the
same frame for per-program cost.  ``--phases`` runs a subset (``rate``, ``dnat``,
``connections``, ``testrun``, ``rr``).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from perf import paths, progcost, rr
from perf.generator import Packets, SynFlood, UdpFlow, send
from perf.lab import Lab
from perf.method import GENERATOR_CPU, cpu_delta, dev_counter, pinned_process
from perf.paths import (
    DNAT_PORT,
    FASTPATH_DNAT,
    IPPROTO_TCP,
    IPPROTO_UDP,
    KERNEL_DNAT,
    REDIRECT_ONLY,
    Flow,
    SuiteBase,
)
from perf.report import Result
from perf.stats import EXPECTED_ORDER, Run, check_ordering, check_run, summarize
from perf.suites import settings_for
from perf.target import PerfError, Target

log = logging.getLogger("spectra.perf")

BASELINE = "kernel_masquerade"
# Paths whose connection set-up is measured: the NAT instance, and the product (new
# connections always miss the flow table: XDP parse + the same kernel path).
CONNECTION_PATHS = ("xdp_fastpath", "kernel_masquerade")
# Saturation: more SYNs than one core sets up (~200k/s here), for long enough to count
# and short enough that rate x seconds stays below nf_conntrack_max.
SATURATION_SYN_RATE = 400_000
SATURATION_SECONDS = 0.5
SATURATED_BUSY = 0.9
RATE_FLOW = Flow(IPPROTO_UDP, 40000, 9)
SOCKPERF_CPORT = 41111
IPERF3_CPORT = 41201
FAST_PATHS = ("xdp_fastpath", FASTPATH_DNAT)  # paths whose flow counters are checked
PHASES = ("rate", "dnat", "connections", "testrun", "rr")


@dataclass(frozen=True, slots=True)
class Settings:
    rate_pps: int = 200_000
    seconds: float = 5.0
    runs: int = 5
    rr_seconds: float = 3.0
    rr_runs: int = 3
    testrun_batch: int = 1000
    testrun_batches: int = 5
    # SYN rate x seconds stays well below nf_conntrack_max (262,144 here).
    conn_rate: int = 40_000
    conn_seconds: float = 4.0

    @classmethod
    def quick(cls, rate_pps: int = 200_000) -> Settings:
        return cls(rate_pps, 2.0, 3, 2.0, 1, 200, 3, 40_000, 2.0)


class Suite(SuiteBase[Settings]):
    def __init__(
        self,
        target: Target,
        settings: Settings,
        progress: Callable[[str], None],
        phases: tuple[str, ...] = PHASES,
    ) -> None:
        super().__init__(target, settings, progress)
        self.unavailable: dict[str, str] = {}
        self._sink_dropping = False
        self.phases = phases

    # ---- orchestration ---------------------------------------------------------------

    def run(self) -> list[Result]:
        try:
            self.programs.dataplane()
        except PerfError as exc:
            for path in ("xdp_fastpath", "xdp_drop", REDIRECT_ONLY):
                self.unavailable[path] = f"unavailable: product XDP programs: {exc}"
        self.preflight()
        results: list[Result] = []
        phases: dict[str, Callable[[], list[Result]]] = {
            "rate": self.rate_phase,
            "dnat": self.dnat_phase,
            "connections": self.connection_phase,
            "testrun": self.testrun_phase,
            "rr": self.rr_phase,
        }
        try:
            self.tuning.apply()
            for name in self.phases:
                results += phases[name]()
        finally:
            self.gw.cleanup()
            self.tuning.restore()
            self.programs.close()
        return results

    def preflight(self) -> None:
        """Refuse a gateway that is already in use: a foreign XDP program or nft ruleset
        would be measured as part of every path."""
        t = self.target
        for dev in (t.ingress_dev, t.egress_dev):
            if "prog/xdp" in t.gateway.run("ip", "-d", "link", "show", "dev", dev):
                raise PerfError(
                    f"{dev} on {t.gateway} already has an XDP program (is the agent running?); "
                    "stop it before benchmarking"
                )
        tables = t.gateway.run("nft", "list", "tables").strip()
        if tables:
            raise PerfError(
                f"{t.gateway} already has nftables tables ({tables.splitlines()}); "
                "the kernel paths must start from an empty ruleset"
            )

    # ---- CPU per packet ------------------------------------------------------------------

    def rate_phase(self) -> list[Result]:
        s = self.settings
        sink_drop = self._sink_drop(True)
        # xdp_redirect_only sits outside the strict ordering: the fast path may cost
        # the same within noise.
        order = [p for p in (REDIRECT_ONLY, *EXPECTED_ORDER) if p not in self.unavailable]
        flow = UdpFlow(*self._addresses(), sport=RATE_FLOW.sport, dport=RATE_FLOW.dport)
        rounds: list[dict[str, Run]] = []
        for i in range(s.runs):
            round_runs = {}
            for path in order:
                self.progress(f"cpu/packet run {i + 1}/{s.runs}: {path} at {s.rate_pps} pps")
                paths.setup_rate_path(self.gw, path, RATE_FLOW)
                try:
                    run = self._measure(path, i, flow, s.rate_pps, s.seconds, sink_drop)
                    round_runs[path] = self._check_fast_path(run)
                finally:
                    paths.teardown_rate_path(self.gw, path)
            rounds.append(check_ordering(round_runs))
        self._sink_drop(False)
        out = self._cpu_results("cpu_ns_per_packet", order, rounds, s.rate_pps)
        out += [self._unavailable("cpu_ns_per_packet", p) for p in self.unavailable]
        valid = {r.path: r for r in out if r.valid}
        if fast := valid.get("xdp_fastpath"):
            for base, note in (
                ("xdp_drop", "goal <= 1.8x xdp_drop"),
                (REDIRECT_ONLY, "what the product's program adds to a bare redirect"),
            ):
                if base in valid:
                    ref = valid[base].value
                    out.append(replace(fast, baseline=base, baseline_value=ref, note=note))
        return out

    def dnat_phase(self) -> list[Result]:
        """CPU per packet of a port-forwarded flow: UDP to the gateway's ingress address
        :DNAT_PORT, translated to the service's :9 by an nft ``dnat`` rule
        (``kernel_dnat``), or by the fast path with the flow installed as the offloader
        installs a forwarded flow (``xdp_fastpath_dnat``, the same rule behind it)."""
        s = self.settings
        order = [KERNEL_DNAT] if FASTPATH_DNAT in self._blocked() else [FASTPATH_DNAT, KERNEL_DNAT]
        sink_drop = self._sink_drop(True)
        src_mac, gw_mac, src_ip, _ = self._addresses()
        flow = UdpFlow(src_mac, gw_mac, src_ip, self.gw.ingress_address(), sport=RATE_FLOW.sport,
                       dport=DNAT_PORT)  # fmt: skip
        rounds: list[dict[str, Run]] = []
        for i in range(s.runs):
            round_runs = {}
            for path in order:
                self.progress(f"cpu/packet (dnat) run {i + 1}/{s.runs}: {path} at {s.rate_pps} pps")
                paths.setup_rate_path(self.gw, path, RATE_FLOW)
                try:
                    run = self._measure(path, i, flow, s.rate_pps, s.seconds, sink_drop)
                    round_runs[path] = self._check_fast_path(run)
                finally:
                    paths.teardown_rate_path(self.gw, path)
            rounds.append(check_ordering(round_runs, order))
        self._sink_drop(False)
        note = f"UDP to the gateway :{DNAT_PORT}, nft dnat to the service :{RATE_FLOW.dport}"
        out = self._cpu_results("cpu_ns_per_packet_dnat", order, rounds, s.rate_pps, note,
                                baseline=KERNEL_DNAT)  # fmt: skip
        if FASTPATH_DNAT not in order:
            out.append(self._unavailable("cpu_ns_per_packet_dnat", FASTPATH_DNAT))
        return out

    def _blocked(self) -> dict[str, str]:
        """Paths unavailable here; the DNAT fast path needs the product's programs."""
        if "xdp_fastpath" in self.unavailable:
            self.unavailable.setdefault(FASTPATH_DNAT, self.unavailable["xdp_fastpath"])
        return self.unavailable

    def connection_phase(self) -> list[Result]:
        """CPU per new connection: TCP SYNs, each a new 5-tuple, at a fixed rate; the
        gateway creates a conntrack entry and a NAT mapping for every one.  trafgen
        offers far more than the gateway's core can set up, so unlike a socket-based
        client it can saturate the gateway; the conntrack table is flushed before
        every run so it never fills (rate x seconds stays below nf_conntrack_max)."""
        t, s = self.target, self.settings
        sink_drop = self._sink_drop(True)
        order = [p for p in CONNECTION_PATHS if p not in self.unavailable]
        syns = SynFlood(*self._addresses())
        rounds: list[dict[str, Run]] = []
        for i in range(s.runs):
            round_runs = {}
            for path in order:
                self.progress(f"cpu/connection run {i + 1}/{s.runs}: {path} at {s.conn_rate} SYN/s")
                paths.setup_rate_path(self.gw, path, RATE_FLOW)
                t.gateway.run("conntrack", "-F", check=False)
                try:
                    run = self._measure(path, i, syns, s.conn_rate, s.conn_seconds, sink_drop)
                    round_runs[path] = run
                finally:
                    paths.teardown_rate_path(self.gw, path)
                    t.gateway.run("conntrack", "-F", check=False)
            rounds.append(round_runs)
        saturated = {p: self._saturate(p, syns, sink_drop) for p in order}
        self._sink_drop(False)
        out = []
        costs = self._cpu_results(
            "cpu_ns_per_new_connection",
            order,
            rounds,
            s.conn_rate,
            "trafgen TCP SYN, a new 5-tuple each (conntrack entry + NAT mapping)",
        )
        base = next((c.value for c in costs if c.path == BASELINE), None)
        for cost in costs:
            out.append(cost)
            out.append(
                Result(
                    "new_connections_per_core",
                    cost.path,
                    "conn/s",
                    1e9 / cost.value if cost.value else None,
                    BASELINE,
                    1e9 / base if base else None,
                    runs=cost.runs,
                    valid=cost.valid,
                    note="1e9 / CPU ns per new connection: set-up rate of one gateway core",
                    lower_is_better=False,
                )
            )
        base_sat = saturated.get(BASELINE)
        for sat in saturated.values():
            out.append(
                replace(
                    sat,
                    baseline=BASELINE,
                    baseline_value=base_sat.value if base_sat and base_sat.valid else None,
                )
            )
        return out

    def _saturate(self, path: str, syns: SynFlood, sink_drop: bool) -> Result:
        """Offer more SYNs than the gateway core can set up and count what comes out:
        the measured maximum, valid only when the gateway's core was the bottleneck."""
        t = self.target
        rate, seconds = SATURATION_SYN_RATE, SATURATION_SECONDS
        self.progress(f"connection saturation: {path} at {rate} SYN/s offered")
        paths.setup_rate_path(self.gw, path, RATE_FLOW)
        t.gateway.run("conntrack", "-F", check=False)
        try:
            run = self._measure(path, 0, syns, rate, seconds, sink_drop, check=False)
        finally:
            paths.teardown_rate_path(self.gw, path)
            t.gateway.run("conntrack", "-F", check=False)
        elapsed = run.sent / run.achieved_pps if run.achieved_pps else 0.0
        busy = run.cpu_ns / (elapsed * 1e9) if elapsed else 0.0
        value = run.forwarded / elapsed if elapsed else None
        # A saturated veth pushes back on trafgen rather than dropping, so the sign is
        # the gateway core's busy time, not loss.
        valid = busy >= SATURATED_BUSY
        note = f"trafgen offered {run.achieved_pps:,.0f} SYN/s; gateway core busy {busy:.0%}" + (
            "" if valid else "; gateway not saturated (generator-bound): not a maximum"
        )
        return Result(
            "max_new_connections_per_s",
            path,
            "conn/s",
            value if valid else None,
            runs=[run.as_json()],
            offered_pps=rate,
            valid=valid,
            note=note,
            lower_is_better=False,
            extra={"gateway_busy": busy, "forwarded_per_s": value},
        )

    def _addresses(self) -> tuple[str, str, str, str]:
        t = self.target
        return (
            self.gw.mac(t.generator, t.generator_dev),
            self.gw.mac(t.gateway, t.ingress_dev),
            t.generator_ip,
            t.service_ip,
        )

    def _sink_drop(self, on: bool) -> bool:
        """XDP_DROP on the lab's sink (and the static neighbour it then needs)."""
        t = self.target
        if not t.lab or "xdp_drop" in self.unavailable:
            return False
        if on and not self._sink_dropping:
            self.programs.attach(t.sink, t.sink_dev, "xdp_drop_all")
            self.gw.static_neighbour()
        elif not on and self._sink_dropping:
            self.programs.detach(t.sink, t.sink_dev)
        self._sink_dropping = on
        return on

    def _counted(self, path: str, sink_drop: bool) -> int:
        t = self.target
        if path == "xdp_drop":
            return dev_counter(t.gateway, t.ingress_dev, "xdp_drops")
        if sink_drop:
            return dev_counter(t.sink, t.sink_dev, "xdp_drops")
        return dev_counter(t.gateway, t.egress_dev, "tx_packets")

    def _measure(
        self,
        path: str,
        index: int,
        packets: Packets,
        rate: int,
        seconds: float,
        sink_drop: bool,
        *,
        check: bool = True,
    ) -> Run:
        t = self.target
        fast_before = self.programs.flow_packets() if path in FAST_PATHS else 0
        counted_before = self._counted(path, sink_drop)
        cpu_before = self.tuning.gateway_cpu()
        gen = send(t.generator, t.generator_dev, packets, rate, seconds)
        time.sleep(0.05)  # let the last packets drain through the gateway
        cpu_after = self.tuning.gateway_cpu()
        forwarded = self._counted(path, sink_drop) - counted_before
        cpu_ns, wakeups = cpu_delta(cpu_before, cpu_after)
        fast = self.programs.flow_packets() - fast_before if path in FAST_PATHS else 0
        run = Run(
            path,
            index,
            rate,
            gen.sent,
            gen.achieved_pps,
            forwarded,
            cpu_ns,
            wakeups,
            extra={"fast_path_packets": float(fast)},
        )
        if not gen.ok:
            run = run.invalid(gen.message)
        return check_run(run) if check else run

    @staticmethod
    def _check_fast_path(run: Run) -> Run:
        fast = run.extra.get("fast_path_packets", 0.0)
        if run.path in FAST_PATHS and fast < 0.98 * max(run.forwarded, 1):
            return run.invalid(f"only {fast:.0f} of {run.forwarded} packets took the fast path")
        return run

    def _cpu_results(
        self,
        metric: str,
        order: list[str],
        rounds: list[dict[str, Run]],
        rate: int,
        note: str = "",
        *,
        baseline: str = BASELINE,
    ) -> list[Result]:
        """min / median / max CPU ns per unit of each path's valid runs, against the
        ``baseline``'s median measured in the same rounds."""
        runs = {p: [r[p] for r in rounds if p in r] for p in order}
        summ = {
            p: summarize([r.ns_per_packet for r in rs], [r.valid for r in rs])
            for p, rs in runs.items()
        }
        base = summ[baseline].median if baseline in summ else None
        out = []
        for path in order:
            valid = [r for r in runs[path] if r.valid]
            ppw = summarize([r.pkts_per_wakeup for r in valid]).median if valid else None
            sp = summ[path]
            out.append(
                Result(
                    metric,
                    path,
                    "ns/packet",
                    sp.median,
                    baseline,
                    base,
                    [r.as_json() for r in runs[path]],
                    rate,
                    ppw,
                    sp.valid_runs > 0,
                    note if sp.valid_runs else "no valid run",
                    sp.minimum,
                    sp.maximum,
                )
            )
        return out

    def _unavailable(self, metric: str, path: str) -> Result:
        return Result(metric, path, "ns/packet", None, valid=False, note=self.unavailable[path])

    # ---- per-program cost ------------------------------------------------------------------

    def testrun_phase(self) -> list[Result]:
        if "xdp_fastpath" in self.unavailable:
            return [
                Result(
                    "prog_test_run_ns",
                    "xdp_gateway",
                    "ns/packet",
                    None,
                    valid=False,
                    note=self.unavailable["xdp_fastpath"],
                )
            ]
        self.progress("BPF_PROG_TEST_RUN over the packet cases")
        try:
            costs = progcost.measure(
                self.programs, self.settings.testrun_batch, self.settings.testrun_batches
            )
        except ImportError as exc:
            return [
                Result(
                    "prog_test_run_ns",
                    "xdp_gateway",
                    "ns/packet",
                    None,
                    valid=False,
                    note=f"unavailable: packet cases: {exc}",
                )
            ]
        out = []
        for c in costs:
            summ = summarize(list(c.batches_ns))
            out.append(
                Result(
                    "prog_test_run_ns",
                    f"xdp_gateway:{c.name}",
                    "ns/packet",
                    summ.median,
                    "xdp_drop_all",
                    progcost.median(c.baseline_batches_ns),
                    [{"batch_mean_ns": v, "valid": True} for v in c.batches_ns],
                    minimum=summ.minimum,
                    maximum=summ.maximum,
                    note=f"repeat=1 x {self.settings.testrun_batch} per batch",
                )
            )
        return out

    # ---- request/response, connections, bulk -------------------------------------------

    def rr_phase(self) -> list[Result]:
        t = self.target
        rr_paths = [
            p
            for p in (BASELINE, "xdp_fastpath", paths.BULK_TCP_IN_KERNEL)
            if "xdp_fastpath" not in self.unavailable or p == BASELINE
        ]
        samples: dict[str, dict[str, list[dict[str, Any]]]] = {p: {} for p in rr_paths}
        with contextlib.ExitStack() as stack:
            if t.lab:
                stack.enter_context(rr.CpsServer(t.sink, t.service_ip))
                # The lab's sockperf server on the client's CPU: left to the scheduler it
                # lands on either CPU, and that moved the p99 ratio between 0.76 and 1.28.
                sockperf = Lab().server_pid("sockperf")
                stack.enter_context(pinned_process(sockperf, {GENERATOR_CPU}))
            self._rr_rounds(rr_paths, samples)
        return self._rr_results(rr_paths, samples)

    def _rr_rounds(
        self,
        rr_paths: list[str],
        samples: dict[str, dict[str, list[dict[str, Any]]]],
    ) -> None:
        t, runs = self.target, self.settings.rr_runs
        for i in range(runs):
            for j, path in enumerate(rr_paths):
                self.progress(f"latency/connections/throughput run {i + 1}/{runs}: {path}")
                # A client port of its own per iperf3 run: the last one's connection may
                # still be in TIME_WAIT on the client ("Address already in use").
                cport = IPERF3_CPORT + i * len(rr_paths) + j
                flows = [
                    Flow(IPPROTO_UDP, SOCKPERF_CPORT, t.sockperf_port),
                    Flow(IPPROTO_TCP, cport, t.iperf3_port),
                ]
                paths.setup_rr_path(self.gw, path, flows)
                try:
                    self._rr_once(path, samples[path], cport)
                finally:
                    paths.teardown_rr_path(self.gw, path)

    def _rr_once(self, path: str, into: dict[str, list[dict[str, Any]]], cport: int) -> None:
        t, s = self.target, self.settings
        fast0 = self.programs.flow_packets() if path == "xdp_fastpath" else 0

        def record(metric: str, value: Any, scale: float = 1.0) -> None:
            ok = isinstance(value, float)
            into.setdefault(metric, []).append(
                {"value": value / scale, "valid": True} if ok else value
            )

        bps = _attempt(
            lambda: rr.iperf3(t.generator, t.service_ip, t.iperf3_port, s.rr_seconds, cport)
        )
        record("tcp_throughput", bps, 1e9)
        if path == paths.BULK_TCP_IN_KERNEL:
            return
        lat = _attempt(
            lambda: rr.sockperf(
                t.generator, t.service_ip, t.sockperf_port, s.rr_seconds, SOCKPERF_CPORT
            )
        )
        for key in ("p50", "p99", "p99.9"):
            record(f"udp_rr_{key}", lat[key] if isinstance(lat, dict) and "p50" in lat else lat)
        if t.lab:
            cps = _attempt(
                lambda: rr.connection_rate(t.generator, t.service_ip, rr.CPS_PORT, s.rr_seconds)
            )
            record("tcp_connection_rate", cps)
        if path == "xdp_fastpath":
            record("fast_path_packets", float(self.programs.flow_packets() - fast0))

    def _rr_results(
        self, rr_paths: list[str], samples: dict[str, dict[str, list[dict[str, Any]]]]
    ) -> list[Result]:
        meta = {
            "udp_rr_p50": ("usec", True, "sockperf ping-pong, 64 B UDP"),
            "udp_rr_p99": ("usec", True, "sockperf ping-pong, 64 B UDP"),
            "udp_rr_p99.9": ("usec", True, "sockperf ping-pong, 64 B UDP"),
            "tcp_throughput": (
                "Gbit/s",
                False,
                "iperf3 -t, 1 stream, sender TSO off, gateway GRO on",
            ),
            "tcp_connection_rate": (
                "conn/s",
                False,
                "perf.cps: 2 Python connect/close procs, full handshakes end to end; client-bound",
            ),
        }
        out = []
        for metric, (unit, lower, note) in meta.items():
            base_runs = samples.get(BASELINE, {}).get(metric, [])
            base = _median_of(base_runs)
            for path in rr_paths:
                runs = samples[path].get(metric, [])
                if not runs:
                    continue
                summ = summarize(
                    [r.get("value") for r in runs], [bool(r.get("valid")) for r in runs]
                )
                path_note = note
                if path == "xdp_fastpath" and metric == "tcp_connection_rate":
                    path_note += "; new connections miss the flow table (kernel path + XDP parse)"
                if path == paths.BULK_TCP_IN_KERNEL:
                    path_note += (
                        "; interfaces.bulk_tcp=kernel: bulk TCP handed back to the kernel path"
                    )
                if path == "xdp_fastpath":
                    fp = samples[path].get("fast_path_packets", [])
                    path_note += f"; fast-path packets {int(sum(r['value'] for r in fp))}"
                out.append(
                    Result(
                        metric,
                        path,
                        unit,
                        summ.median,
                        BASELINE,
                        base,
                        runs,
                        valid=summ.valid_runs > 0,
                        note=path_note,
                        minimum=summ.minimum,
                        maximum=summ.maximum,
                        lower_is_better=lower,
                    )
                )
        return out


def _attempt(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except PerfError as exc:
        log.warning("%s", exc)
        return {"value": None, "valid": False, "reason": str(exc)[:300]}


def _median_of(runs: list[dict[str, Any]]) -> float | None:
    return summarize([r.get("value") for r in runs], [bool(r.get("valid")) for r in runs]).median


def run(args: argparse.Namespace, target: Target, progress: Callable[[str], None]) -> list[Result]:
    """``python -m perf dataplane``: settings from the command line."""
    phases = tuple(p for p in (getattr(args, "phases", None) or ",".join(PHASES)).split(",") if p)
    unknown = [p for p in phases if p not in PHASES]
    if unknown:
        raise PerfError(f"--phases: unknown {unknown}; expected some of {','.join(PHASES)}")
    settings = settings_for(args, Settings(), Settings.quick())
    return Suite(target, settings, progress, phases).run()
