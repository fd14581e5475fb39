"""``spectra aws``: commands about the AWS deployment (the CloudFormation templates).

``validate-stack`` checks parameter values against a template offline, as CloudFormation
does at create time (:mod:`control.aws.stackcheck`), so a bad value is named before a
stack is half made.  Other AWS commands join this group.
"""

from __future__ import annotations

from pathlib import Path

import click

from control.aws.stackcheck import TemplateError, check, load_template


@click.group(name="aws")
def aws_group() -> None:
    """The AWS deployment: CloudFormation templates and their parameters."""


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
    given: dict[str, str] = {}
    for item in params:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r}: expected KEY=VALUE", param_hint="--param")
        given[key] = value
    try:
        problems = check(load_template(template.read_text()), given)
    except TemplateError as exc:
        raise click.ClickException(f"{template}: {exc}") from None
    if problems:
        for problem in problems:
            click.echo(f"{template}: {problem}", err=True)
        raise SystemExit(2)
    click.echo(f"{template}: parameters ok")
