"""Cross-AZ fallback on the VPC lab (``aws.cross_az_fallback`` enabled): AZ b's only
gateway dies, and within the lease, its skew margin and ``after_s`` (plus a few periods)
AZ a's leader points AZ b's private route table at itself, so AZ b's workload reaches the
internet through AZ a's Elastic IP; when b's gateway returns, it takes its routes back
and AZ a's leader reports the return."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from perf.lab.vpc.fleet import LAB_LEASE, Fleet, document
from tests.netns.vpcfleet import WORKLOAD, make_healthy, public_address, running_fleet

pytestmark = pytest.mark.timeout(300)

AFTER_S = 2.0


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    with running_fleet() as f:
        doc = document(f.lab.status())
        doc["aws"]["cross_az_fallback"] = {"enabled": True, "after_s": AFTER_S}
        f.publish(doc)
        f.wait_converged()
        yield f


def _fallback(fleet: Fleet, name: str) -> dict[str, Any]:
    status: dict[str, Any] = fleet.state(name)["aws"]["cross_az_fallback"]
    return status


def test_an_az_without_a_gateway_is_routed_by_the_other_az_and_taken_back(
    fleet: Fleet,
) -> None:
    healthy = make_healthy(fleet)
    status = healthy.lab.status()
    a_leader = healthy.leader("a")
    assert a_leader is not None and healthy.leader("b") == "b1"
    a_eni = status["instances"][a_leader]["enis"]["eth1"]["eni_id"]
    b_eni = status["instances"]["b1"]["enis"]["eth1"]["eni_id"]
    assert status["azs"]["b"]["private_default_route_eni"] == b_eni
    assert public_address(WORKLOAD["b"]) == status["azs"]["b"]["eip"]
    fb = _fallback(healthy, a_leader)
    assert fb["enabled"] and "$0.01/GB" in fb["warning"] and fb["adopted"] == {}

    killed = time.monotonic()
    healthy.lab.kill_instance("b1")

    def adopted() -> bool:
        return healthy.lab.status()["azs"]["b"]["private_default_route_eni"] == a_eni

    healthy.wait("AZ a's leader took AZ b's route", adopted, 30)
    took = time.monotonic() - killed
    # the lease, its margin and after_s, then a period, the claim, the route calls and
    # this loop's own reads of the VPC (a second each on a loaded 2-core machine)
    bound = LAB_LEASE["duration_s"] + LAB_LEASE["skew_margin_s"] + AFTER_S + 6.0
    assert took < bound, f"{took:.1f}s to adopt, expected under {bound:.1f}s"
    healthy.lab.sync()
    assert public_address(WORKLOAD["b"]) == status["azs"]["a"]["eip"]
    assert public_address(WORKLOAD["a"]) == status["azs"]["a"]["eip"]
    fb = _fallback(healthy, a_leader)
    zone_b = status["azs"]["b"]["zone"]
    assert zone_b in fb["adopted"] and fb["counters"]["adopted"] == 1, fb
    assert fb["events"][-1]["kind"] == "fallback_took", fb["events"]

    healthy.lab.revive_instance("b1")
    healthy.start(["b1"])

    def returned() -> bool:
        return healthy.lab.status()["azs"]["b"]["private_default_route_eni"] == b_eni

    healthy.wait("b1 took its AZ's route back", returned, 60)
    healthy.wait_converged()
    healthy.lab.sync()
    assert public_address(WORKLOAD["b"]) == status["azs"]["b"]["eip"]

    def reported() -> bool:
        events = _fallback(healthy, a_leader)["events"]
        return bool(events) and events[-1]["kind"] == "fallback_returned"

    healthy.wait("AZ a's leader reported the return", reported, 10)
    fb = _fallback(healthy, a_leader)
    assert fb["adopted"] == {} and fb["counters"]["returned"] == 1, fb
    assert healthy.leader("a") == a_leader  # AZ a never changed hands
