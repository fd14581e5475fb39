"""The appliance on the VPC lab: one config document for every gateway instance and the
product's agent (``spectra run --aws``) in each instance's namespace.

The agents find out who and where they are from their instance's IMDS, read the one
document from an embedded store on the host (or from SSM on the lab's moto server),
elect a leader per AZ in the lab's
DynamoDB lease table and move the AZ's NAT address, Elastic IP and private route to
it -- through the lab's moto endpoint, which the mirror turns into routes. Nothing in
the agents knows it is in a lab.

:func:`document` is that document for the lab as :meth:`VpcLab.status` describes it;
:class:`Fleet` starts, kills and reads the agents; :class:`LabReplacer` replaces an
instance as its Auto Scaling group would (a live resize in the lab).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

from control.agent import read_state
from control.config import parse_document
from control.store import ConfigStore, SqliteStore, SsmStore, VersionConflict
from perf.lab.host import LabError, daemonize, pid_alive, stop
from perf.lab.vpc.build import VpcLab
from perf.lab.vpc.seed import client
from perf.lab.vpc.topology import (
    LEASE_TABLE,
    MGMT_HOST_IP,
    MOTO_PORT,
    REGION,
    RUN_DIR,
    SSM_PREFIX,
    TOPOLOGY,
)

STORE = RUN_DIR / "config.db"
SSM_RELAY_PORT = MOTO_PORT + 1
SSM_ENDPOINT_URL = f"http://{MGMT_HOST_IP}:{SSM_RELAY_PORT}"
RELAY_PIDFILE = RUN_DIR / "ssm-relay.pid"
OPERATIONAL_ROLE = "spectra-lab-cross-account-role1"

# Short lease periods, so a failover in the lab is measured in seconds: a standby takes
# over duration + skew after the leader's last renewal. The duration also bounds an
# agent restart (process start, IMDS, one DynamoDB read: ~1.2 s here), which must resume
# the lease before a standby may take it: duration + skew - renew_interval > 1.2 s.
LAB_LEASE = {
    "table": LEASE_TABLE,
    "renew_interval_s": 0.5,
    "duration_s": 1.5,
    "skew_margin_s": 0.25,
    "health_failures": 2,
    "health_successes": 2,
}


def gateways() -> list[str]:
    return [g.name for g in TOPOLOGY.gateways]


def document(
    status: dict[str, Any],
    *,
    sync: bool = True,
    lease: dict[str, Any] | None = None,
    health: dict[str, Any] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """The one document of every gateway of the lab described by ``status`` (``lease``:
    the ``aws.lease`` section, by default the lab's short periods :data:`LAB_LEASE`;
    ``health``: the ``aws.health`` section)."""
    zones = {
        az["zone"]: {
            "nat_address": az["nat_ip"],
            "elastic_ip_allocation_id": az["eip_allocation_id"],
            "route_tables": [az["private_route_table_id"]],
        }
        for az in status["azs"].values()
    }
    members = [
        inst["enis"]["eth1"]["ip"]
        for inst in status["instances"].values()
        if inst["role"] == "gateway"
    ]
    doc: dict[str, Any] = {
        "interfaces": {"inside": "eth1", "outside": "eth0"},
        "nat": {"outside_addresses": "zone"},
        "aws": {
            "region": status["region"],
            "endpoint_url": status["endpoint_url"],
            "operational_role": {"name": OPERATIONAL_ROLE, "external_id": "spectra-lab"},
            "lease": LAB_LEASE if lease is None else lease,
            "zones": zones,
            **({"health": health} if health is not None else {}),
        },
        "ha": {"conntrack_sync": {"enabled": sync, "members": members}},
    }
    return doc | overrides


class Fleet:
    """The agents of the lab's gateway instances.

    ``store`` is where they read the document: ``local`` (an SQLite file on the host,
    :data:`STORE`) or ``ssm`` (Parameter Store on the lab's moto server under
    :data:`SSM_PREFIX`, reached through :mod:`perf.lab.vpc.relay` on
    :data:`SSM_ENDPOINT_URL`, which :meth:`store_down` stops: the store unreachable while
    the lease table answers). With ``api_tokens`` (a JSON list of ``{name, role, hash}``)
    each agent serves the config API and dashboard, else none does."""

    def __init__(
        self,
        lab: VpcLab,
        store: Literal["local", "ssm"] = "local",
        api_tokens: Path | None = None,
    ) -> None:
        self.lab = lab
        self.store = store
        self.api_tokens = api_tokens

    def _open(self) -> ConfigStore:
        """The store the agents read, from the host (the moto endpoint, never the relay)."""
        if self.store == "ssm":
            return SsmStore(client("ssm", self.lab.endpoint_url), SSM_PREFIX)
        return SqliteStore(STORE)

    def publish(self, doc: dict[str, Any], who: str = "perf.lab.vpc") -> int:
        """Store ``doc`` as the next version; the agents converge to it."""
        store = self._open()
        try:
            head = store.head()
            try:
                return store.put(parse_document(doc), head, who)
            except VersionConflict as exc:
                raise LabError(f"the lab's config store moved while writing: {exc}") from exc
        finally:
            store.close()

    def head(self) -> int:
        """The version of the document the agents should run."""
        store = self._open()
        try:
            return store.head()
        finally:
            store.close()

    def _pidfile(self, name: str) -> Path:
        return RUN_DIR / f"agent-{name}.pid"

    def netns(self, name: str) -> str:
        return TOPOLOGY.instance(name).netns

    def start(self, names: Iterable[str] | None = None) -> None:
        """Start the agent of each instance (``names``, default all) that has none."""
        url, env = f"local:{STORE}", None
        if self.store == "ssm":  # the relay is the test's to start and stop (store_up)
            url = f"ssm:{SSM_PREFIX}"
            env = {"AWS_ENDPOINT_URL_SSM": SSM_ENDPOINT_URL, "AWS_DEFAULT_REGION": REGION}
        for name in names or gateways():
            if pid_alive(self._pidfile(name)):
                continue
            ns = self.netns(name)
            api = ["--api-tokens", str(self.api_tokens)] if self.api_tokens else ["--no-api"]
            daemonize(
                [sys.executable, "-m", "control", "run", "--netns", ns, "--instance", ns,
                 "--aws", "--store", url, *api, "--poll", "0.5"],
                self._pidfile(name),
                RUN_DIR / f"agent-{name}.log",
                env,
            )  # fmt: skip

    def store_up(self) -> None:
        """Start the SSM relay (the agents' way to their ``ssm`` store) if it is down."""
        if pid_alive(RELAY_PIDFILE):
            return
        daemonize(
            [sys.executable, "-m", "perf.lab.vpc.relay",
             "--listen", f"{MGMT_HOST_IP}:{SSM_RELAY_PORT}", "--to", f"{MGMT_HOST_IP}:{MOTO_PORT}"],
            RELAY_PIDFILE,
            RUN_DIR / "ssm-relay.log",
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection((MGMT_HOST_IP, SSM_RELAY_PORT), timeout=0.5).close()
                return
            except OSError as exc:
                if time.monotonic() > deadline:
                    raise LabError(f"the SSM relay does not listen: {exc}") from exc
                time.sleep(0.05)

    def store_down(self) -> None:
        """Stop the SSM relay: the agents' config store is unreachable (DynamoDB is not)."""
        stop(RELAY_PIDFILE, 5.0)

    def kill_agent(self, name: str) -> None:
        """SIGKILL the agent alone (the data plane and conntrackd stay)."""
        pid = pid_alive(self._pidfile(name))
        if pid is None:
            raise LabError(f"the agent of {name} does not run")
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while pid_alive(self._pidfile(name)) and time.monotonic() < deadline:
            time.sleep(0.02)

    def stop(self) -> None:
        for name in gateways():
            stop(self._pidfile(name), 5.0)
        stop(RELAY_PIDFILE, 5.0)

    def state(self, name: str) -> dict[str, Any]:
        return read_state(self.netns(name)) or {}

    def role(self, name: str) -> str | None:
        role: str | None = self.state(name).get("aws", {}).get("role")
        return role

    def leader(self, az: str) -> str | None:
        """The instance of ``az`` (a lab AZ name, ``a``) whose agent says it leads."""
        for g in TOPOLOGY.gateways:
            if g.az == az and self.lab.alive(g.name) and self.role(g.name) == "leader":
                return g.name
        return None

    def wait(self, what: str, ready: Callable[[], bool], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if time.monotonic() > deadline:
                states = {n: self.state(n).get("aws", {}) for n in gateways()}
                raise LabError(f"{what} within {timeout:.0f}s: {json.dumps(states)[:4000]}")
            time.sleep(0.1)

    def wait_converged(self, names: Iterable[str] | None = None, timeout: float = 90.0) -> None:
        """Every agent applied the latest document and joined its AZ's lease, and each AZ
        has exactly one leader (a standby alone is not a led AZ)."""
        names = list(names or gateways())
        head = self.head()

        def ready() -> bool:
            leaders: dict[str, int] = {}
            for n in names:
                st = self.state(n)
                aws = st.get("aws", {})
                if not st.get("converged") or st.get("applied_version") != head:
                    return False
                if aws.get("role") not in ("leader", "standby"):
                    return False
                if aws.get("role") == "leader" and not aws.get("takeover", {}).get("ok"):
                    return False
                az = next(g.az for g in TOPOLOGY.gateways if g.name == n)
                leaders[az] = leaders.get(az, 0) + (aws.get("role") == "leader")
            return all(count == 1 for count in leaders.values())

        self.wait("the agents did not converge and join their leases", ready, timeout)

    def takeovers(self) -> dict[str, int]:
        """Each agent's count of leadership gained (acquired, took over, took back)."""
        counts = {}
        for n in gateways():
            lease = self.state(n).get("aws", {}).get("lease", {})
            counts[n] = int(lease.get("counters", {}).get("takeovers", 0))
        return counts


class LabReplacer:
    """The Auto Scaling group's replacement of an instance (a
    :class:`~control.aws.resize.Replacer`), as the lab models it: moto's group would
    launch an instance with no namespace, so the lab launches the new one itself in the
    old one's slot (:meth:`VpcLab.replace_instance`, the group's launch template version)
    and starts its agent, which boots, joins the lease and completes the launch hook."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet

    def replace(self, group: str, instance_id: str) -> str:
        status = self.fleet.lab.status()
        for name, inst in status["instances"].items():
            if inst["instance_id"] == instance_id:
                if status["azs"][inst["az"]]["asg"] != group:
                    raise LabError(f"{instance_id} ({name}) is not in group {group}")
                new = self.fleet.lab.replace_instance(name)
                self.fleet.start([name])
                return new
        raise LabError(f"{instance_id} is no instance of the lab")
