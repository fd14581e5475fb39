"""A userspace AWS Gateway Load Balancer for the lab (``cs-gwlb``) and the lab
extension that builds it; its namespaces, links and addresses are
:attr:`perf.lab.topology.Topology.gwlb`.

The simulator takes workload traffic (AF_PACKET on ``ws``, and on ``inet`` for
traffic toward the workload), encapsulates it as GWLB does (RFC 8926 GENEVE, AWS
class-0x0108 TLVs: a generated endpoint ID and attachment ID, a random flow cookie per
flow), spreads new flows over the healthy gateways by 5-tuple hash (sticky per flow),
checks that every packet coming back carries the byte-identical header from the
gateway it was sent to (``matched`` / ``mismatched``), decapsulates it and delivers the
inner packet (to the workload, or on toward the internet).  A gateway that fails two
health checks in a row (TCP connect to its health port) gets no new flows until it
passes two again (https://docs.aws.amazon.com/elasticloadbalancing/latest/gateway/health-checks.html).

Correctness, not speed: one Python process, raw sockets, a few thousand packets per
second (enough for curl and a short iperf3).
``python -m perf.lab.gwlbsim up|down|status|serve|attach``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import random
import selectors
import signal
import socket
import struct
import sys
import threading
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from geneve.aws import GwlbTlvs, validate
from geneve.codec import GENEVE_PORT, GeneveHeader
from geneve.encap import encapsulate, inner_protocol
from geneve.errors import GeneveError
from geneve.flowkey import InnerFlow
from perf.lab.build import Lab, attach_peer_pass
from perf.lab.host import (
    RUN_DIR,
    LabError,
    daemonize,
    kill_all_in,
    ns_exec,
    pid_alive,
    require_root,
    run_here,
    run_in,
    stop,
)
from perf.lab.topology import TOPOLOGY, GwlbTarget

log = logging.getLogger("spectra.perf")

SEG = TOPOLOGY.gwlb
HEALTH_PORT = 8081
ONE_ARM_TABLE = 1081
STATE_FILE = RUN_DIR / "gwlbsim.json"
PIDFILE = RUN_DIR / "gwlbsim.pid"
ETH_P_IP = 0x0800
PACKET_HOST = 0


# --------------------------------------------------------------------------------------
# the simulator process


@dataclass(slots=True)
class TargetState:
    target: GwlbTarget
    healthy: bool = False
    fails: int = 0
    passes: int = 0
    flows: int = 0
    sent: int = 0
    returned: int = 0


@dataclass(slots=True)
class SimFlow:
    target: TargetState
    header: GeneveHeader
    sport: int


@dataclass(slots=True)
class Counters:
    from_workload: int = 0
    from_internet: int = 0
    encapsulated: int = 0
    returned: int = 0
    matched: int = 0
    mismatched: int = 0
    unknown_flow: int = 0
    invalid_geneve: int = 0
    no_healthy_target: int = 0
    unparsable: int = 0
    delivered: int = 0
    mismatch_examples: list[str] = field(default_factory=list)


class Simulator:
    """The load balancer's data plane and health checker."""

    def __init__(self, health_port: int = HEALTH_PORT, seed: int | None = None) -> None:
        self.rng = random.Random(seed)
        self.tlv_base = (self.rng.getrandbits(64), self.rng.getrandbits(64))
        self.health_port = health_port
        self.targets = [TargetState(t) for t in SEG.targets]
        self.flows: dict[bytes, SimFlow] = {}
        self.counters = Counters()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.local = {SEG.ws_ip, SEG.inet_ip, *(t.sim_ip for t in SEG.targets)}

    # -- flows ---------------------------------------------------------------------------

    def _flow_for(self, flow: InnerFlow, inner: bytes) -> SimFlow | None:
        key = flow.key()[0]
        found = self.flows.get(key)
        if found is not None:
            return found
        with self.lock:
            healthy = [t for t in self.targets if t.healthy]
        if not healthy:
            self.counters.no_healthy_target += 1
            return None
        digest = zlib.crc32(key)
        target = healthy[digest % len(healthy)]
        tlvs = GwlbTlvs(self.tlv_base[0], self.tlv_base[1], self.rng.getrandbits(32))
        created = SimFlow(target, tlvs.header(inner_protocol(inner)), 49152 + digest % 16384)
        self.flows[key] = created
        target.flows += 1
        return created

    def from_side(self, frame: bytes, sock_out: socket.socket, from_internet: bool) -> None:
        inner = _ip_packet(frame[14:])
        flow = InnerFlow.parse(inner) if inner else None
        if flow is None or flow.family != 4:
            self.counters.unparsable += 1
            return
        if socket.inet_ntoa(flow.daddr) in self.local:
            return
        if from_internet:
            self.counters.from_internet += 1
        else:
            self.counters.from_workload += 1
        sim_flow = self._flow_for(flow, inner)
        if sim_flow is None:
            return
        t = sim_flow.target.target
        packet = encapsulate(inner, sim_flow.header, t.sim_ip, t.gateway_ip, sim_flow.sport)
        with contextlib.suppress(OSError):
            sock_out.sendto(packet, (t.gateway_ip, 0))
            self.counters.encapsulated += 1
            sim_flow.target.sent += 1

    def from_gateway(self, payload: bytes, peer: tuple[str, int], sock_out: socket.socket) -> None:
        self.counters.returned += 1
        try:
            header, inner = GeneveHeader.decode(payload)
            validate(header)
        except GeneveError:
            self.counters.invalid_geneve += 1
            return
        flow = InnerFlow.parse(inner)
        sim_flow = self.flows.get(flow.key()[0]) if flow else None
        if flow is None or sim_flow is None:
            self.counters.unknown_flow += 1
            return
        sim_flow.target.returned += 1
        t = sim_flow.target.target
        if header.raw == sim_flow.header.raw and peer == (t.gateway_ip, sim_flow.sport):
            self.counters.matched += 1
        else:
            self.counters.mismatched += 1
            if len(self.counters.mismatch_examples) < 5:
                self.counters.mismatch_examples.append(
                    f"{flow} from {peer}: got {header.raw.hex()} want "
                    f"{sim_flow.header.raw.hex()} from {(t.gateway_ip, sim_flow.sport)}"
                )
            return
        with contextlib.suppress(OSError):
            sock_out.sendto(inner, (socket.inet_ntoa(flow.daddr), 0))
            self.counters.delivered += 1

    # -- health checks -------------------------------------------------------------------

    def health_loop(self, interval: float = 0.5) -> None:
        while not self.stop.is_set():
            for ts in self.targets:
                ok = _tcp_check(ts.target.gateway_ip, self.health_port, timeout=interval)
                with self.lock:
                    if ok:
                        ts.passes, ts.fails = ts.passes + 1, 0
                        if ts.passes >= 2 and not ts.healthy:
                            log.info("%s healthy", ts.target.netns)
                            ts.healthy = True
                    else:
                        ts.fails, ts.passes = ts.fails + 1, 0
                        if ts.fails >= 2 and ts.healthy:
                            log.info("%s unhealthy: no new flows", ts.target.netns)
                            ts.healthy = False
            self.stop.wait(interval)

    # -- state ---------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "pid": os.getpid(),
                "time": time.time(),
                "counters": asdict(self.counters),
                "flows": len(self.flows),
                "targets": {
                    ts.target.az: {
                        "netns": ts.target.netns,
                        "gateway_ip": ts.target.gateway_ip,
                        "healthy": ts.healthy,
                        "flows": ts.flows,
                        "sent": ts.sent,
                        "returned": ts.returned,
                    }
                    for ts in self.targets
                },
            }

    def write_state(self, path: Path = STATE_FILE) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.snapshot()))
        tmp.replace(path)

    def serve(self) -> None:
        """Run until SIGTERM/SIGINT (inside the cs-gwlb namespace)."""
        signal.signal(signal.SIGTERM, lambda *_: self.stop.set())
        signal.signal(signal.SIGINT, lambda *_: self.stop.set())
        sel = selectors.DefaultSelector()
        taps = {}
        for ifname, from_internet in ((SEG.ws_if, False), (SEG.inet_if, True)):
            tap = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
            tap.bind((ifname, ETH_P_IP))
            tap.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            taps[tap.fileno()] = (tap, from_internet)
            sel.register(tap, selectors.EVENT_READ)
        rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        rx.bind(("0.0.0.0", GENEVE_PORT))
        sel.register(rx, selectors.EVENT_READ)
        out = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        threading.Thread(target=self.health_loop, daemon=True).start()
        last_write = 0.0
        while not self.stop.is_set():
            for key, _ in sel.select(timeout=0.1):
                sock = key.fileobj
                if sock is rx:
                    payload, peer = rx.recvfrom(65535)
                    self.from_gateway(payload, peer, out)
                    continue
                tap, from_internet = taps[key.fd]
                frame, addr = tap.recvfrom(65535)
                if addr[2] == PACKET_HOST:
                    self.from_side(frame, out, from_internet)
            now = time.monotonic()
            if now - last_write > 0.2:
                self.write_state()
                last_write = now
        self.write_state()


def _ip_packet(buf: bytes) -> bytes:
    """An IPv4 packet cut to its total length (short frames are padded on the wire)."""
    if len(buf) < 20 or buf[0] >> 4 != 4:
        return b""
    total = struct.unpack_from("!H", buf, 2)[0]
    return buf[:total] if 20 <= total <= len(buf) else b""


def _tcp_check(ip: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((ip, port), timeout=timeout):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------------------
# the lab extension


def _sh(ns: str | None, *argv: str, check: bool = True) -> str:
    if ns is None:
        return run_here(*argv, check=check)
    return run_in(ns, *argv, check=check).stdout


def _exists(ns: str, ifname: str) -> bool:
    return run_in(ns, "ip", "link", "show", "dev", ifname, check=False).returncode == 0


def _veth(ns_a: str, if_a: str, ns_b: str, if_b: str, mtu: int = 1500) -> None:
    if not _exists(ns_a, if_a):
        _sh(ns_a, "ip", "link", "add", if_a, "mtu", str(mtu), "type", "veth",
            "peer", "name", if_b, "netns", ns_b, "mtu", str(mtu))  # fmt: skip
    _sh(ns_a, "ip", "link", "set", if_a, "up")
    _sh(ns_b, "ip", "link", "set", if_b, "up")


def _addr(ns: str, ifname: str, cidr: str) -> None:
    _sh(ns, "ip", "addr", "replace", cidr, "dev", ifname)


class GwlbLab:
    """Adds the GWLB simulator to the lab; ``down`` removes everything it added."""

    def __init__(self, lab: Lab | None = None, health_port: int = HEALTH_PORT) -> None:
        self.lab = lab or Lab()
        self.health_port = health_port

    def up(self, *, health: bool = True) -> dict[str, Any]:
        require_root()
        self.lab.up()
        inet = TOPOLOGY.inet_netns
        existing = set(_sh(None, "ip", "netns", "list").split())
        for ns in SEG.namespaces:
            if ns not in existing:
                _sh(None, "ip", "netns", "add", ns)
            _sh(ns, "ip", "link", "set", "lo", "up")
        _veth(SEG.workload_netns, SEG.workload_if, SEG.netns, SEG.ws_if)
        _addr(SEG.workload_netns, SEG.workload_if, f"{SEG.workload_ip}/24")
        _addr(SEG.netns, SEG.ws_if, f"{SEG.ws_ip}/24")
        _sh(SEG.workload_netns, "ip", "route", "replace", "default", "via", SEG.ws_ip)
        # Full checksums on what the workload sends: the simulator copies the bytes.
        _sh(SEG.workload_netns, "ethtool", "-K", SEG.workload_if, "tx", "off")
        _veth(SEG.netns, SEG.inet_if, inet, SEG.inet_peer_if)
        _addr(SEG.netns, SEG.inet_if, f"{SEG.inet_ip}/29")
        _addr(inet, SEG.inet_peer_if, f"{SEG.inet_peer_ip}/29")
        _sh(inet, "ethtool", "-K", SEG.inet_peer_if, "tx", "off")
        _sh(inet, "ip", "route", "replace", SEG.workload_cidr, "via", SEG.inet_ip)
        _sh(SEG.netns, "ip", "route", "replace", "default", "via", SEG.inet_peer_ip)
        # The simulator, not the kernel, moves packets: no forwarding, no ICMP errors.
        _sh(SEG.netns, "sysctl", "-q", "-w", "net.ipv4.ip_forward=0")
        gwlb_if = SEG.gateway_if
        for t in SEG.targets:
            _veth(t.netns, gwlb_if, SEG.netns, t.sim_if, SEG.mtu)
            _addr(t.netns, gwlb_if, f"{t.gateway_ip}/24")
            _addr(SEG.netns, t.sim_if, f"{t.sim_ip}/24")
            _sh(SEG.netns, "ethtool", "-K", t.sim_if, "tx", "off")
            attach_peer_pass(SEG.netns, t.sim_if)
            # two-arm return route: replies to the workload go back through the GWLB
            _sh(t.netns, "ip", "route", "replace", SEG.workload_cidr, "via", t.sim_ip,
                "dev", gwlb_if)  # fmt: skip
            _sh(t.netns, "sysctl", "-q", "-w", f"net.ipv4.conf.{gwlb_if}.rp_filter=0")
            _sh(t.netns, "sysctl", "-q", "-w", f"net.ipv4.conf.{gwlb_if}.send_redirects=0")
            if health:
                self.start_health(t.az)
        self.start_simulator()
        return self.status()

    # -- processes -----------------------------------------------------------------------

    def start_simulator(self) -> None:
        if pid_alive(PIDFILE):
            return
        STATE_FILE.unlink(missing_ok=True)
        daemonize(
            ns_exec(SEG.netns, sys.executable, "-m", "perf.lab.gwlbsim", "serve",
                    "--health-port", str(self.health_port)),
            PIDFILE,
            RUN_DIR / "gwlbsim.log",
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while not STATE_FILE.exists():
            if time.monotonic() > deadline:
                raise LabError(f"gwlbsim did not start (log in {RUN_DIR / 'gwlbsim.log'})")
            time.sleep(0.05)

    def _health_pidfile(self, az: str) -> Path:
        return RUN_DIR / f"gwlb-health-{az}.pid"

    def start_health(self, az: str) -> None:
        t = SEG.target(az)
        if pid_alive(self._health_pidfile(az)):
            return
        daemonize(
            ns_exec(
                t.netns, sys.executable, "-m", "geneve.health", t.gateway_ip, str(self.health_port)
            ),
            self._health_pidfile(az),
            RUN_DIR / f"gwlb-health-{az}.log",
        )

    def stop_health(self, az: str) -> None:
        stop(self._health_pidfile(az), wait=3.0)

    def state(self, settle: float = 0.5, timeout: float = 5.0) -> dict[str, Any]:
        """The simulator's counters as of at least ``settle`` seconds after this call
        (it writes them every 0.2 s; ``settle`` lets packets in flight be counted):
        polls the state file until a snapshot that new appears."""
        wanted = time.time() + settle
        deadline = time.monotonic() + settle + timeout
        while True:
            with contextlib.suppress(FileNotFoundError, ValueError):
                data: dict[str, Any] = json.loads(STATE_FILE.read_text())
                if data["time"] >= wanted or time.monotonic() > deadline:
                    return data
            if time.monotonic() > deadline:
                raise LabError(f"gwlbsim wrote no state (log in {RUN_DIR / 'gwlbsim.log'})")
            time.sleep(0.05)

    def wait_health(self, az: str, healthy: bool, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(FileNotFoundError, ValueError):
                if self.state(settle=0)["targets"][az]["healthy"] is healthy:
                    return
            time.sleep(0.1)
        raise LabError(f"gateway {az} did not become {'healthy' if healthy else 'unhealthy'}")

    # -- gateway modes -------------------------------------------------------------------

    def set_route_mode(self, az: str, mode: str) -> None:
        """Kernel routing of decapsulated traffic in a gateway: ``two-arm`` (main table:
        out of the outside interface, NAT) or ``one-arm`` (policy route ``iif gwlb``
        back to the GWLB, re-encapsulated at tc egress)."""
        t = SEG.target(az)
        table, gwlb_if = str(ONE_ARM_TABLE), SEG.gateway_if
        _sh(t.netns, "ip", "rule", "del", "iif", gwlb_if, "table", table, check=False)
        if mode == "one-arm":
            _sh(t.netns, "ip", "route", "replace", "default", "via", t.sim_ip, "dev", gwlb_if,
                "table", table)  # fmt: skip
            _sh(t.netns, "ip", "rule", "add", "iif", gwlb_if, "table", table, "pref", "1081")

    # -- down / status -------------------------------------------------------------------

    def down(self) -> None:
        """Remove the simulator, health responders, namespaces, links, rules, routes."""
        require_root()
        stop(PIDFILE, wait=3.0)
        for t in SEG.targets:
            stop(self._health_pidfile(t.az), wait=3.0)
        present = set(_sh(None, "ip", "netns", "list").split())
        table = str(ONE_ARM_TABLE)
        for t in SEG.targets:
            if t.netns in present:
                _sh(t.netns, "ip", "rule", "del", "iif", SEG.gateway_if, "table", table,
                    check=False)  # fmt: skip
                _sh(t.netns, "ip", "route", "flush", "table", table, check=False)
        for ns in SEG.namespaces:
            if ns in present:
                kill_all_in(ns)
                _sh(None, "ip", "netns", "del", ns)
        STATE_FILE.unlink(missing_ok=True)

    def status(self) -> dict[str, Any]:
        return {
            "gwlb_netns": SEG.netns,
            "workload_netns": SEG.workload_netns,
            "workload_ip": SEG.workload_ip,
            "targets": [asdict(t) for t in SEG.targets],
            "simulator_running": pid_alive(PIDFILE) is not None,
            "health_port": self.health_port,
        }


# --------------------------------------------------------------------------------------
# gateway side: load and attach the product's GWLB programs in a gateway namespace


def attach_gateway(
    netns_name: str, mode: str, idle_timeout: float, hook: str = "auto"
) -> dict[str, Any]:
    """Enter ``netns_name`` (network namespace only; bpffs is shared) and attach
    ``geneve.Gwlb`` to its gwlb interface; pins under /sys/fs/bpf/spectra/<netns>/gwlb."""
    from pyroute2 import netns

    from geneve import Gwlb

    netns.setns(netns_name, flags=0)
    gwlb = Gwlb(netns_name, SEG.gateway_if, mode=mode, idle_timeout=idle_timeout)  # type: ignore[arg-type]
    gwlb.load()
    if gwlb.mode != mode:
        gwlb.mode = mode  # type: ignore[assignment]
    plan = gwlb.attach(hook)  # type: ignore[arg-type]
    status = gwlb.status()
    status["plan"] = asdict(plan)
    gwlb.close()
    return status


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m perf.lab.gwlbsim", description=__doc__.split("\n")[0]
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("up")
    sub.add_parser("down")
    sub.add_parser("status")
    serve = sub.add_parser("serve")
    serve.add_argument("--health-port", type=int, default=HEALTH_PORT)
    att = sub.add_parser("attach")
    att.add_argument("--netns", required=True)
    att.add_argument("--mode", default="two-arm")
    att.add_argument("--idle-timeout", type=float, default=350.0)
    att.add_argument("--hook", choices=("auto", "xdp", "tc"), default="auto")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.cmd == "serve":
        Simulator(args.health_port).serve()
    elif args.cmd == "attach":
        print(json.dumps(attach_gateway(args.netns, args.mode, args.idle_timeout, args.hook)))
    elif args.cmd == "up":
        print(json.dumps(GwlbLab().up(), indent=2))
    elif args.cmd == "down":
        GwlbLab().down()
    else:
        lab = GwlbLab()
        out = lab.status()
        with contextlib.suppress(FileNotFoundError):
            out["simulator"] = lab.state()
        print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
