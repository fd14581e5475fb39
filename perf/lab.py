"""The network-namespace lab: one VPC with two Availability Zones, built with pyroute2.

    cs-ws-a --eth0/inside-- cs-gw-a --outside/to-gw-a--+
                               |mgmt                   +-- cs-inet (198.51.100.10: http,
    root ns --csm-a/csm-b------+                        |   iperf3, sockperf, udp echo)
                               |mgmt                   |
    cs-ws-b --eth0/inside-- cs-gw-b --outside/to-gw-b--+

Workloads route 0.0.0.0/0 to their own AZ's gateway; gateways forward and translate
toward ``cs-inet``, which has no route to the VPC, so untranslated traffic cannot come
back. Every address lives here, in :data:`TOPOLOGY`; tests and scripts read it from
``spectra lab status --json`` and never hard-code it. Lab traffic never leaves the
namespaces: nothing is bridged to a host interface, and the management links are
point-to-point /30s owned by the lab.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute, NetNS, netns

log = logging.getLogger("spectra.perf")

RUN_DIR = Path("/run/spectra-lab")
BPF_PIN_ROOT = Path("/sys/fs/bpf/spectra")
INET_NS = "cs-inet"
GWLB_NS = "cs-gwlb"  # reserved for the GWLB simulator (GWLB issue)


class LabError(RuntimeError):
    """The lab could not be built, inspected or removed."""


@dataclass(frozen=True, slots=True)
class Gateway:
    """One AZ: a workload namespace behind a gateway namespace."""

    az: str
    netns: str
    workload_netns: str
    inside_if: str
    inside_cidr: str  # gateway side of the workload subnet
    workload_if: str
    workload_cidr: str
    outside_if: str
    outside_cidr: str  # the gateway's public (EIP-like) address
    inet_if: str  # the cs-inet side of the outside link
    inet_cidr: str
    mgmt_host_if: str
    mgmt_host_cidr: str
    mgmt_if: str
    mgmt_cidr: str

    @property
    def outside_ip(self) -> str:
        return self.outside_cidr.split("/")[0]

    @property
    def inside_ip(self) -> str:
        return self.inside_cidr.split("/")[0]

    @property
    def workload_ip(self) -> str:
        return self.workload_cidr.split("/")[0]

    @property
    def mgmt_ip(self) -> str:
        return self.mgmt_cidr.split("/")[0]


def _gateway(az: str, n: int) -> Gateway:
    return Gateway(
        az=az,
        netns=f"cs-gw-{az}",
        workload_netns=f"cs-ws-{az}",
        inside_if="inside",
        inside_cidr=f"10.0.{n}.1/24",
        workload_if="eth0",
        workload_cidr=f"10.0.{n}.10/24",
        outside_if="outside",
        outside_cidr=f"203.0.113.{8 * (n - 1) + 2}/29",
        inet_if=f"to-gw-{az}",
        inet_cidr=f"203.0.113.{8 * (n - 1) + 1}/29",
        mgmt_host_if=f"csm-{az}",
        mgmt_host_cidr=f"10.255.{n}.1/30",
        mgmt_if="mgmt",
        mgmt_cidr=f"10.255.{n}.2/30",
    )


@dataclass(frozen=True, slots=True)
class Service:
    """A server process in the internet namespace."""

    name: str
    proto: str
    port: int
    argv: tuple[str, ...]


INET_SERVICE_CIDR = "198.51.100.10/32"
INET_SERVICE_IP = INET_SERVICE_CIDR.split("/")[0]


def _services() -> tuple[Service, ...]:
    py = sys.executable
    return (
        Service("http", "tcp", 80, (py, "-m", "perf.labsvc", "http", INET_SERVICE_IP, "80")),
        Service("udp_echo", "udp", 7, (py, "-m", "perf.labsvc", "udp-echo", INET_SERVICE_IP, "7")),
        Service("iperf3", "tcp", 5201, ("iperf3", "-s", "-B", INET_SERVICE_IP, "-p", "5201")),
        Service(
            "sockperf", "udp", 11111, ("sockperf", "server", "-i", INET_SERVICE_IP, "-p", "11111")
        ),
    )


@dataclass(frozen=True, slots=True)
class Topology:
    gateways: tuple[Gateway, ...]
    inet_netns: str
    inet_service_cidr: str

    @property
    def namespaces(self) -> tuple[str, ...]:
        names = [self.inet_netns]
        for gw in self.gateways:
            names += [gw.netns, gw.workload_netns]
        return tuple(names)

    def gateway(self, az: str) -> Gateway:
        for gw in self.gateways:
            if gw.az == az:
                return gw
        raise LabError(f"unknown AZ {az!r}; the lab has {[g.az for g in self.gateways]}")


TOPOLOGY = Topology(
    gateways=(_gateway("a", 1), _gateway("b", 2)),
    inet_netns=INET_NS,
    inet_service_cidr=INET_SERVICE_CIDR,
)


LOCK_FILE = Path("/run/spectra-lab.lock")


@contextlib.contextmanager
def exclusive(timeout: float = 900.0) -> Iterator[None]:
    """Hold the lab for one user at a time (a test session, a benchmark run)."""
    with LOCK_FILE.open("a") as fh:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LabError(
                        f"the lab is busy (lock {LOCK_FILE}) for {timeout:.0f}s"
                    ) from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def require_root() -> None:
    if os.geteuid() != 0:
        raise LabError(
            "the lab needs root (network namespaces, veth links, bpffs): run it with sudo"
        )


def ns_exec(ns: str, *argv: str) -> list[str]:
    """The argv that runs a command inside namespace ``ns``."""
    return ["ip", "netns", "exec", ns, *argv]


def run_in(ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(ns_exec(ns, *argv), capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(argv)} in {ns} failed: {proc.stderr.strip()}")
    return proc


def daemonize(argv: list[str], pidfile: Path, logfile: Path) -> int:
    """Start ``argv`` detached (own session, reparented to init) and record its pid."""
    pidfile.unlink(missing_ok=True)
    script = 'echo $$ > "$0"; exec "$@" >>"$LOG" 2>&1 </dev/null'
    subprocess.run(
        ["setsid", "-f", "sh", "-c", script, str(pidfile), *argv],
        env={**os.environ, "LOG": str(logfile), "PYTHONPATH": _PROJECT_ROOT},
        check=True,
    )
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError, ValueError):
            return int(pidfile.read_text())
        time.sleep(0.01)
    raise LabError(f"{argv[0]} did not start (no pid in {pidfile})")


_PROJECT_ROOT = str(Path(__file__).resolve().parents[1])
PEER_SOURCE = Path(__file__).with_name("peer_pass.bpf.c")


def _peer_object() -> Path:
    """Compile the peer program once (clang, BPF target) into the lab's run directory."""
    obj = RUN_DIR / "peer_pass.bpf.o"
    if obj.exists() and obj.stat().st_mtime >= PEER_SOURCE.stat().st_mtime:
        return obj
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    arch = subprocess.run(["gcc", "-print-multiarch"], capture_output=True, text=True)
    cmd = ["clang", "-O2", "-g", "-target", "bpf", f"-I/usr/include/{arch.stdout.strip()}"]
    proc = subprocess.run(
        [*cmd, "-c", str(PEER_SOURCE), "-o", str(obj)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise LabError(f"clang could not build {PEER_SOURCE.name}: {proc.stderr.strip()}")
    return obj


def _sysctl(ns: str, key: str, value: str) -> None:
    run_in(ns, "sysctl", "-q", "-w", f"{key}={value}")


class Lab:
    """Builds, inspects and removes the lab described by a :class:`Topology`."""

    def __init__(self, topology: Topology = TOPOLOGY) -> None:
        self.topology = topology

    # -- up ---------------------------------------------------------------------------

    def up(self) -> dict[str, Any]:
        """Build whatever is missing; a second call changes nothing."""
        require_root()
        existing = set(netns.listnetns())
        for ns in self.topology.namespaces:
            if ns not in existing:
                netns.create(ns)
            with NetNS(ns) as ipr:
                ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        for gw in self.topology.gateways:
            self._veth(gw.workload_netns, gw.workload_if, gw.netns, gw.inside_if)
            self._veth(gw.netns, gw.outside_if, self.topology.inet_netns, gw.inet_if)
            self._veth(None, gw.mgmt_host_if, gw.netns, gw.mgmt_if)
            self._addr(gw.workload_netns, gw.workload_if, gw.workload_cidr)
            self._addr(gw.netns, gw.inside_if, gw.inside_cidr)
            self._addr(gw.netns, gw.outside_if, gw.outside_cidr)
            self._addr(self.topology.inet_netns, gw.inet_if, gw.inet_cidr)
            self._addr(None, gw.mgmt_host_if, gw.mgmt_host_cidr)
            self._addr(gw.netns, gw.mgmt_if, gw.mgmt_cidr)
            self._default_route(gw.workload_netns, gw.inside_ip)
            self._default_route(gw.netns, gw.inet_cidr.split("/")[0])
            _sysctl(gw.netns, "net.ipv4.ip_forward", "1")
            # The kernel answers ICMP redirects on the inside subnet otherwise.
            _sysctl(gw.netns, "net.ipv4.conf.all.send_redirects", "0")
            _sysctl(gw.netns, "net.ipv4.conf.inside.send_redirects", "0")
        for gw in self.topology.gateways:
            self._nic_like(gw.workload_netns, gw.workload_if)
            self._nic_like(self.topology.inet_netns, gw.inet_if)
        # Service addresses live on the internet namespace's loopback (no dummy module
        # on every kernel); the gateways' outside links route to them.
        self._addr(self.topology.inet_netns, "lo", self.topology.inet_service_cidr)
        self._start_services()
        return self.status()

    def _nic_like(self, ns: str, ifname: str) -> None:
        """Make a gateway's veth peer behave like a NIC toward an XDP gateway: an XDP
        program so native redirects into it are delivered, and full checksums on what
        it sends (an XDP buffer loses the skb's partial-checksum state)."""
        run_in(ns, "ethtool", "-K", ifname, "tx", "off")
        if "xdp" in run_in(ns, "ip", "-d", "link", "show", "dev", ifname).stdout.split():
            return
        run_in(
            ns,
            "ip",
            "link",
            "set",
            "dev",
            ifname,
            "xdpdrv",
            "obj",
            str(_peer_object()),
            "sec",
            "xdp",
        )

    def _link_index(self, ns: str | None, ifname: str) -> int | None:
        with NetNS(ns) if ns else IPRoute() as ipr:
            found = ipr.link_lookup(ifname=ifname)
            return int(found[0]) if found else None

    def _veth(self, ns_a: str | None, if_a: str, ns_b: str | None, if_b: str) -> None:
        if self._link_index(ns_a, if_a) is not None:
            return
        peer: dict[str, Any] = {"ifname": if_b}
        if ns_b:
            peer["net_ns_fd"] = ns_b
        with NetNS(ns_a) if ns_a else IPRoute() as ipr:
            ipr.link("add", ifname=if_a, kind="veth", peer=peer)
        for ns, ifname in ((ns_a, if_a), (ns_b, if_b)):
            with NetNS(ns) if ns else IPRoute() as ipr:
                ipr.link("set", index=ipr.link_lookup(ifname=ifname)[0], state="up")

    def _addr(self, ns: str | None, ifname: str, cidr: str) -> None:
        address, prefix = cidr.split("/")
        with NetNS(ns) if ns else IPRoute() as ipr:
            idx = ipr.link_lookup(ifname=ifname)[0]
            have = {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=idx, family=2)}
            if address not in have:
                ipr.addr("add", index=idx, address=address, prefixlen=int(prefix))

    def _default_route(self, ns: str, gateway: str) -> None:
        with NetNS(ns) as ipr:
            ipr.route("replace", dst="0.0.0.0/0", gateway=gateway)

    def _pidfile(self, name: str) -> Path:
        return RUN_DIR / f"{name}.pid"

    def service_pid(self, name: str) -> int | None:
        """The pid of the lab service `name` when it runs, else None."""
        try:
            pid = int(self._pidfile(name).read_text())
            os.kill(pid, 0)
        except (OSError, ValueError):
            return None
        return pid

    def _start_services(self) -> None:
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        for svc in _services():
            if self.service_pid(svc.name):
                continue
            daemonize(
                ns_exec(self.topology.inet_netns, *svc.argv),
                self._pidfile(svc.name),
                RUN_DIR / f"{svc.name}.log",
            )
        deadline = time.monotonic() + 10
        pending = {s.name: s for s in _services() if s.proto == "tcp"}
        while pending and time.monotonic() < deadline:
            listening = run_in(self.topology.inet_netns, "ss", "-Htln").stdout
            for name, svc in list(pending.items()):
                if f"{INET_SERVICE_IP}:{svc.port} " in listening:
                    del pending[name]
            time.sleep(0.05)
        if pending:
            raise LabError(f"lab services did not start: {sorted(pending)} (logs in {RUN_DIR})")

    # -- down -------------------------------------------------------------------------

    def down(self) -> None:
        """Remove every namespace, link, process and pinned object the lab created."""
        require_root()
        for svc in _services():
            pid = self.service_pid(svc.name)
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGTERM)
            self._pidfile(svc.name).unlink(missing_ok=True)
        existing = set(netns.listnetns())
        for ns in (*self.topology.namespaces, GWLB_NS):
            if ns in existing:
                for pid in _pids_in_netns(ns):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                netns.remove(ns)
        with IPRoute() as ipr:
            for gw in self.topology.gateways:
                for idx in ipr.link_lookup(ifname=gw.mgmt_host_if):
                    ipr.link("del", index=idx)
        for gw in self.topology.gateways:
            _remove_tree(BPF_PIN_ROOT / gw.netns)
        with contextlib.suppress(OSError):
            BPF_PIN_ROOT.rmdir()

    # -- status -----------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Namespaces, interfaces, addresses and service endpoints, as they are now."""
        present = set(netns.listnetns())
        namespaces: dict[str, Any] = {}
        for ns in self.topology.namespaces:
            if ns not in present:
                continue
            with NetNS(ns) as ipr:
                namespaces[ns] = {"interfaces": _interfaces(ipr)}
        services = {
            s.name: {
                "address": INET_SERVICE_IP,
                "port": s.port,
                "proto": s.proto,
                "netns": self.topology.inet_netns,
                "running": self.service_pid(s.name) is not None,
            }
            for s in _services()
        }
        gateways = {}
        for gw in self.topology.gateways:
            d = asdict(gw)
            d |= {
                "outside_ip": gw.outside_ip,
                "inside_ip": gw.inside_ip,
                "workload_ip": gw.workload_ip,
                "mgmt_ip": gw.mgmt_ip,
            }
            gateways[gw.az] = d
        up = all(ns in present for ns in self.topology.namespaces)
        return {
            "up": up,
            "namespaces": namespaces,
            "gateways": gateways,
            "services": services,
        }


def _interfaces(ipr: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    addrs: dict[int, list[str]] = {}
    for a in ipr.get_addr(family=2):
        addrs.setdefault(a["index"], []).append(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}")
    for link in ipr.get_links():
        name = link.get_attr("IFLA_IFNAME")
        out[name] = {
            "index": link["index"],
            "mac": link.get_attr("IFLA_ADDRESS"),
            "state": link.get_attr("IFLA_OPERSTATE"),
            "addresses": addrs.get(link["index"], []),
        }
    return out


def _pids_in_netns(ns: str) -> list[int]:
    """Processes whose network namespace is ``ns`` (services, agents, generators)."""
    try:
        target = os.stat(f"/run/netns/{ns}")
    except FileNotFoundError:
        return []
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            st = os.stat(entry / "ns" / "net")
        except OSError:
            continue
        if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
            pids.append(int(entry.name))
    return pids


def _remove_tree(path: Path) -> None:
    if not path.exists():
        return
    for child in sorted(path.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if child.is_dir():
            child.rmdir()
        else:
            child.unlink()
    path.rmdir()
