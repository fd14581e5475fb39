"""``spectra aws resize``: a live vertical resize of one AZ's gateways.

The steps, their limits and what an abort leaves are :mod:`control.aws.resize`'s. This
module reads the config document (the ``aws`` section: region, endpoint, operational
role, lease table, the zone's Elastic IP), builds the executor with the Auto Scaling
group as the replacer and the gateways' status (their config API, or the state files on
this host with ``--status local``), prints each step as it ends and, with ``--json``,
the whole report. Exit status 0 when every step passed, 1 when the resize stopped.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:  # imported when a command runs: `spectra run` starts fast
    from control.aws.gateway_status import GatewayStatus
    from control.aws.resize import Step


def _document(store_url: str) -> Any:
    from control.store import StoreError, open_store

    try:
        store = open_store(store_url)
        try:
            return store.latest()[1]
        finally:
            store.close()
    except StoreError as exc:
        raise click.ClickException(f"--store {store_url}: {exc}") from exc


def _api_status(sessions: Any, token: str | None, port: int) -> GatewayStatus:
    from control.aws.gateway_status import ApiStatus

    def address(instance_id: str) -> str | None:
        found = sessions.client("ec2").describe_instances(InstanceIds=[instance_id])
        for reservation in found["Reservations"]:
            for instance in reservation["Instances"]:
                return str(instance["PrivateIpAddress"])
        return None

    return ApiStatus(address, token, port=port)


def _print(step: Step) -> None:
    mark = {"ok": "ok", "skipped": "--", "failed": "FAILED"}[step.state]
    click.echo(f"[{mark:>6}] {step.name:<16} {step.seconds:6.1f}s  {step.detail}")


@click.command("resize")
@click.option("--az", required=True, help="The Availability Zone, e.g. us-east-1a.")
@click.option("--instance-type", required=True, help="The new EC2 instance type.")
@click.option(
    "--store",
    "store_url",
    default="local",
    show_default=True,
    help="Config store holding the document's aws section: local[:PATH] or ssm:/PREFIX.",
)
@click.option(
    "--status",
    "status_source",
    type=click.Choice(["api", "local"]),
    default="api",
    show_default=True,
    help="Read the gateways' state from their config API, or from the state files here.",
)
@click.option(
    "--api-port",
    type=click.IntRange(1, 65535),
    help="The gateways' config API port [default: the document's api.port].",
)
@click.option("--token", envvar="SPECTRA_TOKEN", help="API bearer token (or SPECTRA_TOKEN).")
@click.option(
    "--standby-timeout",
    default=600.0,
    show_default=True,
    type=click.FloatRange(min=1),
    help="Seconds for a replacement to become a synced standby.",
)
@click.option(
    "--handover-timeout",
    default=60.0,
    show_default=True,
    type=click.FloatRange(min=1),
    help="Seconds for the new standby to lead after the hand-over request.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON at the end.")
def resize(
    az: str,
    instance_type: str,
    store_url: str,
    status_source: str,
    api_port: int | None,
    token: str | None,
    standby_timeout: float,
    handover_timeout: float,
    as_json: bool,
) -> None:
    """Resize AZ's gateways to INSTANCE_TYPE: standbys first, a hand-over, then the
    leader; the Elastic IP stays and established connections survive."""
    from control.aws import build

    doc = _document(store_url)
    zone = doc.aws.zones.get(az)
    if zone is None:
        accepted = ", ".join(sorted(doc.aws.zones)) or "none: the document has no aws.zones"
        raise click.BadParameter(
            f"{az!r} is not in aws.zones (accepted: {accepted})", param_hint="--az"
        )
    try:
        sessions = build(doc.aws, None).sessions
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    from control.aws.gateway_status import LocalStatus
    from control.aws.resize import AsgReplacer, Resize, ResizeAborted, Settings

    settings = Settings(
        az,
        instance_type,
        doc.aws.lease.table,
        zone.elastic_ip_allocation_id,
        standby_timeout_s=standby_timeout,
        handover_timeout_s=handover_timeout,
    )
    port = api_port or doc.api.port
    status = LocalStatus() if status_source == "local" else _api_status(sessions, token, port)
    replacer = AsgReplacer(lambda: sessions.client("autoscaling"), timeout_s=standby_timeout)
    executor = Resize(sessions, replacer, status, settings, on_step=None if as_json else _print)
    try:
        report = executor.run()
    except ResizeAborted as exc:
        report = exc.report
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
    elif not report.ok:
        click.echo(f"resize stopped at {report.failed_step}: {report.error}", err=True)
        for inst in report.az_now:
            role = "leader" if inst["leader"] else "standby"
            click.echo(f"  {inst['instance_id']} {inst['type']} {role}", err=True)
    if not report.ok:
        raise SystemExit(1)
