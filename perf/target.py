"""Where the benchmark runs: the machines (namespaces, SSH hosts or the local host),
interfaces and addresses of generator, gateway and sink.

Lab mode fills a :class:`Target` from :data:`perf.lab.TOPOLOGY`; on EC2 every field
comes from the command line (``--ingress-dev`` ...), so the suite never assumes the
lab's names outside the lab.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass


class PerfError(RuntimeError):
    """A benchmark step failed (a command, a missing interface, an unusable target)."""


@dataclass(frozen=True, slots=True)
class Host:
    """A place to run commands: a network namespace, an SSH destination, or here."""

    netns: str | None = None
    ssh: str | None = None

    @property
    def local(self) -> bool:
        return self.ssh is None

    def argv(self, *cmd: str) -> list[str]:
        if self.ssh is not None:
            return ["ssh", "-o", "BatchMode=yes", self.ssh, "--", *cmd]
        if self.netns is not None:
            return ["ip", "netns", "exec", self.netns, *cmd]
        return list(cmd)

    def run(self, *cmd: str, check: bool = True, timeout: float = 120.0) -> str:
        proc = subprocess.run(
            self.argv(*cmd), capture_output=True, text=True, check=False, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise PerfError(f"{' '.join(cmd)} on {self} failed: {proc.stderr.strip()[-400:]}")
        return proc.stdout

    def read(self, path: str) -> str:
        return self.run("cat", path)

    def write(self, path: str, value: str) -> None:
        self.run("sh", "-c", f'echo {value} > "$0"', path)

    def __str__(self) -> str:
        return self.ssh or (f"netns {self.netns}" if self.netns else "localhost")


@dataclass(frozen=True, slots=True)
class Target:
    """Generator -> gateway (ingress_dev ... egress_dev) -> sink."""

    generator: Host
    generator_dev: str
    generator_ip: str
    gateway: Host
    ingress_dev: str
    egress_dev: str
    public_ip: str  # the gateway's translated source address
    next_hop_ip: str  # the sink side of the egress link
    sink: Host
    sink_dev: str
    service_ip: str  # destination of the generated traffic and of the servers
    sockperf_port: int = 11111
    iperf3_port: int = 5201
    lab: bool = False


def lab_target(az: str = "a") -> Target:
    """The lab's AZ ``az``: cs-ws-<az> -> cs-gw-<az> -> cs-inet."""
    from perf.lab import INET_SERVICE_IP, TOPOLOGY

    gw = TOPOLOGY.gateway(az)
    return Target(
        generator=Host(netns=gw.workload_netns),
        generator_dev=gw.workload_if,
        generator_ip=gw.workload_ip,
        gateway=Host(netns=gw.netns),
        ingress_dev=gw.inside_if,
        egress_dev=gw.outside_if,
        public_ip=gw.outside_ip,
        next_hop_ip=gw.inet_cidr.split("/")[0],
        sink=Host(netns=TOPOLOGY.inet_netns),
        sink_dev=gw.inet_if,
        service_ip=INET_SERVICE_IP,
        lab=True,
    )
