"""``spectra lab run`` (``make run``): the VPC lab and the appliance fleet in one command.

:func:`start` builds the VPC lab from nothing (:class:`~perf.lab.vpc.build.VpcLab`:
moto, the mirror, a metadata service per instance, the namespaces), publishes the
fleet's one document (:func:`~perf.lab.vpc.fleet.document`: a leader lease per AZ,
conntrack sync between a1 and a2) and starts ``spectra run --aws`` in the three gateway
instances with the config API and an admin token made for this run; it returns once
every AZ has a leader that moved its NAT address, Elastic IP and private route to
itself. :func:`report` says where everything answers; :func:`run` does both, waits for
Ctrl-C (SIGINT) or SIGTERM, then stops the agents and removes the lab.

A failover to watch: :func:`kill` (``spectra lab kill a1``) kills an instance the way
:meth:`VpcLab.kill_instance` does, :func:`revive` boots it again with its agent.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from control.api import token_entry
from perf.lab.host import LabError, StopOnce, run_in
from perf.lab.vpc.build import VpcLab
from perf.lab.vpc.fleet import STORE, Fleet, document
from perf.lab.vpc.topology import INET_SERVICE_IP, RUN_DIR, TOPOLOGY

TOKENS_FILE = RUN_DIR / "api-tokens.json"
API_PORT = 8080  # the document leaves api.port at its default
LOCK_WAIT_S = 10.0


def api_url(name: str) -> str:
    """Where gateway ``name``'s config API and dashboard answer from the host."""
    return f"http://{TOPOLOGY.instance(name).mgmt_ip}:{API_PORT}"


def start(lab: VpcLab) -> tuple[Fleet, str]:
    """A new lab and fleet (whatever an earlier run left is removed first); returns the
    fleet and this run's admin token."""
    lab.down()
    status = lab.up()
    token, entry = token_entry("lab-admin", "admin")
    TOKENS_FILE.write_text(json.dumps([entry]))
    TOKENS_FILE.chmod(0o600)
    STORE.unlink(missing_ok=True)
    fleet = Fleet(lab, api_tokens=TOKENS_FILE)
    fleet.publish(document(status), who="spectra lab run")
    fleet.start()
    fleet.wait_converged()
    lab.sync()
    return fleet, token


def internet_sees(workload_netns: str) -> str:
    """The source address the internet's HTTP server reports for a request from
    ``workload_netns`` (the AZ's Elastic IP while its gateway translates)."""
    out = run_in(workload_netns, "curl", "-s", "-m", "5", f"http://{INET_SERVICE_IP}/", check=False)
    try:
        return str(json.loads(out.stdout)["client_ip"])
    except (ValueError, KeyError, TypeError):
        return f"no answer (curl exit {out.returncode})"


def report(status: dict[str, Any], fleet: Fleet, token: str) -> list[str]:
    """Where each gateway answers, each AZ's leader, Elastic IP and what the internet
    sees from its workload, the admin token, and how to watch a failover."""
    lines = [f"VPC lab up; AWS API (moto) {status['endpoint_url']}, region {status['region']}"]
    leaders: dict[str, str | None] = {}
    for az in TOPOLOGY.azs:
        info = status["azs"][az.name]
        leaders[az.name] = fleet.leader(az.name)
        workload = TOPOLOGY.instance(f"ws-{az.name}")
        lines.append(
            f"AZ {az.name} ({az.zone}): leader {leaders[az.name]}, Elastic IP {info['eip']} "
            f"on NAT address {info['nat_ip']}; workload {workload.netns} "
            f"{workload.nics[0].ip} -> internet sees {internet_sees(workload.netns)}"
        )
        for gw in (g for g in TOPOLOGY.gateways if g.az == az.name):
            st = fleet.state(gw.name)
            modes = ", ".join(f"{i} {m}" for i, m in st.get("xdp_modes", {}).items())
            sync = st.get("conntrack_sync", {})
            lines.append(
                f"  {gw.name} {status['instances'][gw.name]['instance_id']} "
                f"({gw.netns}): {fleet.role(gw.name)}, data plane {st.get('data_plane')} "
                f"({modes or 'kernel only'}), conntrack sync "
                f"{'to ' + str(sync.get('peer')) if sync.get('running') else 'off'}; "
                f"config API and dashboard {api_url(gw.name)}/"
            )
    victim = leaders["a"] or "a1"
    first = TOPOLOGY.gateways[0].name
    lines += [
        f"admin token (this run only): {token}",
        f"  export SPECTRA_API={api_url(first)} SPECTRA_TOKEN={token}; spectra config get",
        f"try: sudo ip netns exec cv-ws-a curl http://{INET_SERVICE_IP}/",
        f"watch a failover: sudo .venv/bin/spectra lab kill {victim}   "
        f"(the standby takes over AZ a within seconds, same Elastic IP; "
        f"then: spectra lab revive {victim})",
        f"logs: {RUN_DIR}/*.log",
        "Ctrl-C stops the appliance and removes the lab",
    ]
    return lines


def run(echo: Callable[[str], None], keep: bool = False) -> None:
    """Start, report, wait for SIGINT/SIGTERM, stop and remove everything (unless
    ``keep``). Holds the VPC lab's lock throughout: a test cannot take it away."""
    lab = VpcLab()
    stop = StopOnce()
    with lab.exclusive(timeout=LOCK_WAIT_S):
        fleet = Fleet(lab, api_tokens=TOKENS_FILE)
        try:
            fleet, token = start(lab)
            for line in report(lab.status(), fleet, token):
                echo(line)
            while True:
                time.sleep(1.0)
        except KeyboardInterrupt:
            pass
        finally:
            stop.stopping = True
            if not keep:
                fleet.stop()
                lab.down()
                echo("appliance stopped, lab removed")


def _gateway(lab: VpcLab, name: str) -> None:
    if name not in {g.name for g in TOPOLOGY.gateways}:
        raise LabError(f"instance {name!r}: expected one of {[g.name for g in TOPOLOGY.gateways]}")
    if not lab.status()["processes"]["motod"]["pid"]:
        raise LabError("the VPC lab is not up; start it with `spectra lab run`")


def kill(name: str) -> None:
    """Gateway instance ``name`` dies (every process SIGKILLed, links down)."""
    lab = VpcLab()
    _gateway(lab, name)
    lab.kill_instance(name)


def revive(name: str) -> None:
    """Gateway instance ``name`` boots again and starts its agent."""
    lab = VpcLab()
    _gateway(lab, name)
    lab.revive_instance(name)
    Fleet(lab, api_tokens=TOKENS_FILE if TOKENS_FILE.exists() else None).start([name])
