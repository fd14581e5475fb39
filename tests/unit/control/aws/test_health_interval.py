"""``aws.health.interval_s``: the data-path check (links, forwarding, ruleset, probe) runs
at most once per interval; the lease sampling it in between gets the last result."""

from __future__ import annotations

import time
from pathlib import Path

from control.aws.health import DataPathHealth


def test_the_check_runs_once_per_interval(tmp_path: Path) -> None:
    forwarding = tmp_path / "ip_forward"
    forwarding.write_text("1\n")
    links: list[str] = []

    def link_up(ifname: str) -> bool:
        links.append(ifname)
        return True

    health = DataPathHealth(
        "in", "out", interval_s=0.3, link_up=link_up, table_loaded=lambda: True,
        forwarding=forwarding,
    )  # fmt: skip
    assert health() and links == ["in", "out"]
    forwarding.write_text("0\n")
    assert health()  # within the interval: the last result, nothing checked
    assert links == ["in", "out"]
    time.sleep(0.35)
    assert not health() and health.last_failure == "IPv4 forwarding is off"
    assert links == ["in", "out", "in", "out"]


def test_interval_zero_checks_every_call(tmp_path: Path) -> None:
    forwarding = tmp_path / "ip_forward"
    forwarding.write_text("1\n")
    health = DataPathHealth(
        "in", "out", link_up=lambda _: True, table_loaded=lambda: True, forwarding=forwarding
    )
    assert health()
    forwarding.write_text("0\n")
    assert not health()
