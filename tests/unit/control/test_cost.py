"""``spectra cost``: worked examples computed by hand, exact break-even, bandwidth, bad input.

Every expected number below is worked out in the comment next to it from the shipped
table's prices (us-east-1 unless said otherwise) and 730 hours a month; the code under test
computes it from the table, so a wrong formula or a wrong table entry fails here.
"""

from __future__ import annotations

import json
import math
import tomllib
from decimal import Decimal as D
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from control.cli import main
from control.cost import (
    BreakEven,
    CostInputError,
    CostInputs,
    CostLine,
    OptionCost,
    break_even,
    estimate,
    internet_cap,
)
from control.cost_table import (
    PriceTable,
    PriceTableError,
    load_prices,
    merge,
    shipped_data,
    validate_table,
)

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def table() -> PriceTable:
    return load_prices()


def _opt(est: Any, key: str) -> OptionCost:
    return next(o for o in est.options if o.key == key)


def _be(est: Any, key: str) -> BreakEven:
    return next(p for p in est.break_even if p.option == key)


def _codes(est: Any) -> list[str]:
    return [w.code for w in est.warnings]


# --- the shipped table -------------------------------------------------------------


def test_shipped_table_is_dated_and_holds_the_given_prices(table: PriceTable) -> None:
    assert table.as_of == "2026-12-06"
    assert {"us-east-1", "us-west-2", "eu-west-1", "eu-central-1"} <= set(table.regions)
    use1 = table.regions["us-east-1"]
    # the brief's numbers, marked "given"
    assert (use1.nat_gateway.hour.usd, use1.nat_gateway.gb.usd) == (D("0.045"), D("0.045"))
    assert (use1.network_firewall.endpoint_hour.usd, use1.network_firewall.gb.usd) == (
        D("0.395"),
        D("0.065"),
    )
    assert {use1.nat_gateway.hour.basis, use1.network_firewall.gb.basis} == {"given"}
    assert use1.cross_az_gb_each_way.usd == D("0.01")
    for name, kind in table.instances.items():
        assert kind.baseline_gbps <= kind.burst_gbps, name
        assert kind.burstable == name.startswith("t"), name


def test_prices_ship_as_package_data() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "cost_prices.json" in pyproject["tool"]["setuptools"]["package-data"]["control"]
    assert (REPO / "control" / "cost_prices.json").is_file()


# --- worked examples -------------------------------------------------------------------


def test_worked_example_10000_gb_two_azs(table: PriceTable) -> None:
    est = estimate(CostInputs(gb_month=D(10000)), table)
    # NAT Gateway: 2 x 0.045 x 730 + 10,000 x 0.045 = 65.70 + 450 = 515.70
    assert _opt(est, "nat_gateway").monthly_usd == D("515.70")
    # Network Firewall: 2 x 0.395 x 730 + 10,000 x 0.065 = 576.70 + 650 = 1,226.70
    assert _opt(est, "network_firewall").monthly_usd == D("1226.70")
    # GWLB: endpoints 2 x 0.01 x 730 = 14.60, LB 0.0125 x 730 = 9.125,
    # data 10,000 x (0.0035 endpoint + 0.004 GLCU) = 75 -> 98.725
    assert _opt(est, "gwlb").monthly_usd == D("98.725")
    # appliance: 2 AZ x 2 c7gn.large = 4 x 730 x 0.1248 = 364.416, gp3 4 x 8 x 0.08 = 2.56
    appliance = _opt(est, "appliance")
    assert appliance.monthly_usd == D("366.976")
    assert appliance.usd_per_gb == 0


def test_worked_break_even_points(table: PriceTable) -> None:
    est = estimate(CostInputs(gb_month=D(10000)), table)
    # vs NAT Gateway: (366.976 - 65.70) / 0.045 = 301.276 / 0.045 = 301276/45 = 6,695.02 GB
    assert _be(est, "nat_gateway") == BreakEven("nat_gateway", "above", Fraction(301276, 45))
    # vs GWLB: (366.976 - 23.725) / 0.0075 = 343.251 / 0.0075 = 45,766.8 GB
    assert _be(est, "gwlb") == BreakEven("gwlb", "above", Fraction(228834, 5))
    # vs Network Firewall: 366.976 < 576.70 fixed and 0 < 0.065 per GB: cheaper at any traffic
    assert _be(est, "network_firewall") == BreakEven("network_firewall", "always")


def test_spot_with_marketplace_fee(table: PriceTable) -> None:
    inputs = CostInputs(gb_month=D(0), spot=True, marketplace_fee_hour=D("0.02"))
    est = estimate(inputs, table)
    # Spot: 0.1248 x (1 - 0.6) = 0.04992/h; 4 x 730 x 0.04992 = 145.7664
    # fee: 4 x 730 x 0.02 = 58.40; gp3 2.56 -> 206.7264
    assert _opt(est, "appliance").monthly_usd == D("206.7264")
    # vs NAT Gateway: (206.7264 - 65.70) / 0.045 = 141.0264 / 0.045 = 3,133.92 GB exactly
    assert _be(est, "nat_gateway").gb_month == Fraction("3133.92")
    assert "spot" in _codes(est)


def test_regional_factor_and_explicit_regional_price(table: PriceTable, tmp_path: Path) -> None:
    est = estimate(CostInputs(gb_month=D(1000), region="eu-west-1"), table)
    # c7gn.large 0.1248 x 1.11 = 0.138528; 4 x 730 x 0.138528 = 404.50176; gp3 4 x 8 x 0.088
    # = 2.816 -> 407.31776
    assert _opt(est, "appliance").monthly_usd == D("407.31776")
    # NAT Gateway eu-west-1: 2 x 730 x 0.048 + 1,000 x 0.048 = 70.08 + 48 = 118.08
    assert _opt(est, "nat_gateway").monthly_usd == D("118.08")
    override = tmp_path / "p.json"
    override.write_text(
        json.dumps({"regions": {"eu-west-1": {"on_demand_hour": {"c7gn.large": {"usd": 0.1404}}}}})
    )
    est = estimate(CostInputs(gb_month=D(1000), region="eu-west-1"), load_prices(override))
    compute = _opt(est, "appliance").lines[0]
    # the explicit price wins over the factor: 4 x 730 x 0.1404 = 409.968
    assert (compute.usd, compute.basis) == (D("409.968"), "override")


def test_cross_az_costs_every_option_the_same(table: PriceTable) -> None:
    base = estimate(CostInputs(gb_month=D(30000)), table)
    est = estimate(CostInputs(gb_month=D(30000), workload_azs=3), table)
    # 1 of 3 workload AZs has no gateway: 30,000 x 1/3 GB cross, charged out and in:
    # 20,000 GB-crossings x 0.01 = 200.00 added to every option
    for a, b in zip(base.options, est.options, strict=True):
        assert b.monthly_usd - a.monthly_usd == pytest.approx(D(200), abs=D("1e-20"))
    assert [p.gb_month for p in est.break_even] == [p.gb_month for p in base.break_even]


def test_never_cheaper_when_the_option_charges_nothing_per_gb(tmp_path: Path) -> None:
    override = tmp_path / "p.json"
    override.write_text(json.dumps({"regions": {"us-east-1": {"nat_gateway": {"gb": {"usd": 0}}}}}))
    est = estimate(CostInputs(gb_month=D(10**6)), load_prices(override))
    # NAT Gateway 65.70 fixed, 0 per GB; appliance 366.976 fixed: never cheaper
    assert _be(est, "nat_gateway") == BreakEven("nat_gateway", "never")


def _option(key: str, fixed: str, per_gb: str) -> OptionCost:
    return OptionCost(
        key,
        key,
        (
            CostLine("fixed", D(1), "month", D(fixed), "estimated"),
            CostLine("data", D(0), "GB", D(per_gb), "estimated", Fraction(1)),
        ),
    )


@pytest.mark.parametrize(
    ("appliance", "other", "expected"),
    [
        # 100 + 0.01 g = 10 + 0.04 g  ->  g = 90 / 0.03 = 3,000
        (("100", "0.01"), ("10", "0.04"), BreakEven("o", "above", Fraction(3000))),
        # 10 + 0.04 g = 100 + 0.01 g  ->  cheaper below 3,000
        (("10", "0.04"), ("100", "0.01"), BreakEven("o", "below", Fraction(3000))),
        # same slope: cheaper fixed part decides
        (("10", "0.02"), ("11", "0.02"), BreakEven("o", "always")),
        (("11", "0.02"), ("11", "0.02"), BreakEven("o", "never")),
        # 1/3 GB: 1 = 3 x (1/3) -- exact, not 0.333...
        (("1", "0"), ("0", "3"), BreakEven("o", "above", Fraction(1, 3))),
    ],
)
def test_break_even_solves_exactly(
    appliance: tuple[str, str], other: tuple[str, str], expected: BreakEven
) -> None:
    assert break_even(_option("a", *appliance), _option("o", *other)) == expected


_TABLE = load_prices()


@settings(max_examples=150, deadline=None)
@given(
    instance=st.sampled_from(sorted(_TABLE.instances)),
    region=st.sampled_from(sorted(_TABLE.regions)),
    azs=st.integers(1, 4),
    per_az=st.integers(1, 3),
    spot=st.booleans(),
    fee=st.decimals(min_value=0, max_value=2, places=3),
)
def test_break_even_agrees_with_the_priced_months(
    instance: str, region: str, azs: int, per_az: int, spot: bool, fee: D
) -> None:
    """Priced line by line at traffic either side of the point, the cheaper side flips."""

    def inputs(g: int) -> CostInputs:
        return CostInputs(
            gb_month=D(g),
            region=region,
            instance_type=instance,
            azs=azs,
            instances_per_az=per_az,
            spot=spot,
            marketplace_fee_hour=fee,
        )

    def month(g: int) -> dict[str, D]:
        return {o.key: o.monthly_usd for o in estimate(inputs(g), _TABLE).options}

    for point in estimate(inputs(0), _TABLE).break_even:
        key = point.option
        if point.kind == "above":
            assert point.gb_month is not None
            below, above = math.floor(point.gb_month) - 1, math.ceil(point.gb_month) + 1
            if below >= 0:
                assert month(below)["appliance"] >= month(below)[key]
            assert month(above)["appliance"] < month(above)[key]
        else:
            assert point.kind == "always"  # no option is flat per GB in the shipped table
            assert month(1)["appliance"] < month(1)[key]


# --- bandwidth -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("instance", "cap"),
    [("c7gn.4xlarge", D(5)), ("t4g.small", D(5)), ("c7gn.8xlarge", D(50)), ("c6gn.8xlarge", D(25))],
)
def test_internet_cap(table: PriceTable, instance: str, cap: D) -> None:
    # under 32 vCPU: 5 Gbit/s; 32 vCPU and up: half the instance bandwidth (100 -> 50, 50 -> 25)
    assert internet_cap(table.instances[instance]) == cap


def test_internet_cap_is_at_least_5_gbits_from_32_vcpus(table: PriceTable) -> None:
    slow = table.instances["c7gn.8xlarge"].model_copy(
        update={"baseline_gbps": D(8), "burst_gbps": D(8)}
    )
    # 32 vCPUs, 8 Gbit/s: half is 4, but the limit is "50 % or 5 Gbit/s, whichever is larger"
    assert internet_cap(slow) == 5


def test_average_gbps_and_fleet_capacity(table: PriceTable) -> None:
    est = estimate(CostInputs(gb_month=D(10000)), table)
    bw = est.bandwidth
    # 5,000 GB per AZ x 8e9 bit / (730 x 3600 s) = 4e13 / 2,628,000 = 0.0152207 Gbit/s
    assert bw.average_gbps == pytest.approx(D("0.0152207"), abs=D("1e-7"))
    assert bw.peak_gbps == bw.average_gbps * 3
    # c7gn.large: baseline 6.25, internet cap 5 -> 5 Gbit/s x 2,628,000 s / 8 = 1,642,500 GB/AZ
    assert bw.sustained_gbps == 5
    assert bw.capacity_gb_month == 2 * 1642500
    assert not {"over_capacity", "peak_over_cap", "peak_on_burst"} & set(_codes(est))


@pytest.mark.parametrize(
    ("instance", "gb_month", "code"),
    [
        # 6 Gbit/s average per AZ = 6e9 x 2,628,000 / 8e9 = 1,971,000 GB/AZ, x 2 AZ
        ("c7gn.xlarge", 3942000, "over_capacity"),
        # 2 Gbit/s average, x3 peak = 6 > 5 (the internet cap): 657,000 GB/AZ
        ("c7gn.xlarge", 1314000, "peak_over_cap"),
        # c7i.large baseline 0.781: 0.5 average, 1.5 peak, under its 5 burst: 164,250 GB/AZ
        ("c7i.large", 328500, "peak_on_burst"),
    ],
)
def test_bandwidth_warnings(table: PriceTable, instance: str, gb_month: int, code: str) -> None:
    est = estimate(CostInputs(gb_month=D(gb_month), instance_type=instance), table)
    bw_codes = {"over_capacity", "peak_over_cap", "peak_on_burst"} & set(_codes(est))
    assert bw_codes == {code}


def test_burstable_and_break_even_beyond_capacity(table: PriceTable) -> None:
    inputs = CostInputs(gb_month=D(1000), instance_type="t4g.small", marketplace_fee_hour=D("0.5"))
    est = estimate(inputs, table)
    # 4 x 730 x (0.0168 + 0.5) = 1,509.056 + gp3 2.56 = 1,511.616
    # vs GWLB (1,511.616 - 23.725) / 0.0075 = 198,385.47 GB > t4g.small capacity
    # 0.128 Gbit/s x 2,628,000 / 8 = 42,048 GB/AZ x 2 = 84,096; vs NAT: 1,445.916 / 0.045
    # = 32,131.47 GB, within it
    assert _be(est, "gwlb").gb_month == Fraction("1487.891") / Fraction("0.0075")
    beyond = [w.message for w in est.warnings if w.code == "break_even_beyond_capacity"]
    assert len(beyond) == 1
    assert "gwlb" in beyond[0]
    assert "burstable" in _codes(est)


def test_single_instance_per_az_has_no_standby(table: PriceTable) -> None:
    assert "no_standby" in _codes(estimate(CostInputs(gb_month=D(1), instances_per_az=1), table))
    assert "no_standby" not in _codes(estimate(CostInputs(gb_month=D(1)), table))


# --- bad input -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("inputs", "field", "accepted"),
    [
        (CostInputs(gb_month=D(-5)), "gb_month", ">= 0"),
        (CostInputs(gb_month=D(1), instance_type="c7gn.larg"), "instance_type", "c7gn.large"),
        (CostInputs(gb_month=D(1), region="us-east-9"), "region", "eu-central-1"),
        (CostInputs(gb_month=D(1), azs=0), "azs", ">= 1"),
        (CostInputs(gb_month=D(1), peak_factor=D("0.5")), "peak_factor", ">= 1"),
        (CostInputs(gb_month=D(1), workload_azs=1), "workload_azs", ">= azs"),
        (CostInputs(gb_month=D(1), marketplace_fee_hour=D(-1)), "marketplace_fee_hour", ">= 0"),
    ],
)
def test_bad_input_names_field_and_accepted(
    table: PriceTable, inputs: CostInputs, field: str, accepted: str
) -> None:
    with pytest.raises(CostInputError) as err:
        estimate(inputs, table)
    assert err.value.field == field
    assert accepted in err.value.accepted


def test_unknown_instance_lists_close_matches(table: PriceTable) -> None:
    with pytest.raises(CostInputError) as err:
        estimate(CostInputs(gb_month=D(1), instance_type="c7g.large"), table)
    close = err.value.accepted.split("did you mean ")[1].split("?")[0].split(", ")
    assert "c7gn.large" in close
    assert len(close) <= 5


# --- overrides -------------------------------------------------------------------------


def test_partial_override_merges(tmp_path: Path) -> None:
    override = tmp_path / "p.json"
    override.write_text(
        json.dumps(
            {
                "as_of": "2027-01-15",
                "regions": {"us-east-1": {"nat_gateway": {"hour": {"usd": 0.05}}}},
            }
        )
    )
    prices = load_prices(override)
    nat = prices.regions["us-east-1"].nat_gateway
    assert (nat.hour.usd, nat.hour.basis) == (D("0.05"), "override")
    assert (nat.gb.usd, nat.gb.basis) == (D("0.045"), "given")  # untouched sibling kept
    assert prices.instances == load_prices().instances
    est = estimate(CostInputs(gb_month=D(10000)), prices)
    # 2 x 0.05 x 730 + 10,000 x 0.045 = 73 + 450 = 523
    assert _opt(est, "nat_gateway").monthly_usd == D(523)
    assert est.as_of == "2027-01-15"


def test_override_adds_an_instance_type(tmp_path: Path) -> None:
    new = {
        "vcpu": 4,
        "baseline_gbps": 10,
        "burst_gbps": 10,
        "burstable": False,
        "on_demand_hour": {"usd": 0.2},
        "spot_discount": {"value": 0.5, "basis": "estimated"},
    }
    override = tmp_path / "p.json"
    override.write_text(json.dumps({"instances": {"x9.large": new}}))
    est = estimate(CostInputs(gb_month=D(0), instance_type="x9.large"), load_prices(override))
    # 4 x 730 x 0.2 = 584 + gp3 2.56
    assert _opt(est, "appliance").monthly_usd == D("586.56")


@pytest.mark.parametrize(
    ("patch", "path", "accepted"),
    [
        (
            {"regions": {"us-east-1": {"nat_gateway": {"hourly": {"usd": 1}}}}},
            'regions["us-east-1"].nat_gateway.hourly',
            "hour, gb",
        ),
        (
            {"regions": {"us-east-1": {"nat_gateway": {"gb": {"basis": "guess"}}}}},
            'regions["us-east-1"].nat_gateway.gb.basis',
            "'given', 'published', 'estimated' or 'override'",
        ),
        (
            {"instances": {"c7gn.large": {"spot_discount": {"value": 1.5}}}},
            'instances["c7gn.large"].spot_discount.value',
            "less than 1",
        ),
        ({"instances": {"x9.large": {"vcpu": 2}}}, 'instances["x9.large"].burst_gbps', "missing"),
        ({"as_of": "last week"}, "as_of", "pattern"),
    ],
)
def test_bad_override_names_the_field(
    tmp_path: Path, patch: dict[str, Any], path: str, accepted: str
) -> None:
    override = tmp_path / "p.json"
    override.write_text(json.dumps(patch))
    with pytest.raises(PriceTableError) as err:
        load_prices(override)
    by_path = {e["path"]: e["message"] for e in err.value.errors}
    assert path in by_path
    assert accepted in by_path[path]


def test_regional_price_for_an_unknown_type_is_refused() -> None:
    data = merge(
        shipped_data(), {"regions": {"us-west-2": {"on_demand_hour": {"zz.large": {"usd": 1}}}}}
    )
    with pytest.raises(PriceTableError, match=r"zz\.large"):
        validate_table(data, "test")


def test_the_documented_override_example_loads(tmp_path: Path) -> None:
    doc = (REPO / "docs" / "cost.md").read_text()
    example = doc.split("```json\n")[1].split("```")[0]
    override = tmp_path / "p.json"
    override.write_text(example)
    prices = load_prices(override)
    assert prices.as_of == "2027-01-15"
    assert prices.regions["us-east-1"].on_demand_hour["c7gn.large"].usd == D("0.11")
    est = estimate(CostInputs(gb_month=D(1), instance_type="c8gn.large"), prices)
    # c8gn.large from the example: 4 x 730 x 0.13 = 379.60 + gp3 2.56
    assert _opt(est, "appliance").monthly_usd == D("382.16")


def test_override_not_json(tmp_path: Path) -> None:
    override = tmp_path / "p.json"
    override.write_text("{nope")
    with pytest.raises(PriceTableError) as err:
        load_prices(override)
    assert err.value.errors[0]["path"] == "(file)"


# --- CLI -------------------------------------------------------------------------------


def _run(*argv: str) -> Any:
    return CliRunner().invoke(main, ["cost", *argv])


def test_cli_json(tmp_path: Path) -> None:
    result = _run("--gb-month", "10000", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["options"]["nat_gateway"]["monthly_usd"] == 515.70
    assert data["options"]["gwlb"]["monthly_usd"] == 98.73  # 98.725 to the cent, half up
    assert Fraction(data["break_even"]["nat_gateway"]["exact"]) == Fraction(301276, 45)
    assert data["break_even"]["nat_gateway"]["kind"] == "above"
    assert data["as_of"] == "2026-12-06"


def test_cli_options_reach_the_estimate() -> None:
    argv = ["--gb-month", "1000", "--region", "eu-central-1", "--instance-type", "t4g.small"]
    argv += ["--azs", "3", "--workload-azs", "4", "--instances-per-az", "1", "--spot"]
    argv += ["--marketplace-fee-hour", "0.1", "--peak-factor", "2", "--volume-gb", "10", "--json"]
    result = _run(*argv)
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["inputs"] == {
        "region": "eu-central-1",
        "instance_type": "t4g.small",
        "azs": 3,
        "workload_azs": 4,
        "instances_per_az": 1,
        "spot": True,
        "gb_month": 1000.0,
        "marketplace_fee_hour": 0.1,
        "peak_factor": 2.0,
        "volume_gb": 10,
    }
    # NAT Gateway eu-central-1: 3 x 730 x 0.052 + 1,000 x 0.052 = 113.88 + 52 = 165.88;
    # cross-AZ: 1,000 x 1/4 x 2 x 0.01 = 5.00 -> 170.88
    assert data["options"]["nat_gateway"]["monthly_usd"] == 170.88
    codes = {w["code"] for w in data["warnings"]}
    assert {"spot", "burstable", "no_standby"} <= codes


def test_cli_table_output() -> None:
    result = _run("--gb-month", "10000")
    assert result.exit_code == 0, result.output
    rows = {
        line.split("  ")[0]: line.split()[-1]
        for line in result.output.splitlines()
        if line and not line.startswith(" ")
    }
    assert rows["NAT Gateway"] == "515.70"
    assert rows["Network Firewall (+ NAT Gateway, waived 1:1)"] == "1,226.70"


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--gb-month", "-5"], "--gb-month"),
        (["--gb-month", "1", "--instance-type", "c7gn.larg"], "--instance-type"),
        (["--gb-month", "lots"], "--gb-month"),
    ],
)
def test_cli_bad_input_names_the_option(argv: list[str], named: str) -> None:
    result = _run(*argv)
    assert result.exit_code in (1, 2)
    assert named in result.output
    assert "Traceback" not in result.output


def test_cli_help_and_unknown_option() -> None:
    assert _run("--help").exit_code == 0
    result = _run("--gb-month", "1", "--bogus")
    assert result.exit_code == 2
    assert "Usage:" in result.output


def test_cli_bad_prices_file(tmp_path: Path) -> None:
    override = tmp_path / "p.json"
    override.write_text(json.dumps({"regions": {"us-east-1": {"nat_gatway": {}}}}))
    result = _run("--gb-month", "1", "--prices", str(override))
    assert result.exit_code == 1
    assert 'regions["us-east-1"].nat_gatway' in result.output
    assert "nat_gateway" in result.output  # the accepted fields are listed
