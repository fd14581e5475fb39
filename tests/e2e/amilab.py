"""The AMI boot test's world: a VPC subnet attached to the lab's internet, a fake IMDS,
and the image booted with ``systemd-nspawn --boot`` (systemd as PID 1).

    cs-ami-ws eth0 10.0.60.20 --+                     (default route: the gateway)
                                 br0 10.0.60.1 (VPC router) + 169.254.169.254 (fake IMDS)
    container ens5 10.0.60.10 --+ cs-ami-vpc -- inet 203.0.113.42 == to-ami 203.0.113.41 cs-inet
                                  (IGW: only 10.0.60.10 leaves, as 203.0.113.42)

The container's ``ens5`` is a veth end created here and moved in by
``--network-interface`` (nspawn gives the container its own network namespace, where
``/proc/sys/net`` is writable). Its MAC is the fake IMDS's primary interface MAC, as on
EC2. There is no DHCP server in the lab: the test adds a static systemd-networkd file for
``ens5`` to its copy of the image (the image itself asks DHCP, as EC2 answers it).

This host runs neither systemd nor udev: nspawn is started in a mount namespace of its
own where ``/sys`` is read-only, so it does not wait for udev to initialise ``ens5`` (the
container still gets its own sysfs). Readiness and logs go through ``nsenter`` into the
container's init (there is no systemd-machined on this host, so ``machinectl`` /
``journalctl -M`` cannot be used; nspawn runs with ``--register=no --keep-unit``).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

REPO = Path(__file__).resolve().parents[2]
VPC_NS, WS_NS = "cs-ami-vpc", "cs-ami-ws"
INET_NS = "cs-inet"
GW_IF, GW_MAC, GW_IP = "ens5", "0e:5c:00:00:00:01", "10.0.60.10"
ROUTER_IP, WS_IP, SUBNET = "10.0.60.1", "10.0.60.20", "10.0.60.0/24"
INET_IP, UPLINK_IP = "203.0.113.41", "203.0.113.42"  # the cs-inet side, the "EIP"
IMDS_IP = "169.254.169.254"


def run(*argv: str, ns: str | None = None, check: bool = True, timeout: float = 60) -> str:
    full = ["ip", "netns", "exec", ns, *argv] if ns else list(argv)
    proc = subprocess.run(full, capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(full)} failed ({proc.returncode}): {proc.stderr}")
    return proc.stdout


def segment_down() -> None:
    for ns in (VPC_NS, WS_NS):
        run("ip", "netns", "del", ns, check=False)
    run("ip", "link", "del", GW_IF, check=False)
    run("ip", "link", "del", "to-ami", ns=INET_NS, check=False)


def segment_up() -> None:
    """The subnet, its router with the IGW model, the workload, the uplink to cs-inet."""
    segment_down()
    for ns in (VPC_NS, WS_NS):
        run("ip", "netns", "add", ns)
    run("ip", "link", "add", GW_IF, "address", GW_MAC, "type", "veth", "peer", "vpc-gw")
    run("ip", "link", "set", "vpc-gw", "netns", VPC_NS)
    run("ip", "link", "add", "eth0", "netns", WS_NS, "type", "veth", "peer", "vpc-ws")
    run("ip", "link", "set", "vpc-ws", "netns", VPC_NS)
    run("ip", "link", "add", "to-ami", "netns", INET_NS, "type", "veth", "peer", "inet")
    run("ip", "link", "set", "inet", "netns", VPC_NS)
    steps = [
        (VPC_NS, "ip link add br0 type bridge"),
        (VPC_NS, "ip link set vpc-gw master br0"),
        (VPC_NS, "ip link set vpc-ws master br0"),
        (VPC_NS, f"ip addr add {ROUTER_IP}/24 dev br0"),
        (VPC_NS, f"ip addr add {IMDS_IP}/32 dev br0"),
        (VPC_NS, f"ip addr add {UPLINK_IP}/30 dev inet"),
        (INET_NS, f"ip addr add {INET_IP}/30 dev to-ami"),
        (VPC_NS, "ip link set lo up"),
        (WS_NS, "ip link set lo up"),
    ]
    for ns, ifname in ((VPC_NS, "br0"), (VPC_NS, "vpc-gw"), (VPC_NS, "vpc-ws")):
        steps.append((ns, f"ip link set {ifname} up"))
    steps += [
        (VPC_NS, "ip link set inet up"),
        (INET_NS, "ip link set to-ami up"),
        (WS_NS, "ip link set eth0 up"),
        (WS_NS, f"ip addr add {WS_IP}/24 dev eth0"),
        (WS_NS, f"ip route add default via {GW_IP}"),  # the route table: 0/0 -> the ENI
        (VPC_NS, f"ip route add default via {INET_IP}"),
        (VPC_NS, "sysctl -qw net.ipv4.ip_forward=1"),
    ]
    for ns, cmd in steps:
        run(*cmd.split(), ns=ns)
    # the internet gateway: the instance's private address leaves as its Elastic IP;
    # any other source (an untranslated workload) is not the IGW's to translate
    igw = (
        "table ip igw {\n"
        "\tchain forward_igw {\n\t\ttype filter hook forward priority 0; policy accept;\n"
        f'\t\toifname "inet" ip saddr != {GW_IP} drop\n\t}}\n'
        "\tchain postrouting_igw {\n\t\ttype nat hook postrouting priority 100; policy accept;\n"
        f'\t\toifname "inet" ip saddr {GW_IP} snat to {UPLINK_IP}\n\t}}\n'
        "}\n"
    )
    subprocess.run(
        ["ip", "netns", "exec", VPC_NS, "nft", "-f", "-"], input=igw, text=True, check=True
    )


def start_imds(user_data: str, tmp: Path) -> subprocess.Popen[bytes]:
    """The fake IMDS on 169.254.169.254:80 in the VPC namespace."""
    instance = {
        "instance_id": "i-0a11ce0000000ami",
        "region": "eu-west-1",
        "availability_zone": "eu-west-1a",
        "interfaces": [
            {
                "mac": GW_MAC,
                "interface_id": "eni-0ami",
                "device_number": 0,
                "private_ips": [GW_IP],
                "subnet_cidr": SUBNET,
            }
        ],
        "user_data": user_data,
    }
    spec = tmp / "imds-instance.json"
    spec.write_text(json.dumps(instance))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [
            *("ip", "netns", "exec", VPC_NS, sys.executable, "-m", "perf.lab.imds"),
            *("--address", IMDS_IP, "--port", "80", "--instance", str(spec)),
        ],
        stdout=subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().decode().strip()
    assert line == f"http://{IMDS_IP}:80", f"fake IMDS did not start: {line!r}"
    return proc


def _descendant(pid: int, comm: str, depth: int = 3) -> int | None:
    """The first process named ``comm`` below ``pid`` (nspawn's child is the init)."""
    with contextlib.suppress(OSError):
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            if Path(f"/proc/{child}/comm").read_text().strip() == comm:
                return int(child)
            if depth > 1 and (found := _descendant(int(child), comm, depth - 1)):
                return found
    return None


@dataclass
class Container:
    """The image booted by ``systemd-nspawn --boot``; its console goes to ``console``."""

    proc: subprocess.Popen[bytes]
    console: Path
    out: BinaryIO
    init_pid: int = 0

    @classmethod
    def boot(cls, rootfs: Path, console: Path, network: Path, timeout_s: float = 30) -> Container:
        """Boot ``rootfs`` with ``network`` (a .network file) bound over the image's."""
        out = console.open("wb")
        proc = subprocess.Popen(
            [
                # nspawn waits for udev to initialise a moved interface when /sys is
                # writable; this host runs no udev, so nspawn sees a read-only /sys
                *("unshare", "--mount", "--propagation", "private", "sh", "-c"),
                'mount -o remount,bind,ro /sys && exec "$@"',
                "nspawn",
                *("systemd-nspawn", "--boot", "--register=no", "--keep-unit"),
                *("--machine=spectra-ami-e2e", f"--network-interface={GW_IF}", "-D", str(rootfs)),
                f"--bind-ro={network}:/etc/systemd/network/10-e2e.network",
            ],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        box = cls(proc, console, out)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and proc.poll() is None:
            init = _descendant(proc.pid, "systemd")
            if init:
                box.init_pid = init
                return box
            time.sleep(0.2)
        box.stop()
        raise AssertionError(f"no systemd in the container within {timeout_s}s:\n{box.log()}")

    def exec(self, *argv: str, check: bool = False, timeout: float = 30) -> str:
        proc = subprocess.run(
            ["nsenter", "-t", str(self.init_pid), "-a", *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} in the container: {proc.stderr}")
        return proc.stdout

    def journal(self, unit: str, lines: int = 60) -> str:
        return self.exec("journalctl", "--no-pager", "-n", str(lines), "-u", unit)

    def wait_active(self, units: tuple[str, ...], timeout_s: float) -> None:
        """Every unit active, or a failure that shows each unit's state and journal."""
        deadline = time.monotonic() + timeout_s
        states: list[str] = []
        while time.monotonic() < deadline:
            states = self.exec("systemctl", "is-active", *units).split()
            if states == ["active"] * len(units):
                return
            if "failed" in states or self.proc.poll() is not None:
                break
            time.sleep(0.5)
        report = "\n".join(
            f"--- {u}: {s}\n{self.journal(u)}"
            for u, s in zip(units, states or ["?"] * len(units), strict=False)
        )
        raise AssertionError(f"units not active within {timeout_s}s:\n{report}")

    def log(self) -> str:
        return self.console.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # nspawn shuts the container down (SIGRTMIN+3 to init)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.out.close()
