"""Failover of an AZ's leader on the VPC lab: the data-path gap and the flows that survive.

``python -m perf failover --json FILE [--quick] [--runs N] [--steady-seconds S]
[--forward-probes]``

The issue's benchmark. 200 long-lived TCP connections (a small message every 50 ms, every
echo checked) and a 100/s UDP stream (:mod:`perf.lab.flowprobe`) run from the AZ-a
workload through the AZ's leader to the lab's internet echo servers while:

* ``kill_leader``: the leader instance dies (``VpcLab.kill_instance``: every process
  SIGKILLed, links down) ~8 s in; the standby takes the lease, the NAT address, the
  Elastic IP and the route, and conntrackd's synced state keeps the flows;
* ``kill_leader_no_sync``: the same with ``ha.conntrack_sync.enabled`` false -- what NAT
  instances without state sync (fck-nat, alterNAT) give; the baseline of the run;
* ``kill_agent_only``: the leader's agent alone is SIGKILLed and restarted 3 s later,
  after its lease ran out; the data plane keeps forwarding, the standby leaves the
  expired lease to the holder whose instance still answers (``restart_grace_s``), and
  the restarted agent resumes it (``Lease.resume``), so no takeover is expected;
* ``steady``: no fault for ``--steady-seconds`` (10 minutes; 1 with ``--quick``): no
  takeover (no flapping).

Every scenario starts clean (fleet stopped, store removed, document published, agents
started and converged, the AZ's private route on the leader's inside ENI in the mirror).
Figures per scenario: the longest UDP gap (first lost to first delivered datagram), TCP
survival and resets, kill -> lease taken -> takeover reported, which instance took over,
takeovers counted as fencing-token increments of the lease items. Ratios against the
same run's baselines: the no-sync failover, the lease's bound (duration + skew margin,
:data:`perf.lab.vpc.fleet.LAB_LEASE`) and the steady run. Goals: gap <= 3 s, >= 99 % of the
connections survive with no reset, 0 takeovers in steady state and on an agent restart.

The suite holds the VPC lab exclusively and leaves it as found; the lab's figures and
goals are assembled by :mod:`perf.failoverfigures` (pure, unit-tested).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from control.agent import run_dir
from control.aws.lease import KEY as LEASE_KEY
from perf import report
from perf.failoverfigures import (
    KILLS,
    Fault,
    Settings,
    goals,
    results,
    sample,
    summary,
)
from perf.lab.host import LabError, ns_exec, pids_in_netns
from perf.lab.vpc import INET_SERVICE_IP, LEASE_TABLE, TOPOLOGY, VpcLab
from perf.lab.vpc.fleet import LAB_LEASE, STORE, Fleet, document, gateways
from perf.lab.vpc.seed import describe
from perf.lab.vpc.topology import RUN_DIR

AZ = "a"
WORKLOAD_NS = "cv-ws-a"
_PROJECT_ROOT = str(Path(__file__).resolve().parents[1])

Progress = Callable[[str], None]


@dataclass(slots=True)
class Lab:
    """The VPC lab, its agents and the clients one run uses."""

    vpc: VpcLab
    fleet: Fleet
    status: dict[str, Any]
    clients: dict[str, Any]


# -- the probe ---------------------------------------------------------------------------


class FlowProbe:
    """:mod:`perf.lab.flowprobe` in the AZ's workload namespace, for ``duration_s``."""

    def __init__(self, settings: Settings, connections: int, duration_s: float, tmp: Path):
        self.out, self.ready, self.duration_s = tmp / "probe.json", tmp / "ready", duration_s
        self.out.unlink(missing_ok=True)
        self.ready.unlink(missing_ok=True)
        argv = ns_exec(
            WORKLOAD_NS, sys.executable, "-m", "perf.lab.flowprobe",
            "--target", INET_SERVICE_IP, "--connections", str(connections),
            "--interval", str(settings.interval_s), "--udp-rate", str(settings.udp_rate),
            "--duration", str(duration_s), "--json", str(self.out), "--ready", str(self.ready),
        )  # fmt: skip
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": _PROJECT_ROOT}
        self.proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while not self.ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise LabError(f"the flow probe did not start in {WORKLOAD_NS}")
            time.sleep(0.05)
        self.started = time.monotonic()

    def until_end(self) -> float:
        return self.started + self.duration_s - time.monotonic()

    def result(self) -> dict[str, Any]:
        try:
            self.proc.wait(timeout=max(0.0, self.until_end()) + 60)
        finally:
            self.close()
        try:
            data: dict[str, Any] = json.loads(self.out.read_text())
        except (OSError, ValueError) as exc:
            code = self.proc.returncode
            raise LabError(f"the flow probe wrote no summary (exit {code})") from exc
        return data

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


# -- the lab -----------------------------------------------------------------------------


def lease_tokens(lab: Lab) -> dict[str, int]:
    """Each AZ's fencing token: it grows by one on every change of leadership (an agent
    that resumes its lease keeps it)."""
    tokens = {}
    for az in TOPOLOGY.azs:
        item = (
            lab.clients["dynamodb"]
            .get_item(TableName=LEASE_TABLE, Key={LEASE_KEY: {"S": az.zone}}, ConsistentRead=True)
            .get("Item")
        )
        tokens[az.name] = int(item["token"]["N"]) if item else 0
    return tokens


def _routed_to(lab: Lab, leader: str) -> bool:
    now = describe(lab.clients, lab.vpc.endpoint_url)
    enis = now["instances"][leader]["enis"]
    az = now["azs"][AZ]
    return bool(
        az["private_default_route_eni"] == enis["eth1"]["eni_id"]
        and az["nat_ip_eni"] == enis["eth0"]["eni_id"]
    )


def clean_start(lab: Lab, *, sync: bool, forward_probes: bool = False) -> str:
    """Fleet stopped, store removed, the document published (``forward_probes``: the
    leaders probe through their forwarding path, ``aws.health.forward_probes`` on the
    lab's internet service), agents started and converged, the AZ's route on its leader
    in the namespaces; the leader's name."""
    lab.fleet.stop()
    for name in gateways():
        (run_dir(lab.fleet.netns(name)) / "status.json").unlink(missing_ok=True)
    for path in (STORE, *(STORE.with_name(STORE.name + s) for s in ("-wal", "-shm"))):
        path.unlink(missing_ok=True)
    health = {"forward_probes": [f"{INET_SERVICE_IP}:80"]} if forward_probes else None
    lab.fleet.publish(document(lab.status, sync=sync, health=health), who="perf.failover")
    lab.fleet.start()
    lab.fleet.wait_converged()
    leader = lab.fleet.leader(AZ)
    deadline = time.monotonic() + 30
    while leader is None or not _routed_to(lab, leader):
        if time.monotonic() > deadline:
            raise LabError(f"AZ {AZ}'s NAT address and route did not reach its leader {leader}")
        time.sleep(0.2)
        leader = lab.fleet.leader(AZ)
    lab.vpc.sync()
    return leader


def conntrackd_running(az: str) -> list[str]:
    """The gateways of ``az`` where a conntrackd runs (none may in the no-sync baseline)."""
    found = []
    for g in TOPOLOGY.gateways:
        for pid in pids_in_netns(g.netns) if g.az == az else ():
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/comm").read_text().strip() == "conntrackd":
                    found.append(g.name)
    return found


# -- faults ------------------------------------------------------------------------------


def _kill_instance(lab: Lab, name: str, settings: Settings) -> None:
    lab.vpc.kill_instance(name)


def _kill_agent(lab: Lab, name: str, settings: Settings) -> None:
    lab.fleet.kill_agent(name)
    time.sleep(settings.agent_down_s)
    lab.fleet.start([name])


FAULTS: dict[str, Callable[[Lab, str, Settings], None]] = {
    "instance": _kill_instance,
    "agent": _kill_agent,
}


def lease_events(lab: Lab, since: float) -> list[dict[str, Any]]:
    """Every lease event the agents report after ``since`` (wall clock), oldest first,
    ``at`` relative to ``since``: the evidence behind a takeover count."""
    found = []
    for name in gateways():
        for e in lab.fleet.state(name).get("aws", {}).get("lease", {}).get("events", []):
            if e["at"] > since:
                at = round(e["at"] - since, 3)
                found.append({"instance": name, "kind": e["kind"], "token": e["token"],
                              "at_s": at, "reason": e["reason"]})  # fmt: skip
    return sorted(found, key=lambda e: e["at_s"])


def _events_after(aws: dict[str, Any], kind: str, since: float) -> float | None:
    at = [e["at"] for e in aws.get("lease", {}).get("events", []) if e["kind"] == kind]
    later = [t for t in at if t > since]
    return min(later) - since if later else None


def observe(lab: Lab, leader: str, since: float, probe: FlowProbe) -> Fault:
    """Watch AZ ``a``'s agents until the probe ends: who took over and when, or when the
    restarted leader resumed (seconds after ``since``, the fault's wall-clock time)."""
    fault = Fault(killed=leader)
    while probe.until_end() > 0:
        for g in (g for g in TOPOLOGY.gateways if g.az == AZ):
            aws = lab.fleet.state(g.name).get("aws", {})
            if g.name == leader and fault.resumed_s is None:
                fault.resumed_s = _events_after(aws, "resumed", since)
            took = aws.get("takeover", {})
            if g.name != leader and fault.new_leader is None and took.get("at", 0) > since:
                fault.new_leader = g.name
                fault.lease_taken_s = _events_after(aws, "took_over", since)
                fault.takeover_done_s = took["at"] - since
                fault.takeover_steps_s = took.get("seconds")
                fault.takeover_ok = bool(took.get("ok"))
        time.sleep(0.05)
    return fault


# -- scenarios ---------------------------------------------------------------------------


def run_kill(lab: Lab, settings: Settings, scenario: str, run: int, tmp: Path) -> dict[str, Any]:
    """One run of a kill scenario (:data:`KILLS`), from a clean start."""
    spec = KILLS[scenario]
    leader = clean_start(lab, sync=spec.sync, forward_probes=settings.forward_probes)
    before = lease_tokens(lab)
    stray = [] if spec.sync else conntrackd_running(AZ)
    probe = FlowProbe(settings, settings.connections, settings.kill_at_s + settings.after_s, tmp)
    try:
        time.sleep(settings.kill_at_s)
        since = time.time()
        FAULTS[spec.fault](lab, leader, settings)
        fault = observe(lab, leader, since, probe)
        outcome = probe.result()
    finally:
        probe.close()
        if not lab.vpc.alive(leader):
            lab.vpc.revive_instance(leader)
            lab.fleet.start([leader])
    fault.takeovers = sum(lease_tokens(lab).values()) - sum(before.values())
    record = sample(scenario, run, outcome, fault, stray_conntrackd=stray)
    return record | {"lease_events": lease_events(lab, since)}


def run_steady(lab: Lab, settings: Settings, tmp: Path) -> dict[str, Any]:
    """No fault for ``settings.steady_s``: the takeovers (flapping) and the gap."""
    leader = clean_start(lab, sync=True, forward_probes=settings.forward_probes)
    before, since = lease_tokens(lab), time.time()
    probe = FlowProbe(settings, settings.steady_connections, settings.steady_s, tmp)
    try:
        outcome = probe.result()
    finally:
        probe.close()
    fault = Fault(killed=None, takeovers=sum(lease_tokens(lab).values()) - sum(before.values()))
    fault.new_leader = None if lab.fleet.leader(AZ) == leader else lab.fleet.leader(AZ)
    return sample("steady", 0, outcome, fault) | {"lease_events": lease_events(lab, since)}


def measure(lab: Lab, settings: Settings, progress: Progress) -> list[dict[str, Any]]:
    """Every kill scenario ``settings.runs`` times, round-robin, then the steady run."""
    samples = []
    with tempfile.TemporaryDirectory(prefix="spectra-failover-") as name:
        tmp = Path(name)
        for run in range(settings.runs):
            for scenario in KILLS:
                progress(f"run {run + 1}/{settings.runs}: {scenario}")
                samples.append(run_kill(lab, settings, scenario, run, tmp))
        progress(f"steady: {settings.steady_s:.0f} s without a fault")
        samples.append(run_steady(lab, settings, tmp))
    return samples


@contextlib.contextmanager
def lab_as_found(vpc: VpcLab, progress: Progress, logs: Path) -> Iterator[Lab]:
    """The lab up with every instance alive; afterwards the agents' logs copied to
    ``logs`` and the lab as it was: down if it was down, else the agents that ran before
    running again (the store keeps this run's document)."""
    fleet = Fleet(vpc)
    was_up = any(vpc.status()["namespaces"].values())
    agents = [n for n in gateways() if fleet.state(n) and vpc.alive(n) and _agent_runs(fleet, n)]
    progress("bringing the VPC lab up" if not was_up else "the VPC lab is up")
    status = vpc.up()
    for name in gateways():
        if not vpc.alive(name):
            vpc.revive_instance(name)
    try:
        yield Lab(vpc, fleet, status, vpc.clients())
    finally:
        fleet.stop()
        logs.mkdir(parents=True, exist_ok=True)
        for log in RUN_DIR.glob("agent-*.log"):
            shutil.copyfile(log, logs / log.name)
        if not was_up:
            vpc.down()
        elif agents:  # Fleet.start([]) would start them all
            fleet.start(agents)


def _agent_runs(fleet: Fleet, name: str) -> bool:
    pid = fleet.state(name).get("pid")
    return isinstance(pid, int) and Path(f"/proc/{pid}").exists()


# -- command line ------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m perf failover", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--json", type=Path, required=True, metavar="FILE", help="write results here")
    p.add_argument("--quick", action="store_true", help="1 run of each kill, 60 s steady")
    p.add_argument("--runs", type=int, help="runs of each kill scenario (default 3, quick 1)")
    p.add_argument("--steady-seconds", type=float, help="the steady run (default 600, quick 60)")
    p.add_argument("--forward-probes", action="store_true",
                   help="the leaders' health checks probe through the forwarding path")  # fmt: skip
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    settings = Settings.from_options(
        args.quick, args.runs, args.steady_seconds, forward_probes=args.forward_probes
    )
    started = time.monotonic()
    vpc = VpcLab()
    try:
        logs = args.json.with_suffix(".logs")
        with vpc.exclusive(), lab_as_found(vpc, report.progress, logs) as lab:
            samples = measure(lab, settings, report.progress)
    except LabError as exc:
        print(f"perf failover: {exc}", file=sys.stderr)
        return 1
    figures = results(samples, settings, LAB_LEASE)
    met = goals(samples, settings)
    report.publish(
        "failover",
        figures,
        args.json,
        started=started,
        summary=summary(met),
        quick=args.quick,
        settings=asdict(settings),
        lease=LAB_LEASE,
        goals=[asdict(g) for g in met],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
