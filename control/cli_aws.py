"""``spectra aws``: AWS-side operations of a deployment, through the config API.

``spectra aws changeset`` asks the API to stage a CloudFormation change set of the
operational-role stack for the features the newest config document enables
(``POST /v1/aws/changesets``); the operator reviews and executes it.  The gateway never
edits IAM itself.
"""

from __future__ import annotations

import json

import click

from control.cli_config import DEFAULT_API, Api, _ok


@click.group("aws")
@click.option("--api", envvar="SPECTRA_API", default=DEFAULT_API, show_default=True)
@click.option("--token", envvar="SPECTRA_TOKEN", help="Bearer token (or SPECTRA_TOKEN).")
@click.pass_context
def aws_group(ctx: click.Context, api: str, token: str | None) -> None:
    """AWS operations of the deployment (through the config API)."""
    ctx.obj = Api(api, token)


def _parameters(pairs: tuple[str, ...]) -> dict[str, str]:
    found = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r}: expected KEY=VALUE", param_hint="--param")
        found[key] = value
    return found


@aws_group.command("changeset")
@click.option(
    "--stack-name", help="The operational stack [default: <deployment>-operational-roles]."
)
@click.option(
    "--param",
    "params",
    multiple=True,
    metavar="KEY=VALUE",
    help="InstanceRoleArn, HandlerRoleArn, VpcId or ConfigParameterPrefix "
    "(default: the deployed stack's values).",
)
@click.pass_obj
def changeset(api: Api, stack_name: str | None, params: tuple[str, ...]) -> None:
    """Stage a change set of the operational-role stack for the document's features."""
    body: dict[str, object] = {"parameters": _parameters(params)}
    if stack_name:
        body["stack_name"] = stack_name
    staged = _ok(*api.call("POST", "/v1/aws/changesets", body)[:2])
    click.echo(json.dumps(staged, indent=2))
    click.echo(f"review it, then: {staged['change_set']['execute']}", err=True)
