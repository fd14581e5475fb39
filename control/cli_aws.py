"""``spectra aws``: operations on the appliance's AWS deployment (run from anywhere with
the operational role; the gateways themselves run ``spectra run --aws``)."""

from __future__ import annotations

import click

from control.cli_resize import resize


@click.group("aws")
def aws_group() -> None:
    """Operate the gateways' AWS deployment."""


aws_group.add_command(resize)
