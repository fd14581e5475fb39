"""`VpcLab`: brings the VPC lab up and down, reports it, and kills, revives or replaces
instances.

``up()`` is idempotent: it starts what is not running and creates what is missing, in
this order: the management bridge, the AWS endpoint (:mod:`perf.lab.vpc.motod`) and its
resources (:mod:`perf.lab.vpc.seed`), the namespaces and links, the internet's servers,
the instances' metadata services (:mod:`perf.lab.vpc.imds`) and the mirror
(:mod:`perf.lab.vpc.mirror`); it returns once the mirror has applied the VPC.
``down()`` removes every namespace, link, process and file it made.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute, NetlinkError, NetNS, netns

from perf.lab.build import attach_peer_pass
from perf.lab.host import (
    BPF_PIN_ROOT,
    LabError,
    daemonize,
    exclusive,
    ns_exec,
    pid_alive,
    pids_in_netns,
    remove_tree,
    require_root,
    run_in,
    stop,
)
from perf.lab.vpc.render import igw_nft
from perf.lab.vpc.seed import clients, describe, launch, seed
from perf.lab.vpc.topology import (
    ENDPOINT_URL,
    IGW_INET_CIDR,
    IGW_INET_IF,
    IGW_NS,
    IGW_VPC_CIDR,
    IGW_VPC_IF,
    IMDS_IP,
    INET_IGW_CIDR,
    INET_IGW_IF,
    INET_NS,
    INET_SERVICE_IP,
    LOCK_FILE,
    MGMT_BRIDGE,
    MGMT_BRIDGE_MAC,
    MGMT_HOST_CIDR,
    MGMT_HOST_IP,
    MOTO_PORT,
    ROUTER_IGW_CIDR,
    ROUTER_IGW_IF,
    ROUTER_NS,
    RUN_DIR,
    TOPOLOGY,
    VPC_CIDR,
    Instance,
    Topology,
    router_ip,
)

log = logging.getLogger("spectra.perf")

SERVICES = {"http": ("tcp", 80), "tcp-echo": ("tcp", 7), "udp-echo": ("udp", 7)}


def _ipr(ns: str | None) -> Any:
    return NetNS(ns) if ns else IPRoute()


def _index(ipr: Any, ifname: str) -> int | None:
    found = ipr.link_lookup(ifname=ifname)
    return int(found[0]) if found else None


def _veth(ns_a: str | None, if_a: str, ns_b: str, if_b: str, mac_b: str | None = None) -> None:
    with _ipr(ns_a) as ipr:
        if _index(ipr, if_a) is None:
            peer: dict[str, Any] = {"ifname": if_b, "net_ns_fd": ns_b}
            if mac_b:
                peer["address"] = mac_b
            ipr.link("add", ifname=if_a, kind="veth", peer=peer)
        ipr.link("set", index=_index(ipr, if_a), state="up")
    with _ipr(ns_b) as ipr:
        ipr.link("set", index=_index(ipr, if_b), state="up")


def _addr(ns: str | None, ifname: str, cidr: str) -> None:
    address, prefix = cidr.split("/")
    with _ipr(ns) as ipr:
        idx = _index(ipr, ifname)
        have = {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=idx, family=2)}
        if address not in have:
            ipr.addr("add", index=idx, address=address, prefixlen=int(prefix))


def _route(ns: str, dst: str, gateway: str) -> None:
    with NetNS(ns) as ipr:
        ipr.route("replace", dst=dst, gateway=gateway)


def _delete_link(ipr: Any, ifname: str) -> None:
    """Delete ``ifname`` if it is there. A veth whose other end was in a namespace just
    removed goes away on its own, a moment later: gone meanwhile (ENODEV) is done."""
    idx = _index(ipr, ifname)
    if idx is None:
        return
    try:
        ipr.link("del", index=idx)
    except NetlinkError as exc:
        if exc.code != errno.ENODEV:
            raise


def _sysctls(ns: str, values: dict[str, str]) -> None:
    run_in(ns, "sysctl", "-q", "-w", *(f"{k}={v}" for k, v in values.items()))


def _nft(ns: str, text: str) -> None:
    proc = subprocess.run(
        ns_exec(ns, "nft", "-f", "-"), input=text, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise LabError(f"nft -f in {ns}: {proc.stderr.strip()}")


class VpcLab:
    """The VPC lab of :data:`~perf.lab.vpc.topology.TOPOLOGY` (see the package doc)."""

    def __init__(self, topology: Topology = TOPOLOGY, endpoint_url: str = ENDPOINT_URL) -> None:
        self.topology = topology
        self.endpoint_url = endpoint_url

    # -- processes ---------------------------------------------------------------------

    def _pidfile(self, name: str) -> Path:
        return RUN_DIR / f"{name}.pid"

    def _start(self, name: str, argv: list[str]) -> None:
        if pid_alive(self._pidfile(name)):
            return
        daemonize(argv, self._pidfile(name), RUN_DIR / f"{name}.log")

    def _processes(self) -> dict[str, str]:
        procs = {"motod": "", "mirror": ""}
        procs |= {f"svc-{s}": INET_NS for s in SERVICES}
        procs |= {f"imds-{g.name}": g.netns for g in self.topology.gateways}
        return procs

    def clients(self) -> dict[str, Any]:
        """boto3 clients (ec2, autoscaling, dynamodb, ssm) for the lab's endpoint."""
        return clients(self.endpoint_url)

    @contextlib.contextmanager
    def exclusive(self, timeout: float = 900.0) -> Iterator[None]:
        """Hold the VPC lab for one user (a test session, a benchmark)."""
        with exclusive(timeout, LOCK_FILE):
            yield

    # -- up ----------------------------------------------------------------------------

    def up(self) -> dict[str, Any]:
        """Build whatever is missing and start whatever is not running; returns status()."""
        require_root()
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        self._mgmt_bridge()
        self._start_moto()
        c = self.clients()
        seed(c, self.topology)
        aws = describe(c, self.endpoint_url, self.topology)
        existing = set(netns.listnetns())
        for ns in self.topology.namespaces:
            if ns not in existing:
                netns.create(ns)
            with NetNS(ns) as ipr:
                ipr.link("set", index=_index(ipr, "lo"), state="up")
        self._router_and_igw()
        self._internet()
        for inst in self.topology.instances:
            self._instance(inst, aws["instances"][inst.name])
        self._full_checksums()
        self._start(
            "mirror",
            [
                sys.executable,
                "-m",
                "perf.lab.vpc.mirror",
                "--endpoint-url",
                self.endpoint_url,
                "--status-file",
                str(RUN_DIR / "mirror.json"),
            ],
        )
        self.sync(timeout=20)
        return self.status()

    def _full_checksums(self) -> None:
        """Every lab link but the gateways' own sends complete checksums, as a NIC
        delivers them: a veth passes partial ones along (CHECKSUM_PARTIAL), which a
        gateway's XDP program would see unfinished and rewrite incrementally into wrong
        ones (the gateways' interfaces are left as they are: they stand for ENIs)."""
        gateways = {inst.netns for inst in self.topology.gateways}
        for ns in self.topology.namespaces:
            if ns in gateways:
                continue
            with NetNS(ns) as ipr:
                names = [link.get_attr("IFLA_IFNAME") for link in ipr.get_links()]
            for name in names:
                if name != "lo":
                    run_in(ns, "ethtool", "-K", name, "tx", "off")

    def _mgmt_bridge(self) -> None:
        # A fixed MAC: else the bridge takes its lowest port's, which changes when an
        # instance's management link goes (a revive), and every agent's ARP entry for
        # the AWS endpoint points nowhere until it expires (its lease renewals time out).
        with IPRoute() as ipr:
            if _index(ipr, MGMT_BRIDGE) is None:
                ipr.link("add", ifname=MGMT_BRIDGE, kind="bridge")
            ipr.link("set", index=_index(ipr, MGMT_BRIDGE), address=MGMT_BRIDGE_MAC, state="up")
        _addr(None, MGMT_BRIDGE, MGMT_HOST_CIDR)

    def _start_moto(self) -> None:
        self._start(
            "motod",
            [
                sys.executable,
                "-m",
                "perf.lab.vpc.motod",
                "--host",
                MGMT_HOST_IP,
                "--port",
                str(MOTO_PORT),
                "--lifecycle-log",
                str(RUN_DIR / "lifecycle.jsonl"),
            ],
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection((MGMT_HOST_IP, MOTO_PORT), timeout=0.5),
            ):
                return
            time.sleep(0.1)
        raise LabError(f"the moto server did not listen on {self.endpoint_url} (log in {RUN_DIR})")

    def _router_and_igw(self) -> None:
        # New links inherit "default": no reverse-path filter (routing is asymmetric by
        # design), no redirects, proxy ARP (the VPC answers for every address).
        no_rp_filter = {
            "net.ipv4.ip_forward": "1",
            "net.ipv4.conf.all.rp_filter": "0",
            "net.ipv4.conf.default.rp_filter": "0",
        }
        _sysctls(
            ROUTER_NS,
            no_rp_filter
            | {
                "net.ipv4.conf.all.send_redirects": "0",
                "net.ipv4.conf.default.send_redirects": "0",
                "net.ipv4.conf.default.proxy_arp": "1",
            },
        )
        _sysctls(IGW_NS, no_rp_filter)
        _veth(ROUTER_NS, ROUTER_IGW_IF, IGW_NS, IGW_VPC_IF)
        _addr(ROUTER_NS, ROUTER_IGW_IF, ROUTER_IGW_CIDR)
        _addr(IGW_NS, IGW_VPC_IF, IGW_VPC_CIDR)
        _route(IGW_NS, VPC_CIDR, ROUTER_IGW_CIDR.split("/")[0])
        _veth(IGW_NS, IGW_INET_IF, INET_NS, INET_IGW_IF)
        _addr(IGW_NS, IGW_INET_IF, IGW_INET_CIDR)
        _addr(INET_NS, INET_IGW_IF, INET_IGW_CIDR)
        _route(IGW_NS, "0.0.0.0/0", INET_IGW_CIDR.split("/")[0])
        if "cv_igw" not in run_in(IGW_NS, "nft", "list", "tables").stdout:
            # Nothing crosses the gateway untranslated before the mirror's first step.
            _nft(IGW_NS, igw_nft({}))

    def _internet(self) -> None:
        _addr(INET_NS, "lo", f"{INET_SERVICE_IP}/32")
        _route(INET_NS, "0.0.0.0/0", IGW_INET_CIDR.split("/")[0])
        for name in SERVICES:
            self._start(
                f"svc-{name}",
                ns_exec(
                    INET_NS,
                    sys.executable,
                    "-m",
                    "perf.lab.echo",
                    name,
                    INET_SERVICE_IP,
                    str(SERVICES[name][1]),
                ),
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            listening = run_in(INET_NS, "ss", "-Htuln").stdout
            if all(f"{INET_SERVICE_IP}:{port} " in listening for _p, port in SERVICES.values()):
                return
            time.sleep(0.05)
        raise LabError(f"the internet's servers did not start (logs in {RUN_DIR})")

    def _instance(self, inst: Instance, aws: dict[str, Any]) -> None:
        ns = inst.netns
        if ns not in set(netns.listnetns()):
            netns.create(ns)
        with NetNS(ns) as ipr:
            ipr.link("set", index=_index(ipr, "lo"), state="up")
        for nic in inst.nics:
            eth = f"eth{nic.device}"
            eni = aws["enis"][eth]
            _veth(ROUTER_NS, inst.link(nic.device), ns, eth, mac_b=eni["mac"])
            _addr(ROUTER_NS, inst.link(nic.device), f"{eni['router_ip']}/32")
            _addr(ns, eth, eni["cidr"])
            if inst.role == "gateway":
                attach_peer_pass(ROUTER_NS, inst.link(nic.device))
        _route(ns, "0.0.0.0/0", aws["enis"]["eth0"]["router_ip"])
        if inst.role != "gateway" or inst.mgmt_ip is None:
            return
        _veth(None, inst.mgmt_host_if, ns, "mgmt")
        with IPRoute() as ipr:
            ipr.link("set", index=_index(ipr, inst.mgmt_host_if), master=_index(ipr, MGMT_BRIDGE))
        _addr(ns, "mgmt", f"{inst.mgmt_ip}/{MGMT_HOST_CIDR.split('/')[1]}")
        _addr(ns, "lo", f"{IMDS_IP}/32")
        self._start(
            f"imds-{inst.name}",
            ns_exec(
                ns,
                sys.executable,
                "-m",
                "perf.lab.vpc.imds",
                "--instance-id",
                aws["instance_id"],
                "--endpoint-url",
                self.endpoint_url,
            ),
        )
        deadline = time.monotonic() + 10
        while f"{IMDS_IP}:80 " not in run_in(ns, "ss", "-Htln").stdout:
            if time.monotonic() > deadline:
                raise LabError(f"the metadata service of {inst.name} did not start")
            time.sleep(0.05)

    # -- the mirror --------------------------------------------------------------------

    def mirror_status(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads((RUN_DIR / "mirror.json").read_text())
        except (OSError, ValueError):
            return {}
        return data

    def sync(self, timeout: float = 5.0) -> dict[str, Any]:
        """Wait until the mirror has applied a poll that started after this call: every
        API call made before it has reached the namespaces."""
        since = time.time()
        deadline = time.monotonic() + timeout
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            last = self.mirror_status()
            if last.get("polled_at", 0) > since and not last.get("error"):
                return last
            time.sleep(0.02)
        raise LabError(
            f"the mirror did not apply the VPC within {timeout:g}s: "
            f"{last.get('error') or 'no step finished'} (log in {RUN_DIR / 'mirror.log'})"
        )

    def lifecycle_actions(self) -> list[dict[str, Any]]:
        """CompleteLifecycleAction / RecordLifecycleActionHeartbeat calls, oldest first."""
        try:
            lines = (RUN_DIR / "lifecycle.jsonl").read_text().splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in lines if line.strip()]

    # -- instance failures -------------------------------------------------------------

    def kill_instance(self, name: str) -> None:
        """The instance dies: every process in its namespace gets SIGKILL and its links go
        down. The AWS side is left as it is (the instance still "runs" there)."""
        require_root()
        inst = self.topology.instance(name)
        for pid in pids_in_netns(inst.netns):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with NetNS(inst.netns) as ipr:
            for link in ipr.get_links():
                if link.get_attr("IFLA_IFNAME") != "lo":
                    ipr.link("set", index=link["index"], state="down")
        self._pidfile(f"imds-{name}").unlink(missing_ok=True)

    def revive_instance(self, name: str) -> None:
        """The instance boots again with a clean kernel: its namespace is made anew (no
        nft rules, no XDP, no sysctls of the product's), its links and metadata service
        are back, and the mirror routes to it again."""
        require_root()
        inst = self.topology.instance(name)
        self._remove_ns(inst.netns)
        # what a reboot clears: the instance's bpffs pins and its /run state
        remove_tree(BPF_PIN_ROOT / inst.netns)
        remove_tree(Path("/run/spectra") / inst.netns)
        aws = describe(self.clients(), self.endpoint_url, self.topology)
        self._instance(inst, aws["instances"][name])
        self.sync()

    def replace_instance(self, name: str) -> str:
        """What the Auto Scaling group does when it replaces the instance ``name``: the
        old one leaves the group and is terminated (its namespace, processes and pins
        go), a new one is launched from the launch template version the group uses (its
        instance type), in the same lab slot (same name, ENI addresses, management
        link), and joins the group; the mirror routes to it. Returns the new instance id;
        the agent is the caller's to start (``Fleet.start``)."""
        require_root()
        inst = self.topology.instance(name)
        c = self.clients()
        ec2, asg = c["ec2"], c["autoscaling"]
        old = describe(c, self.endpoint_url, self.topology)["instances"][name]["instance_id"]
        group = self.topology.az(inst.az).asg
        self._remove_ns(inst.netns)
        self._pidfile(f"imds-{name}").unlink(missing_ok=True)
        remove_tree(BPF_PIN_ROOT / inst.netns)
        remove_tree(Path("/run/spectra") / inst.netns)
        asg.detach_instances(
            AutoScalingGroupName=group, InstanceIds=[old], ShouldDecrementDesiredCapacity=True
        )
        ec2.terminate_instances(InstanceIds=[old])
        spec = asg.describe_auto_scaling_groups(AutoScalingGroupNames=[group])["AutoScalingGroups"][
            0
        ]["LaunchTemplate"]
        data = ec2.describe_launch_template_versions(
            LaunchTemplateId=spec["LaunchTemplateId"], Versions=[spec.get("Version", "$Default")]
        )["LaunchTemplateVersions"][0]["LaunchTemplateData"]
        subnets = {
            (az.name, kind): ec2.describe_subnets(
                Filters=[{"Name": "tag:Name", "Values": [f"{kind}-{az.name}"]}]
            )["Subnets"][0]["SubnetId"]
            for az in self.topology.azs
            for kind in ("private", "public")
        }
        new = str(launch(ec2, inst, subnets, data["ImageId"], data["InstanceType"])["InstanceId"])
        asg.attach_instances(AutoScalingGroupName=group, InstanceIds=[new])
        aws = describe(c, self.endpoint_url, self.topology)
        self._instance(inst, aws["instances"][name])
        self.sync()
        log.info("lab: %s replaced: %s -> %s (%s)", name, old, new, data["InstanceType"])
        return new

    def alive(self, name: str) -> bool:
        inst = self.topology.instance(name)
        if inst.netns not in set(netns.listnetns()):
            return False
        with NetNS(inst.netns) as ipr:
            idx = _index(ipr, "eth0")
            if idx is None:
                return False
            return bool(ipr.get_links(idx)[0].get_attr("IFLA_OPERSTATE") != "DOWN")

    # -- down --------------------------------------------------------------------------

    def _remove_ns(self, ns: str) -> None:
        if ns not in set(netns.listnetns()):
            return
        for pid in pids_in_netns(ns):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        netns.remove(ns)

    def down(self) -> None:
        """Remove every namespace, link, process and file the lab made."""
        require_root()
        for name in self._processes():
            stop(self._pidfile(name), 3.0)
        for ns in self.topology.namespaces:
            self._remove_ns(ns)
        for inst in self.topology.gateways:  # what the appliance left on the host
            remove_tree(BPF_PIN_ROOT / inst.netns)
            remove_tree(Path("/run/spectra") / inst.netns)
        with IPRoute() as ipr:
            for name in (*(inst.mgmt_host_if for inst in self.topology.gateways), MGMT_BRIDGE):
                _delete_link(ipr, name)
        if RUN_DIR.exists():
            for child in RUN_DIR.iterdir():
                child.unlink()
            RUN_DIR.rmdir()

    # -- status ------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Everything a test or a benchmark needs, as it is now (see the package doc)."""
        present = set(netns.listnetns())
        processes = {
            name: {"pid": pid_alive(self._pidfile(name)), "netns": ns or None}
            for name, ns in self._processes().items()
        }
        aws: dict[str, Any] = {}
        if processes["motod"]["pid"]:
            try:
                aws = describe(self.clients(), self.endpoint_url, self.topology)
            except Exception as exc:
                log.warning("the lab's endpoint did not answer: %s", exc)
        for name, inst in aws.get("instances", {}).items():
            inst["alive"] = self.alive(name) if inst["netns"] in present else False
            if inst["role"] == "gateway":
                inst["imds_url"] = f"http://{IMDS_IP}"
        up = all(ns in present for ns in self.topology.namespaces) and all(
            p["pid"] for p in processes.values()
        )
        return {
            "up": up,
            "endpoint_url": self.endpoint_url,
            "region": aws.get("region"),
            "run_dir": str(RUN_DIR),
            "namespaces": {ns: ns in present for ns in self.topology.namespaces},
            "processes": processes,
            "mirror": self.mirror_status(),
            "router": {
                "netns": ROUTER_NS,
                "igw_link": ROUTER_IGW_IF,
                "subnet_router_ips": {
                    cidr: router_ip(cidr)
                    for az in self.topology.azs
                    for cidr in (az.private_cidr, az.public_cidr)
                },
            },
            "igw": {"netns": IGW_NS, "vpc_link": IGW_VPC_IF, "inet_link": IGW_INET_IF},
            "internet": {
                "netns": INET_NS,
                "service_ip": INET_SERVICE_IP,
                "services": {
                    name: {"proto": proto, "port": port} for name, (proto, port) in SERVICES.items()
                },
            },
            "mgmt": {"bridge": MGMT_BRIDGE, "host_ip": MGMT_HOST_IP},
            **{k: v for k, v in aws.items() if k not in ("endpoint_url", "region")},
        }
