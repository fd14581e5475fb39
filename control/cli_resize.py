"""``spectra aws resize``: a live vertical resize of one AZ's gateways.

The steps, their limits and what an abort leaves are :mod:`control.aws.resize`'s. This
module reads the config document (the ``aws`` section: region, endpoint, operational
role, lease table, the zone's Elastic IP), builds the executor with the Auto Scaling
group as the replacer and the gateways' status (their config API, or the state files on
this host with ``--status local``), prints each step as it ends and, with ``--json``,
the whole report. Exit status 0 when every step passed, 1 when the resize stopped.

With ``tls.appliance`` on (and ``tls.enabled``), the config API's plain port answers on
loopback only, so the status is read over HTTPS on ``tls.appliance.port``. The
certificate is always verified: against ``--ca-bundle``, else the document's
``tls.appliance.certificate_file`` when that file is readable here (the appliance's own
certificate is then the trust anchor), else the system trust store; the name checked is
``--tls-server-name``, else the instance's private address.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:  # imported when a command runs: `spectra run` starts fast
    from control.aws.gateway_status import GatewayStatus, HttpsTrust
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


def private_address(sessions: Any, instance_id: str) -> str | None:
    """Where an instance's config API answers: its private address (``DescribeInstances``)."""
    found = sessions.client("ec2").describe_instances(InstanceIds=[instance_id])
    for reservation in found["Reservations"]:
        for instance in reservation["Instances"]:
            return str(instance["PrivateIpAddress"])
    return None


def https_trust(doc: Any, ca_bundle: str | None, server_name: str | None) -> HttpsTrust | None:
    """How the gateways' HTTPS status is verified, or ``None`` without ``tls.appliance``
    (then ``--ca-bundle`` and ``--tls-server-name`` are refused: they would do nothing)."""
    from control.aws.gateway_status import https_trust as trust

    appliance = doc.tls.appliance if doc.tls.enabled else None
    if appliance is None:
        given = "--ca-bundle" if ca_bundle else "--tls-server-name" if server_name else None
        if given:
            raise click.BadParameter(
                "the document has no tls.appliance (with tls.enabled): the gateways' "
                "status is plain HTTP, there is no certificate to verify",
                param_hint=given,
            )
        return None
    if ca_bundle:
        cafile, source, hint = ca_bundle, f"--ca-bundle {ca_bundle}", "--ca-bundle"
    elif appliance.certificate_file and Path(appliance.certificate_file).is_file():
        cafile = appliance.certificate_file
        source = f"tls.appliance.certificate_file {cafile}"
        hint = "tls.appliance.certificate_file"
    else:
        cafile, source, hint = None, "the system trust store", "--ca-bundle"
    try:
        return trust(cafile, source, server_name)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=hint) from exc


def _api_status(
    sessions: Any, token: str | None, port: int, https: HttpsTrust | None
) -> GatewayStatus:
    from control.aws.gateway_status import ApiStatus

    return ApiStatus(lambda i: private_address(sessions, i), token, port=port, https=https)


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
    help="The gateways' config API port [default: tls.appliance.port with tls.appliance, "
    "else api.port].",
)
@click.option(
    "--ca-bundle",
    type=click.Path(exists=True, dir_okay=False),
    help="PEM CA bundle verifying the gateways' HTTPS certificate (tls.appliance) "
    "[default: tls.appliance.certificate_file when readable here, else the system store].",
)
@click.option(
    "--tls-server-name",
    help="The name the gateways' HTTPS certificate must hold [default: each instance's "
    "private address].",
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
    ca_bundle: str | None,
    tls_server_name: str | None,
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
    if status_source == "local" and (ca_bundle or tls_server_name):
        raise click.BadParameter(
            "applies to --status api (the state files here are read without TLS)",
            param_hint="--ca-bundle" if ca_bundle else "--tls-server-name",
        )
    https = None if status_source == "local" else https_trust(doc, ca_bundle, tls_server_name)
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
    if status_source == "local":
        status: GatewayStatus = LocalStatus()
    else:
        port = api_port or (doc.tls.appliance.port if https else doc.api.port)
        status = _api_status(sessions, token, port, https)
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
