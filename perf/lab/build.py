"""Builds, inspects and removes the lab described by :data:`perf.lab.topology.TOPOLOGY`
(pyroute2 for namespaces, veth links, addresses and routes), starts its servers, and
:func:`held` — the lab for one user, left as it was found.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute, NetNS, netns

from perf.lab.host import (
    BPF_PIN_ROOT,
    RUN_DIR,
    LabError,
    daemonize,
    exclusive,
    kill_all_in,
    ns_exec,
    pid_alive,
    remove_tree,
    require_root,
    run_in,
    stop,
)
from perf.lab.servers import servers
from perf.lab.topology import INET_SERVICE_IP, TOPOLOGY, Topology

log = logging.getLogger("spectra.perf")

PEER_SOURCE = Path(__file__).with_name("peer_pass.bpf.c")


def peer_object() -> Path:
    """The XDP_PASS program a veth peer needs for native redirects into it, compiled
    once (clang, BPF target) into the lab's run directory."""
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


def attach_peer_pass(ns: str, ifname: str) -> None:
    """:func:`peer_object` on ``ifname`` in ``ns`` (native), unless it has XDP already."""
    if "xdp" in run_in(ns, "ip", "-d", "link", "show", "dev", ifname).stdout.split():
        return
    run_in(ns, "ip", "link", "set", "dev", ifname, "xdpdrv", "obj", str(peer_object()),
           "sec", "xdp")  # fmt: skip


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
        # Server addresses live on the internet namespace's loopback (no dummy module
        # on every kernel); the gateways' outside links route to them.
        self._addr(self.topology.inet_netns, "lo", self.topology.inet_service_cidr)
        self._start_servers()
        return self.status()

    def _nic_like(self, ns: str, ifname: str) -> None:
        """Make a gateway's veth peer behave like a NIC toward an XDP gateway: an XDP
        program so native redirects into it are delivered, and full checksums on what
        it sends (an XDP buffer loses the skb's partial-checksum state)."""
        run_in(ns, "ethtool", "-K", ifname, "tx", "off")
        attach_peer_pass(ns, ifname)

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

    def server_pid(self, name: str) -> int | None:
        """The pid of the lab server ``name`` when it runs, else None."""
        return pid_alive(self._pidfile(name))

    def _start_servers(self) -> None:
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        for srv in servers():
            if self.server_pid(srv.name):
                continue
            daemonize(
                ns_exec(self.topology.inet_netns, *srv.argv),
                self._pidfile(srv.name),
                RUN_DIR / f"{srv.name}.log",
            )
        deadline = time.monotonic() + 10
        pending = {s.name: s for s in servers() if s.proto == "tcp"}
        while pending and time.monotonic() < deadline:
            listening = run_in(self.topology.inet_netns, "ss", "-Htln").stdout
            for name, srv in list(pending.items()):
                if f"{INET_SERVICE_IP}:{srv.port} " in listening:
                    del pending[name]
            time.sleep(0.05)
        if pending:
            raise LabError(f"lab servers did not start: {sorted(pending)} (logs in {RUN_DIR})")

    # -- down -------------------------------------------------------------------------

    def down(self) -> None:
        """Remove every namespace, link, process and pinned object the lab created."""
        require_root()
        for srv in servers():
            stop(self._pidfile(srv.name), wait=0)
        existing = set(netns.listnetns())
        for ns in self.topology.all_namespaces:
            if ns in existing:
                kill_all_in(ns)
                netns.remove(ns)
        with IPRoute() as ipr:
            for gw in self.topology.gateways:
                for idx in ipr.link_lookup(ifname=gw.mgmt_host_if):
                    ipr.link("del", index=idx)
        for gw in self.topology.gateways:
            remove_tree(BPF_PIN_ROOT / gw.netns)
        with contextlib.suppress(OSError):
            BPF_PIN_ROOT.rmdir()

    # -- status -----------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Namespaces, interfaces, addresses and server endpoints, as they are now."""
        present = set(netns.listnetns())
        namespaces: dict[str, Any] = {}
        for ns in self.topology.namespaces:
            if ns not in present:
                continue
            with NetNS(ns) as ipr:
                namespaces[ns] = {"interfaces": _interfaces(ipr)}
        endpoints = {
            s.name: {
                "address": INET_SERVICE_IP,
                "port": s.port,
                "proto": s.proto,
                "netns": self.topology.inet_netns,
                "running": self.server_pid(s.name) is not None,
            }
            for s in servers()
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
            "services": endpoints,
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


@contextlib.contextmanager
def held(progress: Callable[[str], None] = log.info) -> Iterator[Lab]:
    """The lab for this user alone (:func:`exclusive`), brought up if it was down and
    taken down again afterwards: left as it was found."""
    require_root()
    with exclusive():
        lab = Lab()
        was_up = bool(lab.status()["up"])
        if not was_up:
            progress("bringing the lab up (it will be taken down afterwards)")
            lab.up()
        try:
            yield lab
        finally:
            if not was_up:
                lab.down()
