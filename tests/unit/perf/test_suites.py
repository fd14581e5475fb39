"""perf.suites: the registry behind ``python -m perf`` and the settings each suite takes
from the command line (an explicit ``--rate`` is honoured whatever its value)."""

from __future__ import annotations

from types import ModuleType

import pytest

from perf import dataplane, geneve, nfq
from perf.__main__ import parser
from perf.suites import SUITES, settings_for

pytestmark = pytest.mark.unit


def test_every_registered_suite_has_the_suite_interface() -> None:
    assert list(SUITES) == ["dataplane", "nfq", "geneve", "ai"]  # the order of "all"
    for name, spec in SUITES.items():
        assert callable(spec.load().run), name


@pytest.mark.parametrize("module", [dataplane, nfq, geneve])
def test_an_explicit_rate_is_honoured_even_at_the_dataplane_default(module: ModuleType) -> None:
    settings_type = module.Settings
    for argv in (["--rate", "200000"], ["--rate", "200000", "--quick"]):
        args = parser().parse_args(["dataplane", "--json", "x", *argv])
        assert settings_for(args, settings_type(), settings_type.quick()).rate_pps == 200_000


def test_without_options_each_suite_keeps_its_own_defaults() -> None:
    args = parser().parse_args(["nfq", "--json", "x"])
    assert settings_for(args, nfq.Settings(), nfq.Settings.quick()) == nfq.Settings(300_000, 4.0, 3)
    assert settings_for(args, geneve.Settings(), geneve.Settings.quick()).rate_pps == 20_000
    assert settings_for(args, dataplane.Settings(), dataplane.Settings.quick()).rate_pps == 200_000


def test_quick_then_runs_and_seconds_from_the_command_line() -> None:
    args = parser().parse_args(["nfq", "--json", "x", "--quick", "--runs", "2"])
    assert settings_for(args, nfq.Settings(), nfq.Settings.quick()) == nfq.Settings(300_000, 2.0, 2)
    args = parser().parse_args(["geneve", "--json", "x", "--seconds", "1.5"])
    chosen = settings_for(args, geneve.Settings(), geneve.Settings.quick())
    assert (chosen.seconds, chosen.runs, chosen.testrun) == (1.5, 5, (7, 2000))


def test_dataplane_phases_are_checked_before_anything_runs() -> None:
    from perf.target import PerfError, lab_target

    args = parser().parse_args(["dataplane", "--json", "x", "--phases", "rate,dnta"])
    with pytest.raises(
        PerfError, match=r"--phases: unknown \['dnta'\]; expected some of rate,dnat"
    ):
        dataplane.run(args, lab_target(), lambda _: None)
