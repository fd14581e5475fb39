"""The ``dataplane`` suite: CPU ns per forwarded packet of each path at a fixed offered
rate (the method of issue 4), per-program cost through BPF_PROG_TEST_RUN, and UDP
request/response latency, TCP connection rate and TCP throughput through each path.

Baselines, measured in the same run: ``kernel_masquerade`` (the NAT instance) for
every data-path figure, ``xdp_drop`` as the floor for the fast path, ``xdp_drop_all``
on the same frame for per-program cost.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from perf import paths, progcost, rr
from perf.bpf import Programs
from perf.generator import UdpFlow, send
from perf.method import Tuning, cpu_delta, dev_counter
from perf.paths import IPPROTO_TCP, IPPROTO_UDP, NOT_YET_BUILT, Flow, Gateway
from perf.report import Result
from perf.stats import EXPECTED_ORDER, Run, check_ordering, check_run, summarize
from perf.target import PerfError, Target

log = logging.getLogger("spectra.perf")

BASELINE = "kernel_masquerade"
RATE_FLOW = Flow(IPPROTO_UDP, 40000, 9)
SOCKPERF_CPORT = 41111
IPERF3_CPORT = 41201


@dataclass(frozen=True, slots=True)
class Settings:
    rate_pps: int = 200_000
    seconds: float = 5.0
    runs: int = 5
    rr_seconds: float = 3.0
    rr_runs: int = 3
    testrun_batch: int = 1000
    testrun_batches: int = 5

    @classmethod
    def quick(cls, rate_pps: int = 200_000) -> Settings:
        return cls(rate_pps, 2.0, 3, 2.0, 1, 200, 3)


class Suite:
    def __init__(self, target: Target, settings: Settings, progress: Callable[[str], None]) -> None:
        self.target = target
        self.settings = settings
        self.progress = progress
        self.programs = Programs()
        self.tuning = Tuning(target)
        self.gw = Gateway(target, self.tuning, self.programs)
        self.unavailable: dict[str, str] = {}

    # ---- orchestration ---------------------------------------------------------------

    def run(self) -> list[Result]:
        try:
            self.programs.dataplane()
        except PerfError as exc:
            for path in ("xdp_fastpath", "xdp_drop"):
                self.unavailable[path] = f"unavailable: product XDP programs: {exc}"
        self.preflight()
        results: list[Result] = []
        try:
            self.tuning.apply()
            results += self.rate_phase()
            results += self.testrun_phase()
            results += self.rr_phase()
        finally:
            self.gw.cleanup()
            self.tuning.restore()
            self.programs.close()
        for path, why in NOT_YET_BUILT.items():
            results.append(
                Result("cpu_ns_per_packet", path, "ns/packet", None, valid=False, note=why)
            )
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
        t, s = self.target, self.settings
        sink_drop = False
        if t.lab and "xdp_drop" not in self.unavailable:
            self.programs.attach(t.sink, t.sink_dev, "xdp_drop_all")
            sink_drop = True
        if t.lab:
            self.gw.static_neighbour()
        order = [p for p in EXPECTED_ORDER if p not in self.unavailable]
        flow = UdpFlow(
            src_mac=self.gw.mac(t.generator, t.generator_dev),
            dst_mac=self.gw.mac(t.gateway, t.ingress_dev),
            saddr=t.generator_ip,
            daddr=t.service_ip,
            sport=RATE_FLOW.sport,
            dport=RATE_FLOW.dport,
        )
        rounds: list[dict[str, Run]] = []
        for i in range(s.runs):
            round_runs = {}
            for path in order:
                self.progress(f"cpu/packet run {i + 1}/{s.runs}: {path} at {s.rate_pps} pps")
                paths.setup_rate_path(self.gw, path, RATE_FLOW)
                try:
                    round_runs[path] = check_run(self._measure(path, i, flow, sink_drop))
                finally:
                    paths.teardown_rate_path(self.gw, path)
            rounds.append(check_ordering(round_runs))
        if sink_drop:
            self.programs.detach(t.sink, t.sink_dev)
        return self._rate_results(order, rounds)

    def _counted(self, path: str, sink_drop: bool) -> int:
        t = self.target
        if path == "xdp_drop":
            return dev_counter(t.gateway, t.ingress_dev, "xdp_drops")
        if sink_drop:
            return dev_counter(t.sink, t.sink_dev, "xdp_drops")
        return dev_counter(t.gateway, t.egress_dev, "tx_packets")

    def _measure(self, path: str, index: int, flow: UdpFlow, sink_drop: bool) -> Run:
        t, s = self.target, self.settings
        fast_before = self.programs.flow_packets() if path == "xdp_fastpath" else 0
        counted_before = self._counted(path, sink_drop)
        cpu_before = self.tuning.gateway_cpu()
        gen = send(t.generator, t.generator_dev, flow, s.rate_pps, s.seconds)
        time.sleep(0.05)  # let the last packets drain through the gateway
        cpu_after = self.tuning.gateway_cpu()
        forwarded = self._counted(path, sink_drop) - counted_before
        cpu_ns, wakeups = cpu_delta(cpu_before, cpu_after)
        run = Run(path, index, s.rate_pps, gen.sent, gen.achieved_pps, forwarded, cpu_ns, wakeups)
        if not gen.ok:
            run = run.invalid(gen.message)
        if path == "xdp_fastpath":
            fast = self.programs.flow_packets() - fast_before
            if fast < 0.98 * max(forwarded, 1):
                run = run.invalid(f"only {fast} of {forwarded} packets took the fast path")
        return run

    def _rate_results(self, order: list[str], rounds: list[dict[str, Run]]) -> list[Result]:
        summaries = {}
        for path in order:
            runs = [r[path] for r in rounds if path in r]
            summaries[path] = (
                runs,
                summarize([r.ns_per_packet for r in runs], [r.valid for r in runs]),
            )
        base = summaries.get(BASELINE, ([], None))[1]
        base_value = base.median if base else None
        out = []
        for path in EXPECTED_ORDER:
            if path in self.unavailable:
                out.append(
                    Result(
                        "cpu_ns_per_packet",
                        path,
                        "ns/packet",
                        None,
                        valid=False,
                        note=self.unavailable[path],
                    )
                )
                continue
            runs, summ = summaries[path]
            valid = [r for r in runs if r.valid]
            ppw = summarize([r.pkts_per_wakeup for r in valid]).median if valid else None
            out.append(
                Result(
                    "cpu_ns_per_packet",
                    path,
                    "ns/packet",
                    summ.median,
                    BASELINE,
                    base_value,
                    [_run_json(r) for r in runs],
                    self.settings.rate_pps,
                    ppw,
                    summ.valid_runs > 0,
                    "" if summ.valid_runs else "no valid run",
                    summ.minimum,
                    summ.maximum,
                )
            )
        fast = next((r for r in out if r.path == "xdp_fastpath"), None)
        drop = next((r for r in out if r.path == "xdp_drop"), None)
        if fast and drop and fast.value is not None:
            out.append(
                Result(
                    "cpu_ns_per_packet",
                    "xdp_fastpath",
                    "ns/packet",
                    fast.value,
                    "xdp_drop",
                    drop.value,
                    fast.runs,
                    fast.offered_pps,
                    fast.pkts_per_wakeup,
                    fast.valid,
                    "goal <= 1.8x xdp_drop",
                    fast.minimum,
                    fast.maximum,
                )
            )
        return out

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
        t, s = self.target, self.settings
        rr_paths = [p for p in (BASELINE, "xdp_fastpath") if p not in self.unavailable]
        flows = [
            Flow(IPPROTO_UDP, SOCKPERF_CPORT, t.sockperf_port),
            Flow(IPPROTO_TCP, IPERF3_CPORT, t.iperf3_port),
        ]
        samples: dict[str, dict[str, list[dict[str, Any]]]] = {p: {} for p in rr_paths}
        cps_server = rr.CpsServer(t.sink, t.service_ip) if t.lab else None
        if cps_server is not None:
            cps_server.__enter__()
        try:
            for i in range(s.rr_runs):
                for path in rr_paths:
                    self.progress(f"latency/connections/throughput run {i + 1}/{s.rr_runs}: {path}")
                    paths.setup_rr_path(self.gw, path, flows)
                    try:
                        self._rr_once(path, samples[path])
                    finally:
                        paths.teardown_rr_path(self.gw, path)
        finally:
            if cps_server is not None:
                cps_server.__exit__(None, None, None)
        return self._rr_results(rr_paths, samples)

    def _rr_once(self, path: str, into: dict[str, list[dict[str, Any]]]) -> None:
        t, s = self.target, self.settings
        fast0 = self.programs.flow_packets() if path == "xdp_fastpath" else 0
        lat = _attempt(
            lambda: rr.sockperf(
                t.generator, t.service_ip, t.sockperf_port, s.rr_seconds, SOCKPERF_CPORT
            )
        )
        for key in ("p50", "p99", "p99.9"):
            into.setdefault(f"udp_rr_{key}", []).append(
                {"value": lat[key], "valid": True} if isinstance(lat, dict) else lat
            )
        bps = _attempt(
            lambda: rr.iperf3(t.generator, t.service_ip, t.iperf3_port, s.rr_seconds, IPERF3_CPORT)
        )
        into.setdefault("tcp_throughput", []).append(
            {"value": bps / 1e9, "valid": True} if isinstance(bps, float) else bps
        )
        if t.lab:
            cps = _attempt(
                lambda: rr.connection_rate(t.generator, t.service_ip, rr.CPS_PORT, s.rr_seconds)
            )
            into.setdefault("tcp_connection_rate", []).append(
                {"value": cps, "valid": True} if isinstance(cps, float) else cps
            )
        if path == "xdp_fastpath":
            into.setdefault("fast_path_packets", []).append(
                {"value": float(self.programs.flow_packets() - fast0), "valid": True}
            )

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
                "perf.cps: 2 Python connect/close procs; client-bound",
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


def _run_json(run: Run) -> dict[str, Any]:
    d = asdict(run)
    d["extra"] = dict(run.extra)
    d["ns_per_packet"] = run.ns_per_packet
    d["pkts_per_wakeup"] = run.pkts_per_wakeup
    return d
