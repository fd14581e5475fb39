"""The appliance on the VPC lab: one config document for every gateway instance and the
product's agent (``spectra run --aws``) in each instance's namespace.

The agents find out who and where they are from their instance's IMDS, read the one
document from an embedded store on the host, elect a leader per AZ in the lab's
DynamoDB lease table and move the AZ's NAT address, Elastic IP and private route to
it -- through the lab's moto endpoint, which the mirror turns into routes. Nothing in
the agents knows it is in a lab.

:func:`document` is that document for the lab as :meth:`VpcLab.status` describes it;
:class:`Fleet` starts, kills and reads the agents.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from control.agent import read_state
from control.config import parse_document
from control.store import SqliteStore, VersionConflict
from perf.lab.host import LabError, daemonize, pid_alive, stop
from perf.lab.vpc.build import VpcLab
from perf.lab.vpc.topology import LEASE_TABLE, RUN_DIR, TOPOLOGY

STORE = RUN_DIR / "config.db"
OPERATIONAL_ROLE = "spectra-lab-cross-account-role1"

# Short lease periods, so a failover in the lab is measured in seconds: a standby takes
# over duration + skew after the leader's last renewal. The duration also bounds an
# agent restart (process start, IMDS, one DynamoDB read: ~1.2 s here), which must resume
# the lease before a standby may take it: duration + skew - renew_interval > 1.2 s.
LAB_LEASE = {
    "table": LEASE_TABLE,
    "renew_interval_s": 0.5,
    "duration_s": 2.0,
    "skew_margin_s": 0.25,
    "health_failures": 2,
    "health_successes": 2,
}


def gateways() -> list[str]:
    return [g.name for g in TOPOLOGY.gateways]


def document(status: dict[str, Any], *, sync: bool = True, **overrides: Any) -> dict[str, Any]:
    """The one document of every gateway of the lab described by ``status``."""
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
            "lease": LAB_LEASE,
            "zones": zones,
        },
        "ha": {"conntrack_sync": {"enabled": sync, "members": members}},
    }
    return doc | overrides


class Fleet:
    """The agents of the lab's gateway instances; with ``api_tokens`` (a JSON list of
    ``{name, role, hash}``) each serves the config API and dashboard, else none does."""

    def __init__(self, lab: VpcLab, api_tokens: Path | None = None) -> None:
        self.lab = lab
        self.api_tokens = api_tokens

    def publish(self, doc: dict[str, Any], who: str = "perf.lab.vpc") -> int:
        """Store ``doc`` as the next version; the agents converge to it."""
        store = SqliteStore(STORE)
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
        store = SqliteStore(STORE)
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
        for name in names or gateways():
            if pid_alive(self._pidfile(name)):
                continue
            ns = self.netns(name)
            api = ["--api-tokens", str(self.api_tokens)] if self.api_tokens else ["--no-api"]
            daemonize(
                [sys.executable, "-m", "control", "run", "--netns", ns, "--instance", ns,
                 "--aws", "--store", f"local:{STORE}", *api, "--poll", "0.5"],
                self._pidfile(name),
                RUN_DIR / f"agent-{name}.log",
            )  # fmt: skip

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
