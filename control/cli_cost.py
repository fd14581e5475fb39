"""``spectra cost``: what the appliance costs a month against the AWS managed options.

A thin shell over :mod:`control.cost`: parses options into :class:`~control.cost.CostInputs`,
loads the shipped price table (or merges ``--prices FILE`` over it) and prints either a
table for people or ``--json`` for scripts. docs/cost.md explains the model.
"""

from __future__ import annotations

import json
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from control.cost import Estimate


class DecimalParam(click.ParamType[Decimal, Any]):
    """A decimal number kept exact (no float rounding of prices and volumes)."""

    name = "number"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> Decimal:
        if isinstance(value, Decimal):
            return value
        try:
            number = Decimal(str(value))
        except InvalidOperation:
            self.fail(f"{value!r} is not a number", param, ctx)
        if not number.is_finite():
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


DECIMAL = DecimalParam()


@click.command()
@click.option(
    "--gb-month",
    required=True,
    type=DECIMAL,
    help="Traffic through the gateways, GB/month (both directions).",
)
@click.option("--region", default="us-east-1", show_default=True)
@click.option("--instance-type", default="c7gn.large", show_default=True)
@click.option("--azs", default=2, show_default=True, type=int, help="AZs with a gateway.")
@click.option(
    "--workload-azs", type=int, help="AZs with workloads [default: --azs]; the rest cross AZs."
)
@click.option(
    "--instances-per-az",
    default=2,
    show_default=True,
    type=int,
    help="Leader + standbys, all billed.",
)
@click.option("--spot/--on-demand", default=False, show_default=True)
@click.option(
    "--marketplace-fee-hour",
    default="0",
    show_default=True,
    type=DECIMAL,
    help="Marketplace software fee, $ per instance-hour.",
)
@click.option(
    "--peak-factor", default="3", show_default=True, type=DECIMAL, help="Peak over average traffic."
)
@click.option(
    "--volume-gb", default=8, show_default=True, type=int, help="gp3 root volume per instance."
)
@click.option(
    "--prices",
    "prices_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="JSON merged over the shipped price table.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def cost(prices_file: Path | None, as_json: bool, **options: Any) -> None:
    """Monthly cost of the appliance against NAT Gateway, Network Firewall and GWLB."""
    # imported here: every other spectra command starts without pydantic
    from control.cost import CostInputError, CostInputs, as_dict, estimate
    from control.cost_table import PriceTableError, load_prices

    try:
        table = load_prices(prices_file)
        est = estimate(CostInputs(**options), table)
    except PriceTableError as exc:
        raise click.ClickException(str(exc)) from exc
    except CostInputError as exc:
        option = "--" + exc.field.replace("_", "-")
        raise click.ClickException(
            f"{option}: {exc.value!r} is not accepted; {exc.accepted}"
        ) from exc
    if as_json:
        click.echo(json.dumps(as_dict(est), indent=2))
    else:
        click.echo(render(est))


def _gb(value: float) -> str:
    return f"{value:,.0f} GB/month" if value >= 100 else f"{value:,.2f} GB/month"


def render(est: Estimate) -> str:
    """The estimate as a table for a terminal."""
    from control.cost import as_dict

    data: dict[str, Any] = as_dict(est)
    i = data["inputs"]
    out = [
        f"Monthly cost in {i['region']} for {_gb(i['gb_month'])} over {i['azs']} AZ(s), "
        f"{data['hours_per_month']} h/month; prices as of {data['as_of']}",
        "",
        f"{'option':64} {'fixed $':>10} {'$/GB':>8} {'total $':>10}",
    ]
    for key, opt in data["options"].items():
        out.append(
            f"{opt['label']:64} {opt['fixed_usd']:>10,.2f} {opt['usd_per_gb']:>8.4f} "
            f"{opt['monthly_usd']:>10,.2f}"
        )
        for line in opt["lines"]:
            out.append(
                f"    {line['item']:44} {line['quantity']:>11,.2f} {line['unit']:13} "
                f"x {line['unit_usd']:<8g} = {line['usd']:>9,.2f}  ({line['basis']})"
            )
        if key in data["break_even"]:
            out.append(f"    appliance cheaper: {_break_even(data['break_even'][key])}")
    bw = data["bandwidth"]
    out += [
        "",
        f"Bandwidth per AZ (the leader carries it): average {bw['average_gbps_per_az']:.3f} "
        f"Gbit/s, peak {bw['peak_gbps_per_az']:.3f} Gbit/s (x{i['peak_factor']:g})",
        f"  {i['instance_type']} to the internet: {bw['sustained_gbps']:g} Gbit/s sustained, "
        f"{bw['burst_gbps']:g} burst (internet cap {bw['internet_cap_gbps']:g}); "
        f"the fleet sustains {_gb(bw['capacity_gb_month'])}",
    ]
    if data["warnings"]:
        out += ["", "Warnings:"]
        out += [f"  - {w['message']}" for w in data["warnings"]]
    return "\n".join(out)


def _break_even(point: dict[str, Any]) -> str:
    kind = point["kind"]
    if kind == "above":
        return f"above {_gb(point['gb_month'])}"
    if kind == "below":
        return f"below {_gb(point['gb_month'])}"
    return "at any traffic" if kind == "always" else "never"
