"""The ``spectra`` command line: run the appliance, drive the lab, report status."""

from __future__ import annotations

import contextlib
import faulthandler
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from ai.cli import ai_group
from control.cli_aws import aws_group
from control.cli_boot import firstboot
from control.cli_config import config
from control.cli_cost import cost

if TYPE_CHECKING:
    from aiohttp import web

    from ai.workers import Supervisor
    from control.aws import SectionSessions
    from control.aws.changeset import ChangeSetStager
    from control.config import ConfigDocument
    from control.servers import HttpServer
    from control.store import ConfigStore

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger("spectra.control")


def _needs_root(func: F) -> F:
    """Refuse early, with what is needed, instead of failing half-way with EPERM."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if os.geteuid() != 0:
            raise click.ClickException(
                "this command needs root (network namespaces, nftables, bpffs); run it with sudo"
            )
        return func(*args, **kwargs)

    wrapper.__name__ = func.__name__
    wrapper.__doc__ = func.__doc__
    return wrapper  # type: ignore[return-value]


def _setup_logging(verbose: bool) -> None:
    """Until the agent applies the document's ``logging`` section: text, or what the
    environment says (the AMI's unit sets ``SPECTRA_LOG_FORMAT=json``)."""
    from ai.logsetup import from_env

    from_env("debug" if verbose else "info", "text")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Cloud Spectra Gateway: egress, inspection and AI gateway appliance."""


@main.command()
@click.option("--netns", "netns_name", help="Run inside this network namespace (lab).")
@click.option("--instance", help="Instance name for state and pins [default: netns or 'default'].")
@click.option(
    "--store",
    "store_url",
    default="local",
    show_default=True,
    help="Config store: local[:PATH] (SQLite) or ssm:/PREFIX (SSM Parameter Store).",
)
@click.option(
    "--bootstrap",
    nargs=2,
    metavar="INSIDE OUTSIDE",
    help="When the store is empty, write a first document translating INSIDE -> OUTSIDE.",
)
@click.option(
    "--poll", "poll_seconds", type=click.FloatRange(min=0.05), help="Store poll interval."
)
@click.option("--flow-table-size", default=262144, show_default=True, type=click.IntRange(16))
@click.option(
    "--offloader",
    type=click.Choice(["events", "dump"]),
    default="events",
    show_default=True,
    help="XDP offloader: conntrack events (production), or a dump every tick (the "
    "reference the flows benchmark measures against).",
)
@click.option("--api/--no-api", "with_api", default=True, help="Serve the config API here.")
@click.option(
    "--api-tokens",
    type=click.Path(exists=True, dir_okay=False),
    help="JSON list of bootstrap tokens [{name, role, hash}] accepted besides api.tokens.",
)
@click.option(
    "--aws/--no-aws",
    "on_aws",
    default=False,
    help="On EC2: instance metadata, the AZ's leader lease and takeover (aws section).",
)
@click.option(
    "--imds-endpoint",
    default="http://169.254.169.254",
    show_default=True,
    help="Instance metadata service (IMDSv2).",
)
@click.option(
    "--az", "availability_zone", help="Availability Zone to act for [default: the instance's]."
)
@click.option("-v", "--verbose", is_flag=True)
@_needs_root
def run(
    netns_name: str | None,
    instance: str | None,
    store_url: str,
    bootstrap: tuple[str, str] | None,
    poll_seconds: float | None,
    flow_table_size: int,
    offloader: str,
    with_api: bool,
    api_tokens: str | None,
    on_aws: bool,
    imds_endpoint: str,
    availability_zone: str | None,
    verbose: bool,
) -> None:
    """Start the appliance agent and converge this instance until stopped."""
    from control.agent import Agent, AgentSettings, bootstrap_document
    from control.config import ConfigValidationError, parse_document
    from control.servers import ServerThread
    from control.store import StoreError, VersionConflict, open_store

    _setup_logging(verbose)
    # a crash in native code (bcc, libbpf, pyroute2's C parts) leaves every thread's
    # stack in the agent's log instead of a silent exit
    faulthandler.enable()
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # kill -USR1: stacks to the log
    if netns_name:
        from pyroute2 import netns

        # Only the network namespace changes: bpffs pins stay shared with the host.
        netns.setns(netns_name, flags=0)
    settings = AgentSettings(
        instance=instance or netns_name or "default",
        store_url=store_url,
        poll_seconds=poll_seconds,
        flow_table_size=flow_table_size,
        offloader="dump" if offloader == "dump" else "events",
        aws=on_aws,
        imds_endpoint=imds_endpoint,
        availability_zone=availability_zone,
        manage_logging=True,
        verbose=verbose,
    )
    try:
        store = open_store(store_url)
        if bootstrap and store.head() == 0:
            doc = parse_document(bootstrap_document(*bootstrap))
            with contextlib.suppress(VersionConflict):  # another instance bootstrapped it
                store.put(doc, 0, "spectra run --bootstrap")
        agent = Agent(settings, store)
        changesets = None
        if agent.aws is not None:  # POST /v1/aws/changesets stages with the core role
            from control.aws.changeset import stagers_from

            changesets = stagers_from(lambda: agent.aws.identity if agent.aws else None)
        servers = ServerThread(
            _servers(store_url, store, api_tokens, agent.wake, changesets, agent.aws_sessions)
            if with_api
            else []
        )
        servers.start()
        agent.state.section_errors.update(servers.failures)
        workers = _ai_workers(store, store_url, imds_endpoint) if with_api else None
    except (StoreError, ConfigValidationError, OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        agent.run()
    finally:
        if workers is not None:
            workers.stop()
        servers.stop()


def _servers(
    store_url: str,
    store: ConfigStore,
    tokens_file: str | None,
    on_write: Callable[[], None],
    changesets: Callable[[ConfigDocument], ChangeSetStager] | None = None,
    aws_sessions: SectionSessions | None = None,
) -> list[HttpServer]:
    """The config API on the document's api.host:port (defaults when the store is empty).
    With ``aws_sessions`` (the agent's factory, ``--aws``) the AI gateway's Bedrock
    provider signs with that factory's operational role, held and refreshed in the
    background (:func:`control.aws.bedrock_credentials`)."""
    from control.api import ApiSettings, create_app
    from control.config import ConfigValidationError
    from control.config.operations import Api, ApiToken
    from control.servers import HttpServer, SectionError
    from control.status import host_alerts, host_flow_files, host_status
    from control.store import StoreError, open_store

    try:
        doc = store.latest()[1] if store.head() else None
    except (StoreError, ConfigValidationError) as exc:  # the agent reports it; serve anyway
        log.error("cannot read the newest document for the API settings: %s", exc)
        doc = None
    api = doc.api if doc is not None else Api()
    extra: tuple[ApiToken, ...] = ()
    if tokens_file:
        extra = tuple(ApiToken.model_validate(t) for t in json.loads(Path(tokens_file).read_text()))

    def config_api() -> web.Application:
        settings = ApiSettings(
            extra_tokens=extra,
            max_body_bytes=api.max_body_bytes,
            on_write=on_write,
            changesets=changesets,
        )
        return create_app(
            open_store(store_url), host_status, settings, host_alerts, host_flow_files
        )

    servers = [HttpServer("config API", config_api, str(api.host), api.port)]
    if doc is not None and doc.ai.routes and doc.ai.listen_port and not _ai_in_workers(doc):
        from ai.keys import SecretMissing
        from ai.server import create_app as create_ai_app
        from control.aws import anchor_credentials, bedrock_credentials, operational_credentials

        ai, aws, metrics_on = doc.ai, doc.aws, doc.metrics.enabled
        held = None if aws_sessions is None else bedrock_credentials(aws_sessions, aws)
        anchors = None if aws_sessions is None else anchor_credentials(aws_sessions, aws)

        def ai_gateway() -> web.Application:
            # its own store handle; a changed ai section applies without a restart
            ai_store = open_store(store_url)
            # Bedrock signs with the operational role, never the instance role
            try:
                return create_ai_app(
                    ai,
                    source=lambda: ai_store.latest()[1].ai,
                    aws_credentials=held or operational_credentials(aws),
                    anchor_credentials=anchors or operational_credentials(aws, service="s3"),
                    serve_metrics=metrics_on,
                )
            except SecretMissing as exc:  # reported in the status; the agent runs on
                ai_store.close()
                raise SectionError("ai.key_secret", str(exc)) from None

        server = HttpServer("AI gateway", ai_gateway, ai.listen_host, ai.listen_port, "ai")
        servers.append(server)
    return servers


def _ai_in_workers(doc: ConfigDocument) -> bool:
    """The AI gateway runs as worker processes (shared state), not in the agent."""
    return bool(doc.ai.routes and doc.ai.listen_port and doc.ai.state.backend == "redis")


def _ai_workers(store: ConfigStore, store_url: str, imds_endpoint: str) -> Supervisor | None:
    """With ``ai.state.backend: redis`` the AI gateway's worker processes, one per core
    (:mod:`control.aiworker`), started and tended in the background; else None (the
    gateway is served in-process by :func:`_servers`)."""
    from ai.workers import Supervisor, worker_count
    from control.aiworker import command
    from control.config import ConfigValidationError
    from control.store import StoreError

    try:
        doc = store.latest()[1] if store.head() else None
    except (StoreError, ConfigValidationError) as exc:  # reported by the agent
        log.error("cannot read the newest document for the AI workers: %s", exc)
        return None
    if doc is None or not _ai_in_workers(doc):
        return None
    entry, argv = command(store_url, imds_endpoint)
    supervisor = Supervisor(argv, worker_count(doc.ai, None), entry)
    supervisor.start_background()
    return supervisor


@main.command()
@click.option("--instance", default=None, help="Instance name [default: every instance].")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status(instance: str | None, as_json: bool) -> None:
    """Report each instance's convergence state and data-plane mode."""
    from control.status import host_status, instance_status

    states: dict[str, Any] = (
        {instance: instance_status(instance)} if instance else host_status()["instances"]
    )
    if as_json:
        click.echo(json.dumps(states, indent=2))
        return
    if not states:
        click.echo("no instance has run on this host")
    for name, st in states.items():
        if st is None:
            click.echo(f"{name}: never ran")
            continue
        modes = ", ".join(f"{i} {m}" for i, m in st.get("xdp_modes", {}).items()) or "none"
        click.echo(
            f"{name}: agent {'running' if st['agent_running'] else 'stopped'}, "
            f"data plane {st['data_plane']} (XDP: {modes}), converged={st['converged']}, "
            f"sNAT {','.join(st['outside_addresses'])}"
            + (f", error: {st['last_error']}" if st.get("last_error") else "")
        )
        for field, why in sorted((st.get("section_errors") or {}).items()):
            click.echo(f"  not in effect: {field}: {why}")
        counters = st["xdp_counters"]
        if counters and "error" not in counters:
            off = st.get("offload", {})
            click.echo(
                f"  flows {counters['flows']}/{counters['flow_capacity']}, offloaded "
                f"{off.get('offloaded_total', 0)}, table full {off.get('table_full', 0)}"
            )
            for reason, c in counters["reasons"].items():
                if c["packets"]:
                    click.echo(f"  {reason:20} {c['packets']:>12} pkts {c['bytes']:>14} bytes")


@main.command()
@click.option("--instance", default=None, help="Instance name [default: every instance].")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 1000))
@click.option("--sid", default=None, type=int, help="Only this signature.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def alerts(instance: str | None, limit: int, sid: int | None, as_json: bool) -> None:
    """The inspection engine's newest alerts and drops (newest first), per instance."""
    from control.status import host_alerts

    data: dict[str, Any] = host_alerts(limit, sid)["instances"]
    if instance:
        data = {instance: data.get(instance, {"total": 0, "signatures": {}, "alerts": []})}
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    for name, st in data.items():
        click.echo(f"{name}: {st['total']} alerts and drops since the store began")
        for a in st["alerts"]:
            what = (a.get("http") or {}).get("hostname") or (a.get("tls") or {}).get("sni") or ""
            click.echo(
                f"  {a.get('timestamp')} {a.get('event_type')}/{a.get('action')} "
                f"sid {a.get('signature_id')} {a.get('src_ip')}:{a.get('src_port')} -> "
                f"{a.get('dest_ip')}:{a.get('dest_port')} {what} {a.get('signature') or ''}"
            )


main.add_command(config)
main.add_command(cost)
main.add_command(ai_group, name="ai")
main.add_command(aws_group, name="aws")
main.add_command(firstboot)


@main.group()
def lab() -> None:
    """The network-namespace labs: ``run`` starts the VPC simulator with the gateway
    fleet (``kill``/``revive`` its instances); ``up``/``down``/``status`` and
    ``run --plain`` drive the plain lab (two AZs, a gateway each, and an internet)."""


@lab.command("up")
@click.option("--json", "as_json", is_flag=True, help="Print the lab status as JSON.")
@_needs_root
def lab_up(as_json: bool) -> None:
    """Build the lab (idempotent)."""
    from perf.lab import Lab, LabError

    try:
        st = Lab().up()
    except LabError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(json.dumps(st, indent=2) if as_json else "lab is up")


@lab.command("down")
@_needs_root
def lab_down() -> None:
    """Remove every namespace, link, process and pin the lab created."""
    from perf.lab import Lab

    Lab().down()
    click.echo("lab is down")


@lab.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_needs_root
def lab_status(as_json: bool) -> None:
    """Namespaces, interfaces, addresses and service endpoints."""
    from perf.lab import Lab

    st = Lab().status()
    if as_json:
        click.echo(json.dumps(st, indent=2))
        return
    click.echo(f"lab {'up' if st['up'] else 'down'}")
    for ns, info in st["namespaces"].items():
        for ifname, i in info["interfaces"].items():
            click.echo(f"  {ns:9} {ifname:10} {' '.join(i['addresses'])}")
    for name, svc in st["services"].items():
        click.echo(f"  service {name:9} {svc['proto']} {svc['address']}:{svc['port']}")


@lab.command("run")
@click.option("--keep", is_flag=True, help="Leave the lab up on exit.")
@click.option(
    "--plain", is_flag=True, help="The plain two-AZ lab (one gateway per AZ, no AWS API)."
)
@_needs_root
def lab_run(keep: bool, plain: bool) -> None:
    """The VPC simulator with the gateway fleet (a1, a2 in AZ a; b1 in AZ b); Ctrl-C
    stops the appliance and removes the lab."""
    if not plain:
        from perf.lab.host import LabError
        from perf.lab.vpc.run import run as run_vpc

        try:
            run_vpc(click.echo, keep)
        except LabError as exc:
            raise click.ClickException(str(exc)) from exc
        return
    _plain_lab_run(keep)


@lab.command("kill")
@click.argument("instance")
@_needs_root
def lab_kill(instance: str) -> None:
    """Kill a gateway instance of the VPC lab (a1, a2, b1): watch its AZ fail over."""
    _vpc_instance("kill", instance)


@lab.command("revive")
@click.argument("instance")
@_needs_root
def lab_revive(instance: str) -> None:
    """Boot a killed gateway instance of the VPC lab again, with its agent."""
    _vpc_instance("revive", instance)


def _vpc_instance(action: str, instance: str) -> None:
    from perf.lab.host import LabError
    from perf.lab.vpc import run as vpc_run

    try:
        getattr(vpc_run, action)(instance)
    except LabError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{instance}: {action} done")


def _plain_lab_run(keep: bool) -> None:
    """Bring the plain lab up, run the appliance in every gateway, tear down on Ctrl-C."""
    from control.agent import read_state
    from control.api import token_entry
    from perf.lab import RUN_DIR, TOPOLOGY, Lab
    from perf.lab.host import StopOnce

    LAB_STORE = RUN_DIR / "config.db"
    for old in RUN_DIR.glob("config.db*"):  # a new lab starts from a new document
        old.unlink()
    token, entry = token_entry("lab-admin", "admin")
    tokens_file = RUN_DIR / "api-tokens.json"

    lab_ = Lab()
    lab_.up()
    tokens_file.write_text(json.dumps([entry]))
    tokens_file.chmod(0o600)
    agents: list[subprocess.Popen[bytes]] = []
    # the first signal interrupts whatever runs (also the convergence wait), one during
    # the clean-up is ignored; in pyroute2's forked namespace helpers (which inherit the
    # handler and get SIGTERM when done) it only ends the helper -- before, a helper
    # caught mid-work unwound this function's clean-up: it stopped the agents and
    # removed the lab under the running appliance
    stop = StopOnce()

    def spawn(gw: Any) -> subprocess.Popen[bytes]:
        logf = (RUN_DIR / f"agent-{gw.netns}.log").open("ab")
        argv = ["run", "--netns", gw.netns, "--store", f"local:{LAB_STORE}", "--bootstrap",
                gw.inside_if, gw.outside_if, "--api-tokens", str(tokens_file)]  # fmt: skip
        return subprocess.Popen([sys.executable, "-m", "control", *argv], stdout=logf,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip

    def revive() -> None:
        """An agent that exited is started again, as systemd does on the AMI
        (``Restart=always``): the pinned data plane forwards meanwhile."""
        for i, gw in enumerate(TOPOLOGY.gateways):
            if agents[i].poll() is not None:
                log.warning("agent of %s exited (status %s); starting it again",
                            gw.netns, agents[i].returncode)  # fmt: skip
                agents[i] = spawn(gw)

    try:
        agents.extend(spawn(gw) for gw in TOPOLOGY.gateways)
        _wait_converged([gw.netns for gw in TOPOLOGY.gateways], agents, revive)
        http = lab_.status()["services"]["http"]
        for gw in TOPOLOGY.gateways:
            seen = _first_answer(gw.workload_netns, f"http://{http['address']}/", revive)
            click.echo(
                f"AZ {gw.az}: gateway {gw.netns} (management {gw.mgmt_ip}), "
                f"workload {gw.workload_netns} {gw.workload_ip} -> internet sees {seen}"
            )
        states = {gw.netns: read_state(gw.netns) or {} for gw in TOPOLOGY.gateways}
        for gw in TOPOLOGY.gateways:
            st = states[gw.netns]
            modes = ", ".join(f"{i} {m}" for i, m in st.get("xdp_modes", {}).items())
            click.echo(
                f"  {gw.netns}: config version {st.get('applied_version')}, data plane "
                f"{st.get('data_plane')} ({modes or 'kernel only'}); "
                f"config API and dashboard http://{gw.mgmt_ip}:8080/"
            )
        click.echo(
            f"admin token (this run only): {token}\n"
            f"  export SPECTRA_API=http://{TOPOLOGY.gateways[0].mgmt_ip}:8080 "
            f"SPECTRA_TOKEN={token}; spectra config get\n"
            f"agent logs: {RUN_DIR}/agent-*.log; try: "
            f"ip netns exec cs-ws-a curl http://{http['address']}/\n"
            "Ctrl-C stops the appliance and removes the lab"
        )
        while True:
            revive()
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        stop.stopping = True
        stop_processes(agents, AGENT_STOP_S)
        if not keep:
            lab_.down()
            click.echo("appliance stopped, lab removed")


def _first_answer(netns: str, url: str, revive: Callable[[], None], within: float = 45.0) -> str:
    """What ``url`` answers from ``netns``, retried for ``within`` seconds: ready means
    traffic flows, not only that the agents reported converged (an agent that exits
    meanwhile is started again by ``revive``)."""
    from perf.lab.host import LabError, run_in

    deadline = time.monotonic() + within
    while True:
        try:
            return run_in(netns, "curl", "-sS", "-m", "3", url).stdout.strip()
        except LabError as exc:
            if time.monotonic() > deadline:
                raise
            log.warning("no answer from %s through the gateway yet (%s); retrying", url, exc)
            revive()
            time.sleep(1.0)


AGENT_STOP_S = 5.0  # an agent stops within 2 s of SIGTERM; past this it is killed


def stop_processes(procs: list[subprocess.Popen[bytes]], wait: float) -> None:
    """SIGTERM each process's group, SIGKILL what still runs after ``wait`` seconds,
    reap them all: never raises for a process that is slow or already gone."""
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + wait
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("pid %d did not stop within %.0f s of SIGTERM: killed", p.pid, wait)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def _wait_converged(
    instances: list[str], agents: list[subprocess.Popen[bytes]], revive: Callable[[], None]
) -> None:
    from control.agent import read_state

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        states = [read_state(i) for i in instances]
        if all(
            s and s["converged"] and s["pid"] == a.pid for s, a in zip(states, agents, strict=True)
        ):
            return
        revive()
        time.sleep(0.1)
    raise click.ClickException(
        f"agents did not converge within 60 s: {instances}; see /run/spectra-lab/agent-*.log"
    )


if __name__ == "__main__":
    main()
