"""``spectra aws``: AWS-side operations of a deployment, through the config API.

``spectra aws changeset`` asks the API to stage a CloudFormation change set of the
operational-role stack for the features the newest config document enables
(``POST /v1/aws/changesets``); the operator reviews and executes it.  The gateway never
edits IAM itself.

``spectra aws validate-stack`` checks parameter values against one of the fleet's
templates offline, as CloudFormation does at create time (:mod:`control.aws.stackcheck`),
so a bad value is named before a stack is half made; it needs no API.

``spectra aws resize`` changes an AZ's gateways to another instance type live
(:mod:`control.aws.resize`); it talks to AWS and to the gateways' status, not the API.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from control.cli_config import DEFAULT_API, Api, _ok
from control.cli_resize import resize


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


@aws_group.command("validate-stack")
@click.argument("template", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--param",
    "params",
    multiple=True,
    metavar="KEY=VALUE",
    help="a parameter value, as given to the stack (repeat for each)",
)
def validate_stack(template: Path, params: tuple[str, ...]) -> None:
    """Check TEMPLATE's parameters, rules, allowed values and patterns for these values."""
    given = _parameters(params)
    from control.aws.stackcheck import TemplateError, check, load_template

    try:
        problems = check(load_template(template.read_text()), given)
    except TemplateError as exc:
        raise click.ClickException(f"{template}: {exc}") from None
    if problems:
        for problem in problems:
            click.echo(f"{template}: {problem}", err=True)
        raise SystemExit(2)
    click.echo(f"{template}: parameters ok")


aws_group.add_command(resize)
