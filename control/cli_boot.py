"""``spectra firstboot``: the appliance image's boot-time setup (:mod:`control.firstboot`)."""

from __future__ import annotations

import json
from dataclasses import asdict

import click


@click.command("firstboot")
@click.option(
    "--imds-endpoint",
    default="http://169.254.169.254",
    show_default=True,
    help="Instance metadata service (IMDSv2).",
)
@click.option("--json", "as_json", is_flag=True, help="Print what was done as JSON.")
def firstboot(imds_endpoint: str, as_json: bool) -> None:
    """Read user data, write the agent's settings and, on an empty store, the first
    document (one-arm NAT on the primary interface) and the admin token (console, SSM)."""
    from ai.logsetup import from_env
    from control.aws.imds import Imds
    from control.config import ConfigValidationError
    from control.firstboot import FirstBoot, FirstBootError
    from control.store import StoreError
    from control.userdata import UserDataError

    from_env("info", "text")  # the unit sets SPECTRA_LOG_FORMAT=json (no document yet)
    try:
        report = FirstBoot(Imds(imds_endpoint, attempts=5, backoff_s=0.5)).run()
    except (FirstBootError, UserDataError, StoreError, ConfigValidationError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(asdict(report), indent=2))
        return
    written = (
        f"first document v{report.document_written} ({report.note})"
        if report.document_written
        else "store already has a document"
    )
    click.echo(
        f"{report.mode} on {report.interface} in {report.availability_zone}, "
        f"store {report.store}: {written}"
    )
